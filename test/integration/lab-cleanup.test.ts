// The lab's children (etcd, Envoy, replicas) and temp dirs do not outlive the Node process that
// started them when it is stopped by a signal: `kill -INT` or `kill -TERM` of the demo or a bench
// alone, which does not reach the children as Ctrl-C in a terminal would; and the children not even
// when it is killed outright (SIGKILL, the OOM killer, a CI time limit), where no exit hook runs.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from '../../src/lab/ports';
import { childrenDieWithParent } from '../../src/lab/processes';
import { alive } from '../harness/process';

const PROCESSES = path.join(__dirname, '..', '..', 'src', 'lab', 'processes.js');

/** A Node process that made a lab temp dir and started a child, as the demo does; what it made. */
function startOwner(): Promise<{ owner: ReturnType<typeof spawn>; dir: string; pid: number }> {
  const script = `
    const { makeTempDir, LabChild, findExecutable } = require(${JSON.stringify(PROCESSES)});
    const dir = makeTempDir('middlebox-cleanup-test-');
    const child = LabChild.spawn({ name: 'sleep', command: findExecutable('sleep'), args: ['60'] });
    process.stdout.write(JSON.stringify({ dir, pid: child.pid }) + '\\n');
    setInterval(() => {}, 1000);`;
  const owner = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the owner process did not report within 10 s')), 10_000);
    owner.stdout!.once('data', (b: Buffer) => {
      clearTimeout(timer);
      const { dir, pid } = JSON.parse(b.toString()) as { dir: string; pid: number };
      resolve({ owner, dir, pid });
    });
    owner.once('exit', (code) => reject(new Error(`the owner process exited (${code}) before reporting`)));
  });
}

describe('lab cleanup on signals', function () {
  this.timeout(30_000);
  const owners: Array<ReturnType<typeof spawn>> = [];
  const pids: number[] = [];

  after(() => {
    for (const o of owners) o.kill('SIGKILL');
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  });

  it('SIGKILL of the owner: the kernel kills its children (parent-death signal)', async function () {
    if (!childrenDieWithParent()) this.skip(); // no setpriv with --pdeathsig here
    const { owner, dir, pid } = await startOwner();
    owners.push(owner);
    pids.push(pid);
    try {
      owner.kill('SIGKILL');
      await waitFor(async () => !alive(pid), { timeoutMs: 5000, what: `the owner's child (pid ${pid}) to be gone` });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`${signal} to the owner alone kills its children and removes its temp dirs, and the owner still dies of ${signal}`, async () => {
      const { owner, dir, pid } = await startOwner();
      owners.push(owner);
      pids.push(pid);
      assert.ok(fs.existsSync(dir), 'the temp dir exists while the owner runs');
      assert.ok(alive(pid), 'the child runs while the owner runs');
      const exited = new Promise<NodeJS.Signals | null>((resolve) => owner.once('exit', (_code, sig) => resolve(sig)));
      owner.kill(signal);
      const sig = await Promise.race([exited, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`the owner did not exit within 10 s of ${signal}`)), 10_000))]);
      assert.equal(sig, signal);
      assert.equal(fs.existsSync(dir), false, `${dir} is left behind`);
      // The child is SIGKILLed, then reaped by init once its parent has gone. (The parent-death
      // signal would kill it too; the temp dir above is what only the signal handler does.)
      await waitFor(async () => !alive(pid), { timeoutMs: 5000, what: `the owner's child (pid ${pid}) to be gone` });
    });
  }
});
