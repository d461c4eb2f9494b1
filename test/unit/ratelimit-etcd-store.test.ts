// EtcdRateLimitStore against a fake etcd client whose transactions the test releases one by one, to
// pin down orderings that real traffic produces only now and then.
import assert from 'node:assert/strict';
import type { Etcd3 } from 'etcd3';
import { silentLogger } from '../../src/observability/logger';
import type { CompiledRateLimit } from '../../src/policy/types';
import { EtcdRateLimitStore } from '../../src/state/etcd/ratelimit';
import type { RateLimitGrant, RateLimitRequest } from '../../src/state/port';
import { deferred, type Deferred } from '../harness/breaker';

/** One key's worth of etcd: compare-and-swap on the mod revision; commits wait for the test. */
class FakeEtcd {
  value: string | undefined;
  mod = 0;
  revision = 1;
  commits = 0;
  /** While set, each commit waits for the next gate the test opens. */
  held: Array<Deferred<void>> | undefined;

  readonly client = {
    if: (_key: string, _field: string, _op: string, mod: string) => {
      let write: string | undefined;
      const txn = {
        then: (op: { value?: string }) => {
          write = op.value;
          return txn;
        },
        else: () => txn,
        commit: async () => {
          if (this.held) {
            const gate = deferred<void>();
            this.held.push(gate);
            await gate.promise;
          }
          this.commits += 1;
          if (String(this.mod) === mod) {
            this.value = write;
            this.revision += 1;
            this.mod = this.revision;
            return { succeeded: true, header: { revision: String(this.revision) }, responses: [] };
          }
          const kvs = this.value === undefined ? [] : [{ value: Buffer.from(this.value), mod_revision: String(this.mod) }];
          return { succeeded: false, header: { revision: String(this.revision) }, responses: [{ response_range: { kvs } }] };
        },
      };
      return txn;
    },
    put: () => {
      const op: { value?: string } = {};
      return { value: (v: string) => ({ lease: () => Object.assign(op, { value: v }) }) };
    },
    get: () => ({}),
    lease: () => ({ grant: async () => 'lease-1' }),
  };

  /** Lets every commit through, those waiting included. */
  openAll(): void {
    const waiting = this.held ?? [];
    this.held = undefined;
    for (const gate of waiting) gate.resolve();
  }

  /** Opens the oldest waiting commit, once one is waiting. */
  async release(): Promise<void> {
    for (let i = 0; i < 200 && !this.held?.length; i++) await new Promise((r) => setImmediate(r));
    const gate = this.held?.shift();
    assert.ok(gate, 'a commit is waiting');
    gate.resolve();
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  }
}

const LEASED: CompiledRateLimit = {
  id: 'p/leased',
  policy: 'p',
  name: 'leased',
  limit: 1_000_000,
  perMs: 3_600_000,
  algorithm: 'fixed-window',
  consistency: 'leased',
} as CompiledRateLimit;

