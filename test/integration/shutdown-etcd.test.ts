// SIGTERM while etcd is frozen: the replica drains and exits on time instead of waiting for etcd to
// take it out of membership (its membership lease expires by itself).
import assert from 'node:assert/strict';
import { EtcdProcess } from '../../src/lab/etcd';
import { MiddleboxProcess } from '../../src/lab/middlebox';

describe('shutdown with etcd frozen', function () {
  this.timeout(60_000);
  let etcd: EtcdProcess | undefined;
  let replica: MiddleboxProcess | undefined;

  after(async () => {
    etcd?.thaw();
    await replica?.stop();
    await etcd?.stop();
  });

  it('exits 0 within its drain plus a bounded wait for etcd', async () => {
    etcd = await EtcdProcess.start();
    replica = await MiddleboxProcess.start({ etcd: etcd.endpoint, drainMs: 1000, memberTtlS: 5 });
    await etcd.freeze();
    const started = Date.now();
    replica.signal('SIGTERM');
    const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 15_000).unref());
    const result = await Promise.race([replica.exitStatus(), timeout]);
    const tookMs = Date.now() - started;
    assert.notEqual(result, 'timeout', 'still running 15 s after SIGTERM with etcd frozen');
    assert.equal((result as { code: number | null }).code, 0);
    // drain (at most 1 s) + the wait for etcd (2 s) + slack for a loaded machine
    assert.ok(tookMs < 6000, `exited ${tookMs} ms after SIGTERM`);
    assert.match(replica.output(), /etcd did not answer while leaving/);
  });
});
