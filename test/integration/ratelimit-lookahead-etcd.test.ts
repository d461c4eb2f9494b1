// Leased blocks taken ahead for many buckets at once, in multi-key transactions on a real etcd,
// by two replicas' stores writing the same keys (the second replica's first batch loses to the first's).
import assert from 'node:assert/strict';
import type { Etcd3 } from 'etcd3';
import type { EtcdProcess } from '../../src/lab/etcd';
import { silentLogger } from '../../src/observability/logger';
import type { CompiledRateLimit } from '../../src/policy/types';
import { EtcdRateLimitStore } from '../../src/state/etcd/ratelimit';
import { etcdForSuite } from '../harness/etcd';

const PREFIX = '/lookahead-test';
const rule = {
  id: 'p/per-path',
  policy: 'p',
  name: 'per-path',
  limit: 1_000_000,
  perMs: 1000,
  algorithm: 'fixed-window',
  consistency: 'leased',
} as CompiledRateLimit;

describe('leased look-ahead for many buckets on a real etcd', function () {
  this.timeout(60_000);
  let etcd: EtcdProcess;
  let client: Etcd3;
  etcdForSuite((e, c) => {
    etcd = e;
    client = c;
  });

  const states = async () => {
    const all = await client.getAll().prefix(`${PREFIX}/ratelimit/`).strings();
    return Object.values(all).map((v) => JSON.parse(v) as { w: number; c: number; a?: number });
  };
  const until = async (what: string, ok: () => Promise<boolean>) => {
    for (let i = 0; i < 200; i++) {
      if (await ok()) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.fail(`timed out waiting until ${what}`);
  };

  it('two replicas take the next window\'s blocks for 70 buckets in two transactions each, none lost', async () => {
    const keys = Array.from({ length: 70 }, (_, i) => `/products/${i}`);
    const replicas = [1, 2].map(() => new EtcdRateLimitStore({ client, prefix: PREFIX, logger: silentLogger(), replicas: () => 2 }));
    // Window w0, in the near future: both replicas serve every bucket early in it.
    const t0 = Math.floor(Date.now() / 1000) * 1000 + 5000;
    for (const store of replicas) {
      for (const key of keys) {
        for (let i = 0; i < 20; i++) await store.consume({ rule, key, now: t0 });
        await store.consume({ rule, key, now: t0 + 100 });
      }
    }
    const counted = (await states()).map((s) => s.c);
    assert.equal(counted.length, 70);

    // Replica 1, then replica 2, sees a request in the window's last 100 ms.
    const rev0 = await etcd.revision();
    assert.ok(!(replicas[0]!.consume({ rule, key: keys[3]!, now: t0 + 950 }) instanceof Promise));
    await until('replica 1 took ahead for every bucket', async () => (await states()).every((s) => (s.a ?? 0) > 0));
    assert.equal((await etcd.revision()) - rev0, 2, 'two transactions: 64 buckets, then 6');
    const afterFirst = await states();

    const conflicts = replicas[1]!.stats.conflicts;
    assert.ok(!(replicas[1]!.consume({ rule, key: keys[40]!, now: t0 + 960 }) instanceof Promise));
    await until('replica 2 took ahead for every bucket', async () => (await states()).every((s, i) => s.a! > afterFirst[i]!.a!));
    assert.ok(replicas[1]!.stats.conflicts > conflicts, 'its first batch lost to replica 1\'s writes, and was taken again');
    const afterBoth = await states();
    afterBoth.forEach((s, i) => {
      assert.equal(s.c, counted[i], 'the current window\'s count is untouched');
      assert.equal(s.w, t0 / 1000);
    });

    // The next window: every bucket's first request on either replica is answered from its block,
    // with no etcd call.
    const rev1 = await etcd.revision();
    for (const store of replicas) {
      for (const key of keys) {
        const g = store.consume({ rule, key, now: t0 + 1000 });
        assert.ok(!(g instanceof Promise) && g.allowed, `${key}: answered at once`);
      }
    }
    assert.equal(await etcd.revision(), rev1);
    // What each replica holds for it is what etcd counted ahead for it, all of it.
    const held = replicas.reduce((n, s) => n + s.heldTokens(t0 + 1000), 0);
    assert.equal(held + 2 * keys.length, afterBoth.reduce((n, s) => n + s.a!, 0));
  });
});