describe('EtcdRateLimitStore (leased) with a fake etcd', () => {
  // Regression: requests served from the pool while a block was being taken used tokens the
  // waiting batch had counted on, and the batch's last requests were denied far below the limit.
  it('never denies below the limit when requests take pool tokens while a block is being taken', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const now = Date.now();
    const req: RateLimitRequest = { rule: LEASED, key: 'k', now };
    const grants: Array<Promise<RateLimitGrant>> = [];
    const consume = () => grants.push(Promise.resolve(store.consume({ ...req })));

    etcd.held = [];
    consume(); // w1: takes a block of 1 (no rate known yet)
    consume(); // w2 and w3 wait behind it
    consume();
    store.refund({ ...req }); // a token comes back while they wait: the pool holds 1
    await etcd.release(); // w1 served; the pool keeps 1; w2 and w3 ask for one more token
    consume(); // w4 arrives while that block is being taken, and is served from the pool
    await etcd.release();
    etcd.openAll(); // any further block goes through
    const answers = await Promise.all(grants);
    assert.deepEqual(
      answers.map((g) => g.allowed),
      [true, true, true, true],
    );
  });

  it('denies once the shared bucket is really exhausted; a refusal from the state last seen is not a wait', async () => {
    const etcd = new FakeEtcd();
    const small = { ...LEASED, limit: 3 } as CompiledRateLimit;
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const now = Date.now();
    const answers = await Promise.all(Array.from({ length: 6 }, () => Promise.resolve(store.consume({ rule: small, key: 'k', now }))));
    assert.equal(answers.filter((g) => g.allowed).length, 3);
    assert.ok(etcd.commits <= 6, `${etcd.commits} commits`);
    assert.equal(store.stats.leasedWaits, 6, 'all six waited for the takes that found the limit');
    // The next request is refused from the state last seen, with no etcd call: not counted as waiting.
    const commits = etcd.commits;
    const refused = await store.consume({ rule: small, key: 'k', now });
    assert.equal(refused.allowed, false);
    assert.equal(etcd.commits, commits);
    assert.equal(store.stats.leasedWaits, 6);
  });

  it('leave(): gives the unspent pool back to etcd, then takes only what each request needs', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const rule = { ...LEASED, limit: 10_000, perMs: 3_600_000 } as CompiledRateLimit;
    // Windows of an hour: the test's requests all fall in the window of t0 (it starts at its beginning).
    const t0 = Math.floor(Date.now() / rule.perMs) * rule.perMs;
    const counted = () => (JSON.parse(etcd.value!) as { c: number }).c;
    // 20 requests in a burst, then one 100 ms later: the observed rate makes the next block large.
    for (let i = 0; i < 20; i++) assert.equal((await store.consume({ rule, key: 'k', now: t0 })).allowed, true);
    assert.equal((await store.consume({ rule, key: 'k', now: t0 + 100 })).allowed, true);
    const held = store.heldTokens(t0 + 100);
    assert.ok(held >= 50, `a block in the pool (${held} tokens held)`);
    assert.equal(counted(), 21 + held, 'etcd counts the admitted requests and the pool');

    assert.equal(await store.leave(() => t0 + 150), held);
    assert.equal(store.heldTokens(t0 + 150), 0);
    assert.equal(counted(), 21, 'etcd counts only what was admitted');

    const commits = etcd.commits;
    for (let i = 0; i < 5; i++) assert.equal((await store.consume({ rule, key: 'k', now: t0 + 200 + i * 100 })).allowed, true);
    assert.equal(etcd.commits - commits, 5, 'one token per request, no block');
    assert.equal(counted(), 26);
    assert.equal(store.heldTokens(t0 + 700), 0);
  });

  it('takes the next block in the background before the pool runs dry, where traffic stays far below the limit', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const rule = { ...LEASED, limit: 1_000_000_000 } as CompiledRateLimit;
    const t0 = Math.floor(Date.now() / rule.perMs) * rule.perMs;
    // 20 requests, then one 100 ms later: a rate of 0.21 per ms, a block of about 210 tokens.
    for (let i = 0; i < 20; i++) await store.consume({ rule, key: 'k', now: t0 });
    await store.consume({ rule, key: 'k', now: t0 + 100 });
    const block = store.heldTokens(t0 + 100);
    assert.ok(block > 100, `a block in the pool (${block})`);
    await new Promise((r) => setImmediate(r)); // the take that served them has finished

    etcd.held = [];
    const commits = etcd.commits;
    // Spend the pool; every answer comes at once, from the pool, with no etcd call waited for.
    for (let i = 0; i < block; i++) {
      const g = store.consume({ rule, key: 'k', now: t0 + 200 });
      assert.ok(!(g instanceof Promise), `request ${i} answered from the pool`);
      assert.equal(g.allowed, true);
    }
    // The next block was asked for once the pool fell below 50 ms of traffic (about 10 tokens).
    for (let i = 0; i < 20 && etcd.held.length === 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(etcd.held.length, 1, 'one block take in flight');
    assert.equal(store.heldTokens(t0 + 200), 0);
    // A request that finds the pool empty waits for that same take, not another one.
    const waiting = store.consume({ rule, key: 'k', now: t0 + 200 });
    assert.ok(waiting instanceof Promise);
    await etcd.release();
    assert.equal((await waiting).allowed, true);
    assert.equal(etcd.commits - commits, 1, 'one transaction for the next block');
    assert.ok(store.heldTokens(t0 + 200) > 100, 'the pool refilled');
    etcd.openAll();
  });

  it('when the background take fails, requests that ran out meanwhile fail with it at once (their fallback answers)', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const rule = { ...LEASED, limit: 1_000_000_000 } as CompiledRateLimit;
    const t0 = Math.floor(Date.now() / rule.perMs) * rule.perMs;
    for (let i = 0; i < 20; i++) await store.consume({ rule, key: 'k', now: t0 });
    await store.consume({ rule, key: 'k', now: t0 + 100 });
    await new Promise((r) => setImmediate(r));
    const block = store.heldTokens(t0 + 100);
    etcd.held = [];
    for (let i = 0; i < block; i++) assert.ok(!(store.consume({ rule, key: 'k', now: t0 + 200 }) instanceof Promise));
    // The held commit is the background take, started before any request ran out.
    for (let i = 0; i < 20 && etcd.held.length === 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(etcd.held.length, 1, 'the background take is in flight');
    const waiting = store.consume({ rule, key: 'k', now: t0 + 200 });
    assert.ok(waiting instanceof Promise);
    const commits = etcd.commits;
    etcd.held.shift()!.reject(new Error('etcd timed out'));
    await assert.rejects(waiting, /etcd timed out/);
    assert.equal(etcd.commits, commits, 'no second transaction for the waiting request');
  });

  it('a background take that completes after leave() began gives its block back too', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const rule = { ...LEASED, limit: 1_000_000_000 } as CompiledRateLimit;
    const t0 = Math.floor(Date.now() / rule.perMs) * rule.perMs;
    let admitted = 0;
    for (let i = 0; i < 20; i++) admitted += Number((await store.consume({ rule, key: 'k', now: t0 })).allowed);
    admitted += Number((await store.consume({ rule, key: 'k', now: t0 + 100 })).allowed);
    await new Promise((r) => setImmediate(r));
    const block = store.heldTokens(t0 + 100);
    etcd.held = [];
    // Spend all but a few tokens: the background take starts and is held.
    for (let i = 0; i < block - 3; i++) admitted += Number((store.consume({ rule, key: 'k', now: t0 + 200 }) as RateLimitGrant).allowed);
    for (let i = 0; i < 20 && etcd.held.length === 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(etcd.held.length, 1, 'the background take is in flight');
    const leaving = store.leave(() => t0 + 250);
    etcd.openAll();
    await leaving;
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    assert.equal(store.heldTokens(t0 + 250), 0, 'nothing left in the pool');
    assert.equal((JSON.parse(etcd.value!) as { c: number }).c, admitted, 'etcd counts only what was admitted');
  });

  it('the pool never goes back to an earlier window: a late refund does not empty the current pool', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const rule = { ...LEASED, limit: 1_000_000_000, perMs: 1000 } as CompiledRateLimit;
    const w0 = Math.floor(Date.now() / 1000) * 1000 + 10_000;
    // Another replica has already moved the key to the next window.
    etcd.value = JSON.stringify({ w: w0 / 1000 + 1, c: 5 });
    etcd.mod = 7;
    const g = await store.consume({ rule, key: 'k', now: w0 + 900 });
    assert.equal(g.allowed, true);
    // Its token was counted in the next window: a request of that window finds the pool current.
    assert.equal((JSON.parse(etcd.value) as { w: number }).w, w0 / 1000 + 1);
    store.refund({ rule, key: 'k', now: w0 + 1000 }); // a refund in the new window: one token in its pool
    assert.equal(store.heldTokens(w0 + 1000), 1);
    store.refund({ rule, key: 'k', now: w0 + 900 }); // a late refund, of the window before
    assert.equal(store.heldTokens(w0 + 1000), 1, 'the refund of an earlier window neither empties nor adds to the pool');
  });

  it('a limit that the traffic can reach takes a block only when a request needs it (no tokens stranded early)', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    // 0.21 requests per ms would use 12,600 of a minute's 10,000: reachable, though far from spent
    // yet (the budget left could give two blocks), so only the rate keeps the take from the background.
    const rule = { ...LEASED, limit: 10_000, perMs: 60_000 } as CompiledRateLimit;
    const t0 = Math.floor(Date.now() / rule.perMs) * rule.perMs;
    for (let i = 0; i < 20; i++) await store.consume({ rule, key: 'k', now: t0 });
    await store.consume({ rule, key: 'k', now: t0 + 100 });
    const block = store.heldTokens(t0 + 100);
    await new Promise((r) => setImmediate(r));
    const commits = etcd.commits;
    for (let i = 0; i < block; i++) assert.ok(!(store.consume({ rule, key: 'k', now: t0 + 200 }) instanceof Promise));
    await new Promise((r) => setImmediate(r));
    assert.equal(etcd.commits, commits, 'no background take: at this rate the window could use the whole limit');
    const next = store.consume({ rule, key: 'k', now: t0 + 200 });
    assert.ok(next instanceof Promise, 'the next request waits for its block');
    assert.equal((await next).allowed, true);
  });

  /** A store that has seen 0.21 requests per ms early in window w0 (of 1 s) and holds a block for it. */
  async function warmedUp(limit: number) {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const rule = { ...LEASED, limit, perMs: 1000 } as CompiledRateLimit;
    const t0 = Math.floor(Date.now() / 1000) * 1000 + 10_000;
    for (let i = 0; i < 20; i++) await store.consume({ rule, key: 'k', now: t0 });
    await store.consume({ rule, key: 'k', now: t0 + 100 });
    await new Promise((r) => setImmediate(r));
    const state = () => JSON.parse(etcd.value!) as { w: number; c: number; a?: number };
    return { etcd, store, rule, t0, w0: t0 / 1000, state };
  }

  it('counts the leased requests that wait for an etcd take, once each, and only those', async () => {
    const { store, rule, t0 } = await warmedUp(1_000_000_000);
    // warmedUp's 21 requests, one at a time, each found the pool empty (no rate known yet, every
    // block was one token) and waited for a take of its own.
    assert.equal(store.stats.leasedWaits, 21);
    for (let i = 0; i < 10; i++) assert.ok(!(store.consume({ rule, key: 'k', now: t0 + 200 + i }) instanceof Promise));
    assert.equal(store.stats.leasedWaits, 21, 'requests answered from the pool are not counted');
    // A window long after: nothing taken for it, so its first request waits.
    const later = store.consume({ rule, key: 'k', now: t0 + 5000 });
    assert.ok(later instanceof Promise);
    assert.equal((await later).allowed, true);
    assert.equal(store.stats.leasedWaits, 22);
  });

  it('takes the next window\'s first block before the window begins: its first requests wait for no etcd call', async () => {
    const { etcd, store, rule, t0, w0, state } = await warmedUp(1_000_000_000);
    const inPool = store.heldTokens(t0 + 100);
    assert.ok(inPool > 100, `a block in the pool (${inPool})`);
    etcd.held = [];
    // 50 ms before the window ends, a request served from the pool starts the look-ahead take.
    const g = store.consume({ rule, key: 'k', now: t0 + 950 });
    assert.ok(!(g instanceof Promise) && g.allowed);
    await etcd.release();
    assert.equal(state().w, w0, 'the key stays in this window...');
    const ahead = state().a!;
    assert.equal(state().c, 21 + inPool, '...whose count is unchanged: what was admitted and the pool');
    assert.ok(ahead > 50, `a block of the next window's traffic, counted apart (${ahead})`);
    assert.equal(store.heldTokens(t0 + 950), inPool - 1 + ahead);
    // The next window opens: its requests are answered from that block at once, with etcd held.
    etcd.held = [];
    const commits = etcd.commits;
    const waits = store.stats.leasedWaits;
    for (let i = 0; i < 5; i++) {
      const next = store.consume({ rule, key: 'k', now: t0 + 1000 + i });
      assert.ok(!(next instanceof Promise), `request ${i} of the new window answered from the block taken ahead`);
      assert.equal(next.allowed, true);
    }
    assert.equal(store.heldTokens(t0 + 1004), ahead - 5, 'the old window\'s pool lapsed; the block taken ahead is the pool');
    assert.equal(etcd.commits, commits);
    assert.equal(store.stats.leasedWaits, waits, 'none of them counted as waiting');
    etcd.openAll();
  });

  it('no look-ahead where traffic can reach the limit; leave() gives a block taken ahead back', async () => {
    // 0.21 per ms is 210 a second: a limit of 400 could be reached by it, 100,000 not.
    const reachable = await warmedUp(400);
    assert.ok(!(reachable.store.consume({ rule: reachable.rule, key: 'k', now: reachable.t0 + 950 }) instanceof Promise));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(reachable.state().a, undefined, 'nothing taken for the next window');

    const { store, rule, t0, w0, state } = await warmedUp(100_000);
    store.consume({ rule, key: 'k', now: t0 + 950 });
    for (let i = 0; i < 20 && state().a === undefined; i++) await new Promise((r) => setImmediate(r));
    const ahead = state().a!;
    assert.ok(ahead > 0);
    const held = store.heldTokens(t0 + 960);
    assert.equal(await store.leave(() => t0 + 960), held, 'the pool and the block of the next window go back');
    assert.deepEqual(state(), { w: w0, c: 22, a: 0 }, 'etcd counts what was admitted, nothing ahead');
    assert.equal(store.heldTokens(t0 + 960), 0);
  });

  it('a look-ahead that finds the key already in the next window (lost compare-and-swap) takes in it', async () => {
    const { etcd, store, rule, t0, w0, state } = await warmedUp(1_000_000_000);
    etcd.held = [];
    store.consume({ rule, key: 'k', now: t0 + 950 });
    for (let i = 0; i < 20 && etcd.held.length === 0; i++) await new Promise((r) => setImmediate(r));
    // Meanwhile another replica, its clock past the boundary, writes the next window.
    etcd.value = JSON.stringify({ w: w0 + 1, c: 5 });
    etcd.revision += 1;
    etcd.mod = etcd.revision;
    await etcd.release(); // the look-ahead's compare-and-swap loses
    await etcd.release(); // its retry
    const taken = state().c - 5;
    assert.deepEqual(state(), { w: w0 + 1, c: 5 + taken }, 'counted in the next window, not ahead of the one after');
    assert.ok(taken > 0);
    const next = store.consume({ rule, key: 'k', now: t0 + 1000 });
    assert.ok(!(next instanceof Promise) && next.allowed, 'the next window opens on that block');
    assert.equal(store.heldTokens(t0 + 1000), taken - 1);
    etcd.openAll();
  });

  it('leave() gives the block taken ahead back even when the next window begins while it gives the pool back', async () => {
    const { store, rule, t0, w0, state } = await warmedUp(1_000_000_000);
    store.consume({ rule, key: 'k', now: t0 + 950 });
    for (let i = 0; i < 20 && state().a === undefined; i++) await new Promise((r) => setImmediate(r));
    const held = store.heldTokens(t0 + 960);
    let calls = 0;
    const clock = () => (calls++ === 0 ? t0 + 960 : t0 + 1000);
    assert.equal(await store.leave(clock), held, 'the pool and the block ahead both go back');
    assert.deepEqual(state(), { w: w0, c: 22, a: 0 });
    assert.equal(store.heldTokens(t0 + 1000), 0);
  });

  it('after a look-ahead, a burst at the end of the window still gets no more than its limit', async () => {
    const { store, rule, t0, w0, state } = await warmedUp(500);
    assert.ok(!(store.consume({ rule, key: 'k', now: t0 + 950 }) instanceof Promise));
    for (let i = 0; i < 20 && state().a === undefined; i++) await new Promise((r) => setImmediate(r));
    const ahead = state().a!;
    assert.ok(ahead > 0, 'a block was taken ahead');
    const burst = await Promise.all(Array.from({ length: 1000 }, () => Promise.resolve(store.consume({ rule, key: 'k', now: t0 + 960 }))));
    const admitted = 22 + burst.filter((g) => g.allowed).length;
    assert.equal(admitted, 500, 'the window admits its limit, not the next window\'s block too');
    assert.deepEqual(state(), { w: w0, c: 500, a: ahead });
    const next = store.consume({ rule, key: 'k', now: t0 + 1000 });
    assert.ok(!(next instanceof Promise) && next.allowed, 'the next window opens on the block taken ahead');
  });

  it('a look-ahead that lands after the window began becomes its pool: no second take', async () => {
    const { etcd, store, rule, t0, state } = await warmedUp(1_000_000_000);
    etcd.held = [];
    store.consume({ rule, key: 'k', now: t0 + 950 });
    for (let i = 0; i < 20 && etcd.held.length === 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(etcd.held.length, 1, 'the look-ahead take is in flight');
    const commits = etcd.commits;
    const first = store.consume({ rule, key: 'k', now: t0 + 1000 });
    assert.ok(first instanceof Promise, 'the new window has no pool yet: the request waits for the take');
    await etcd.release();
    assert.equal((await first).allowed, true);
    assert.equal(etcd.commits - commits, 1, 'served from the look-ahead block, no other transaction');
    assert.equal(store.heldTokens(t0 + 1000), state().a! - 1);
    etcd.openAll();
  });

  it('assumes, for a fallback, that each other replica holds a block as large as its own', async () => {
    const etcd = new FakeEtcd();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 3 });
    const rule = { ...LEASED, limit: 300, perMs: 3_600_000 } as CompiledRateLimit;
    const now = Date.now();
    for (let i = 0; i < 10; i++) assert.equal((await store.consume({ rule, key: 'k', now })).allowed, true);
    // It has seen 10 counted (its own blocks) and took 10: two others are assumed to hold 10 each.
    assert.equal(store.sharedUsed({ rule, key: 'k', now }), 30);
    // (The fake holds one key: a strict bucket gets a store of its own.)
    const strictStore = new EtcdRateLimitStore({ client: new FakeEtcd().client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 3 });
    const strict = { ...rule, id: 'p/strict', name: 'strict', consistency: 'strict' } as CompiledRateLimit;
    for (let i = 0; i < 10; i++) await strictStore.consume({ rule: strict, key: 'k', now });
    assert.equal(strictStore.sharedUsed({ rule: strict, key: 'k', now }), 10, 'strict: exactly what it saw');
    assert.equal(store.sharedUsed({ rule, key: 'unseen', now }), undefined);
  });
});

