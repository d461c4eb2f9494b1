// Where the lab finds etcd and Envoy: a preferred place first (make deps's virtualenv, for Envoy
// where the system Python refuses installs), then PATH, then fallbacks; a clear error otherwise.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ENVOY_BIN_ENV, envoyExecutable } from '../../src/lab/envoy';
import { findExecutable } from '../../src/lab/processes';

describe('findExecutable', () => {
  let root: string;
  let savedPath: string | undefined;
  const tool = (dir: string) => {
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'mbtool');
    fs.writeFileSync(file, '#!/bin/sh\n', { mode: 0o755 });
    return file;
  };

  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-find-'));
    savedPath = process.env.PATH;
  });
  afterEach(() => {
    process.env.PATH = savedPath;
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('takes a preferred location over PATH, PATH over a fallback', () => {
    const preferred = tool(path.join(root, 'venv', 'bin'));
    const onPath = tool(path.join(root, 'path'));
    const fallback = tool(path.join(root, 'fallback'));
    process.env.PATH = path.dirname(onPath);
    assert.equal(findExecutable('mbtool', [fallback], [preferred]), preferred);
    assert.equal(findExecutable('mbtool', [fallback], [path.join(root, 'absent', 'mbtool')]), onPath);
    process.env.PATH = path.join(root, 'empty');
    assert.equal(findExecutable('mbtool', [fallback]), fallback);
  });

  it('skips a file that is not executable', () => {
    const onPath = tool(path.join(root, 'path'));
    const plain = path.join(root, 'plain', 'mbtool');
    fs.mkdirSync(path.dirname(plain));
    fs.writeFileSync(plain, '', { mode: 0o644 });
    process.env.PATH = path.dirname(onPath);
    assert.equal(findExecutable('mbtool', [], [plain]), onPath);
  });

  it('says to run make deps when there is none', () => {
    process.env.PATH = path.join(root, 'empty');
    assert.throws(() => findExecutable('mbtool', [], [path.join(root, 'venv', 'mbtool')]), /^Error: mbtool not found on PATH \(run `make deps`\)$/);
    assert.throws(() => findExecutable('mbtool', ['/nonexistent/mbtool']), /mbtool not found on PATH or in \/nonexistent\/mbtool \(run `make deps`\)/);
  });
});

describe('envoyExecutable', () => {
  let root: string;
  let saved: string | undefined;
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-envoy-bin-'));
    saved = process.env[ENVOY_BIN_ENV];
  });
  afterEach(() => {
    if (saved === undefined) delete process.env[ENVOY_BIN_ENV];
    else process.env[ENVOY_BIN_ENV] = saved;
    fs.rmSync(root, { recursive: true, force: true });
  });

  it(`runs the Envoy ${ENVOY_BIN_ENV} names, whatever PATH holds`, () => {
    const other = path.join(root, 'envoy-1.99');
    fs.writeFileSync(other, '#!/bin/sh\n', { mode: 0o755 });
    process.env[ENVOY_BIN_ENV] = other;
    assert.equal(envoyExecutable(), other);
  });

  it(`refuses a ${ENVOY_BIN_ENV} that is missing, a directory or not executable`, () => {
    const plain = path.join(root, 'plain');
    fs.writeFileSync(plain, '', { mode: 0o644 });
    for (const bad of [path.join(root, 'missing'), root, plain]) {
      process.env[ENVOY_BIN_ENV] = bad;
      assert.throws(() => envoyExecutable(), new RegExp(`^Error: ${ENVOY_BIN_ENV}=${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not an executable file$`));
    }
  });
});
