// Golden files: the rendered text must equal the reviewed file under test/golden/; with
// UPDATE_GOLDEN=1 the file is rewritten instead, so every change shows up as a diff to review.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

/** The repository root (the test runs from dist/test/...). */
export function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

export function assertGolden(relative: string, rendered: string): void {
  const golden = path.join(repoRoot(), 'test', 'golden', relative);
  if (process.env.UPDATE_GOLDEN === '1') {
    fs.mkdirSync(path.dirname(golden), { recursive: true });
    fs.writeFileSync(golden, rendered);
    return;
  }
  assert.ok(fs.existsSync(golden), `${golden} is missing; run with UPDATE_GOLDEN=1 to create it`);
  assert.equal(rendered, fs.readFileSync(golden, 'utf8'), `${relative} differs; UPDATE_GOLDEN=1 if intended`);
}