/** Many keys' worth of etcd: transactions over several keys, each compare on its mod revision. */
class FakeEtcdKeys {
  readonly kv = new Map<string, { value: string; mod: number }>();
  revision = 1;
  /** Keys written by each committed or failed transaction, in order. */
  readonly txns: Array<{ keys: string[]; succeeded: boolean }> = [];
  /** While set, each commit waits for the test to open its gate (in order). */
  held: Array<Deferred<void>> | undefined;

  readonly client = {
    if: (key: string, _field: string, _op: string, mod: string) => {
      const compares: Array<[string, string]> = [[key, mod]];
      let puts: Array<{ key: string; value?: string }> = [];
      let gets: Array<{ key: string }> = [];
      const txn = {
        and: (k: string, _f: string, _o: string, m: string) => {
          compares.push([k, m]);
          return txn;
        },
        then: (...ops: Array<{ key: string; value?: string }>) => {
          puts = ops;
          return txn;
        },
        else: (...ops: Array<{ key: string }>) => {
          gets = ops;
          return txn;
        },
        commit: async () => {
          await new Promise((r) => setImmediate(r));
          if (this.held) {
            const gate = deferred<void>();
            this.held.push(gate);
            await gate.promise;
          }
          assert.equal(new Set(compares.map(([k]) => k)).size, compares.length, 'etcd refuses a key twice in one transaction');
          const succeeded = compares.every(([k, m]) => String(this.kv.get(k)?.mod ?? 0) === m);
          this.txns.push({ keys: puts.map((p) => p.key), succeeded });
          if (succeeded) {
            this.revision += 1;
            for (const p of puts) this.kv.set(p.key, { value: p.value!, mod: this.revision });
            return { succeeded: true, header: { revision: String(this.revision) }, responses: [] };
          }
          const responses = gets.map((g) => {
            const e = this.kv.get(g.key);
            return { response_range: { kvs: e ? [{ value: Buffer.from(e.value), mod_revision: String(e.mod) }] : [] } };
          });
          return { succeeded: false, header: { revision: String(this.revision) }, responses };
        },
      };
      return txn;
    },
    put: (key: string) => {
      const op: { key: string; value?: string } = { key };
      return { value: (v: string) => ({ lease: () => Object.assign(op, { value: v }) }) };
    },
    get: (key: string) => ({ key }),
    lease: () => ({ grant: async () => 'lease-1' }),
  };

  /** Another replica writes `key`: the state it leaves, at a new revision. */
  write(key: string, state: object): void {
    this.revision += 1;
    this.kv.set(key, { value: JSON.stringify(state), mod: this.revision });
  }

  state(key: string): { w: number; c: number; a?: number } | undefined {
    const e = this.kv.get(key);
    return e && (JSON.parse(e.value) as { w: number; c: number; a?: number });
  }
}

describe('EtcdRateLimitStore (leased): blocks taken ahead for many buckets', () => {
  const rule = { ...LEASED, limit: 1_000_000_000, perMs: 1000 } as CompiledRateLimit;
  const settle = async () => {
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
  };

  /** `keys` buckets, each with 21 requests early in window w0 (as warmedUp above), on one fake etcd. */
  async function manyWarmedUp(keys: string[]) {
    const etcd = new FakeEtcdKeys();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const t0 = Math.floor(Date.now() / 1000) * 1000 + 10_000;
    for (const key of keys) {
      for (let i = 0; i < 20; i++) await store.consume({ rule, key, now: t0 });
      await store.consume({ rule, key, now: t0 + 100 });
    }
    await settle();
    const etcdKey = (key: string) => [...etcd.kv.keys()][keys.indexOf(key)]!;
    return { etcd, store, t0, w0: t0 / 1000, etcdKey };
  }

  /** A request in the window's last 100 ms starts the look-ahead; etcd holds its one transaction (both buckets). */
  async function lookaheadHeld(etcd: FakeEtcdKeys, store: EtcdRateLimitStore, t0: number): Promise<Array<Deferred<void>>> {
    const held: Array<Deferred<void>> = [];
    etcd.held = held;
    store.consume({ rule, key: 'a', now: t0 + 950 });
    for (let i = 0; i < 50 && held.length === 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(held.length, 1, 'one transaction for both buckets, held');
    return held;
  }

  it('one request in the window\'s last 100 ms takes ahead for every bucket with traffic in it, 64 keys to a transaction', async () => {
    const keys = Array.from({ length: 70 }, (_, i) => `k${i}`);
    const { etcd, store, t0, w0, etcdKey } = await manyWarmedUp(keys);
    const before = etcd.txns.length;
    assert.ok(!(store.consume({ rule, key: 'k5', now: t0 + 950 }) instanceof Promise));
    await settle();
    const txns = etcd.txns.slice(before);
    assert.deepEqual(
      txns.map((t) => [t.keys.length, t.succeeded]),
      [
        [64, true],
        [6, true],
      ],
      'two transactions for 70 buckets',
    );
    for (const key of keys) {
      const s = etcd.state(etcdKey(key))!;
      assert.equal(s.w, w0, `${key} stays in this window`);
      assert.ok((s.a ?? 0) > 0, `${key} has a block counted ahead for the next window`);
    }
    // Later requests in the same last 100 ms take nothing more: every bucket holds its block.
    const txnsBefore = etcd.txns.length;
    for (const key of ['k6', 'k69', 'k5']) store.consume({ rule, key, now: t0 + 960 });
    await settle();
    assert.equal(etcd.txns.length, txnsBefore);
    // The next window: the first request of every bucket is answered at once, with no transaction.
    for (const key of keys) {
      const g = store.consume({ rule, key, now: t0 + 1000 });
      assert.ok(!(g instanceof Promise) && g.allowed, `${key}'s first request of the next window waits for nothing`);
    }
    assert.equal(etcd.txns.length, txnsBefore);
  });

  it('a batch that lands after the window began is its pool; a request that came first waits for it, then is served', async () => {
    const { etcd, store, t0, w0, etcdKey } = await manyWarmedUp(['a', 'b']);
    const held = await lookaheadHeld(etcd, store, t0);
    // The next window begins before etcd answers: b's first request has no pool and waits.
    const first = store.consume({ rule, key: 'b', now: t0 + 1000 });
    assert.ok(first instanceof Promise, 'it waits for the batch under way');
    const txns = etcd.txns.length;
    held.shift()!.resolve();
    etcd.held = undefined;
    assert.equal((await first).allowed, true);
    await settle();
    assert.equal(etcd.txns.length, txns + 1, 'served from the block the batch took, no transaction of its own');
    const ahead = etcd.state(etcdKey('b'))!;
    assert.equal(ahead.w, w0);
    assert.equal(store.heldTokens(t0 + 1000), (etcd.state(etcdKey('a'))!.a ?? 0) + ahead.a! - 1, 'both blocks are the new window\'s pools');
  });

  it('a block taken ahead has room for more requests than the last windows had: none waits on etcd', async () => {
    const etcd = new FakeEtcdKeys();
    const store = new EtcdRateLimitStore({ client: etcd.client as never as Etcd3, prefix: '/t', logger: silentLogger(), replicas: () => 1 });
    const t0 = Math.floor(Date.now() / 1000) * 1000 + 10_000;
    // Ten requests a window, 95 ms apart, for five windows: the last one takes the next one's block.
    for (let i = 0; i < 50; i++) {
      await store.consume({ rule, key: 'k', now: t0 + i * 100 + 5 });
      await settle();
    }
    const txns = etcd.txns.length;
    // The next window brings fourteen, in its first 800 ms: 40 % more than the ten the block was sized by.
    const waited = Array.from({ length: 14 }, (_, i) => store.consume({ rule, key: 'k', now: t0 + 5000 + i * 60 })).filter((g) => g instanceof Promise);
    assert.equal(waited.length, 0, 'no request of the window waited for a block');
    await settle();
    assert.equal(etcd.txns.length, txns, 'no transaction in the window');
  });

  it('leave() waits for a batch under way and gives its blocks back: nothing lapses with a replica that stops', async () => {
    const { etcd, store, t0, w0, etcdKey } = await manyWarmedUp(['a', 'b']);
    const held = await lookaheadHeld(etcd, store, t0);
    const pooled = store.heldTokens(t0 + 955);
    let done = false;
    const leaving = store.leave(() => t0 + 955).then((n) => {
      done = true;
      return n;
    });
    // leave() hands the pools back (each its own transaction, let through here), then waits for
    // the batch, which is still held.
    const batch = held.shift()!;
    for (let round = 0; round < 20; round++) {
      await settle();
      for (const gate of held.splice(0)) gate.resolve();
    }
    assert.equal(done, false, 'leave() has not resolved while the batch is under way');
    etcd.held = undefined;
    batch.resolve();
    const returned = await leaving;
    // a admitted the request that started the look-ahead too.
    for (const [key, c] of [['a', 22], ['b', 21]] as const) assert.deepEqual(etcd.state(etcdKey(key)), { w: w0, c, a: 0 }, `${key}: etcd counts what was admitted, nothing held`);
    assert.ok(returned > pooled, `the pools (${pooled}) and the blocks the batch brought: ${returned}`);
    assert.equal(store.heldTokens(t0 + 1000), 0);
  });

  it('leaves out buckets with no request in this window, and buckets a limit can be reached in', async () => {
    const { etcd, store, t0, w0, etcdKey } = await manyWarmedUp(['a', 'b']);
    // 'old' had its traffic a window earlier; 'near' has a limit its traffic could reach.
    const near = { ...rule, id: 'p/near', name: 'near', limit: 400 } as CompiledRateLimit;
    for (let i = 0; i < 20; i++) await store.consume({ rule, key: 'old', now: t0 - 1000 });
    await store.consume({ rule, key: 'old', now: t0 - 900 });
    for (let i = 0; i < 20; i++) await store.consume({ rule: near, key: 'a', now: t0 });
    await store.consume({ rule: near, key: 'a', now: t0 + 100 });
    await settle();
    const keys = [...etcd.kv.keys()];
    const before = etcd.txns.length;
    store.consume({ rule, key: 'a', now: t0 + 950 });
    await settle();
    assert.deepEqual(
      etcd.txns.slice(before).map((t) => t.keys),
      [[etcdKey('a'), etcdKey('b')]],
    );
    assert.equal(etcd.state(keys[2]!)!.w, w0 - 1, 'the idle bucket was not written');
    assert.equal(etcd.state(keys[3]!)!.a, undefined, 'nothing taken ahead where the limit can be reached');
  });

  it('a batch that loses to another replica\'s write is taken again from the states etcd answered with', async () => {
    const keys = ['a', 'b', 'c'];
    const { etcd, store, t0, w0, etcdKey } = await manyWarmedUp(keys);
    // Another replica took 1,000 tokens of b's window since this one last saw it.
    const b = etcd.state(etcdKey('b'))!;
    etcd.write(etcdKey('b'), { ...b, c: b.c + 1000 });
    const before = etcd.txns.length;
    store.consume({ rule, key: 'a', now: t0 + 950 });
    await settle();
    assert.deepEqual(
      etcd.txns.slice(before).map((t) => [t.keys.length, t.succeeded]),
      [
        [3, false],
        [3, true],
      ],
    );
    assert.equal(store.stats.conflicts, 1);
    const after = etcd.state(etcdKey('b'))!;
    assert.equal(after.w, w0);
    assert.equal(after.c, b.c + 1000, 'the other replica\'s tokens are still counted');
    assert.ok((after.a ?? 0) > 0);
  });

  it('an etcd failure frees every bucket of the batch: each takes its own block when a request needs one', async () => {
    const keys = ['a', 'b'];
    const { etcd, store, t0 } = await manyWarmedUp(keys);
    const failing = etcd.client.if;
    let fail = true;
    etcd.client.if = ((...args: Parameters<typeof failing>) => {
      const txn = failing(...args);
      const commit = txn.commit;
      txn.commit = async () => {
        if (fail) throw new Error('etcd is gone');
        return commit();
      };
      return txn;
    }) as typeof failing;
    store.consume({ rule, key: 'a', now: t0 + 950 });
    await settle();
    fail = false;
    // Both buckets are free again: the next window's first requests take their own blocks.
    for (const key of keys) {
      const g = store.consume({ rule, key, now: t0 + 1000 });
      assert.ok(g instanceof Promise, `${key}: nothing was taken ahead`);
      assert.equal((await g).allowed, true);
    }
  });
});
