import assert from 'node:assert/strict';
import { rendezvous } from '../../src/middlebox/nat/rendezvous';
import { charge, giveBack, take, windowIndex, type BucketState, type LimitParams } from '../../src/middlebox/ratelimit/algorithms';
import { silentLogger } from '../../src/observability/logger';
import type { CompiledNatRule, CompiledRateLimit } from '../../src/policy/types';
import type { EtcdNatTable } from '../../src/state/etcd/nat';
import type { EtcdRateLimitStore } from '../../src/state/etcd/ratelimit';
import { flowId } from '../../src/state/nat/memory';
import type { RateLimitGrant, RateLimitRequest } from '../../src/state/port';
import { bucketId, LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { EtcdBreaker, type BreakerSettings } from '../../src/state/resilient/breaker';
import { ResilientNatTable } from '../../src/state/resilient/nat';
import { ResilientRateLimitStore } from '../../src/state/resilient/ratelimit';
import { snapshot } from '../harness/policy';
import { BOUND_MS, deferred, TEST_BREAKER, type Deferred } from '../harness/breaker';

const SETTINGS = TEST_BREAKER;
const DAY = 86_400_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, withinMs = 3000): Promise<void> {
  const until = Date.now() + withinMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

// --- fakes -----------------------------------------------------------------------------------------

type Mode = 'ok' | 'fail' | 'hang';

/** etcd as the fakes see it: answering, failing at once, or never answering. */
class FakeEtcd {
  mode: Mode = 'ok';
  probes = 0;
  /** When set, a probe waits for it before answering as `mode` says. */
  probeGate: Deferred<void> | undefined;

  gate<T>(f: () => T, mode: Mode = this.mode): Promise<T> {
    if (mode === 'fail') return Promise.reject(new Error('etcd unavailable'));
    if (mode === 'hang') return new Promise<T>(() => undefined);
    return Promise.resolve().then(f);
  }

  probe(): Promise<unknown> {
    this.probes += 1;
    if (this.probeGate) return this.probeGate.promise.then(() => this.gate(() => 'pong'));
    return this.gate(() => 'pong');
  }
}

function fullParams(rule: CompiledRateLimit): LimitParams {
  return { algorithm: rule.algorithm, limit: rule.limit, perMs: rule.perMs, burst: rule.burst };
}

/** The shared buckets as EtcdRateLimitStore keeps them (full limit, same algorithms), in memory. */
class FakeSharedRateLimits {
  readonly buckets = new Map<string, BucketState>();
  consumes = 0;
  refunds = 0;
  /** Charges that reached the shared buckets. */
  readonly charges: Array<{ id: string; n: number; now: number; window?: number }> = [];
  chargeAttempts = 0;
  /** Overrides etcd's mode for charges only. */
  chargeMode: Mode | undefined;
  /** When set, a charge waits for it before reaching etcd. */
  chargeGate: Deferred<void> | undefined;
  /** Leased tokens already in hand: granted synchronously, with no etcd call. */
  pooled = 0;
  /** Like EtcdRateLimitStore's `guard`: every etcd call runs through the breaker. */
  guard: <T>(op: () => Promise<T>) => Promise<T> = (op) => op();

  constructor(private readonly etcd: FakeEtcd) {}

  consume(req: RateLimitRequest): RateLimitGrant | Promise<RateLimitGrant> {
    this.consumes += 1;
    if (req.rule.consistency === 'leased' && this.pooled >= 1) {
      this.pooled -= 1;
      return { allowed: true, limit: req.rule.limit, remaining: this.pooled, resetMs: 1, retryAfterMs: 0 };
    }
    return this.guard(() => this.etcd.gate(() => {
      const id = bucketId(req);
      const t = take(fullParams(req.rule), this.buckets.get(id), 1, req.now);
      this.buckets.set(id, t.state);
      return { allowed: t.granted === 1, limit: req.rule.limit, remaining: t.remaining, resetMs: t.resetMs, retryAfterMs: t.retryAfterMs };
    }));
  }

  refund(req: RateLimitRequest): void {
    this.refunds += 1;
    void this.etcd
      .gate(() => {
        const id = bucketId(req);
        const s = this.buckets.get(id);
        if (s) this.buckets.set(id, giveBack(fullParams(req.rule), s, 1, req.now));
      })
      .catch(() => undefined);
  }

  charge(req: RateLimitRequest, n: number, window?: number): Promise<void> {
    this.chargeAttempts += 1;
    const gate = this.chargeGate?.promise ?? Promise.resolve();
    return this.guard(() => gate.then(() => this.etcd.gate(() => {
      const id = bucketId(req);
      this.buckets.set(id, charge(fullParams(req.rule), this.buckets.get(id), n, req.now, window));
      this.charges.push({ id, n, now: req.now, window });
    }, this.chargeMode ?? this.etcd.mode)));
  }

  /** Tokens counted in the shared bucket now (window count, or a token bucket's spent tokens). */
  used(req: RateLimitRequest, now = Date.now()): number {
    const s = this.buckets.get(bucketId(req));
    if (!s) return 0;
    if ('k' in s) return (req.rule.burst ?? req.rule.limit) - s.k;
    return s.w === windowIndex(req.rule.perMs, now) ? s.c : 0;
  }

  /** As EtcdRateLimitStore: the window's count as last seen (here: as it is). */
  sharedUsed(req: RateLimitRequest): number | undefined {
    if (req.rule.algorithm === 'token-bucket' || !this.buckets.has(bucketId(req))) return undefined;
    return this.used(req, req.now);
  }
}

/** The etcd NAT table: create-if-absent / replace-if-`replacing`, in memory. */
class FakeSharedNat {
  readonly flows = new Map<string, string>();
  readonly assigns: Array<{ flow: string; backend: string; replacing: string | undefined }> = [];
  touches = 0;
  /** Overrides etcd's mode for assigns only. */
  assignMode: Mode | undefined;

  constructor(private readonly etcd: FakeEtcd) {}

  assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, _now: number): Promise<string> {
    this.assigns.push({ flow, backend, replacing });
    return this.etcd.gate(() => {
      const id = flowId(rule, flow);
      const current = this.flows.get(id);
      if (current !== undefined && current !== replacing) return current;
      this.flows.set(id, backend);
      return backend;
    }, this.assignMode ?? this.etcd.mode);
  }

  lookup(rule: CompiledNatRule, flow: string): string | undefined {
    return this.flows.get(flowId(rule, flow));
  }

  touch(): void {
    this.touches += 1;
  }

  isDrained(): boolean {
    return false;
  }

  nextIndex(): number {
    return 0;
  }
}

// --- rules -------------------------------------------------------------------------------------

const LIMITS = snapshot({
  shop: `{ rateLimits: [
    { name: strict, limit: 30, per: 24h, algorithm: fixed-window, consistency: strict },
    { name: leased, limit: 30, per: 24h, algorithm: fixed-window, consistency: leased },
    { name: local, limit: 30, per: 24h, algorithm: fixed-window, consistency: local },
    { name: sliding, limit: 30, per: 24h, algorithm: sliding-window, consistency: strict },
    { name: bucket, limit: 30, per: 24h, algorithm: token-bucket, consistency: strict } ] }`,
}).policies[0]!.rateLimits;

function limit(name: string): CompiledRateLimit {
  const r = LIMITS.find((l) => l.name === name);
  assert.ok(r, name);
  return r;
}

const STRICT = limit('strict');
const LEASED = limit('leased');
const LOCAL = limit('local');
const BUCKET = limit('bucket');
const SLIDING = limit('sliding');

const POOL = ['10.0.0.1:8080', '10.0.0.2:8080', '10.0.0.3:8080', '10.0.0.4:8080'];
const NAT: CompiledNatRule = snapshot({ vip: `{ nat: [{ name: web, to: ${JSON.stringify(POOL)} }] }` }).policies[0]!.nat[0]!;

function ask(rule: CompiledRateLimit, key = 'k', now = Date.now()): RateLimitRequest {
  return { rule, key, now };
}

async function admitted(store: ResilientRateLimitStore, req: () => RateLimitRequest, times: number): Promise<number> {
  let n = 0;
  for (let i = 0; i < times; i++) if ((await store.consume(req())).allowed) n++;
  return n;
}

// --- ResilientRateLimitStore -------------------------------------------------------------------

describe('ResilientRateLimitStore', () => {
  let etcd: FakeEtcd;
  let shared: FakeSharedRateLimits;
  let local: LocalRateLimitStore;
  let breaker: EtcdBreaker;
  let store: ResilientRateLimitStore;

  before(function () {
    // The day-long windows must not end during a test.
    if (DAY - (Date.now() % DAY) < 60_000) this.skip();
  });

  beforeEach(() => {
    etcd = new FakeEtcd();
    shared = new FakeSharedRateLimits(etcd);
    local = new LocalRateLimitStore({ replicas: () => 3 });
    breaker = new EtcdBreaker(silentLogger(), SETTINGS, () => etcd.probe());
    if (shared instanceof FakeSharedRateLimits) shared.guard = (op) => breaker.run(op);
    store = new ResilientRateLimitStore(shared as never as EtcdRateLimitStore, local, breaker, silentLogger());
  });

  afterEach(() => breaker.shutdown());

  /** Makes etcd fail and trips the breaker with operations that are not this store's. */
  async function outage(mode: Mode = 'fail'): Promise<void> {
    etcd.mode = mode;
    for (let i = 0; i < SETTINGS.consecutiveFailures; i++) await breaker.run(() => etcd.gate(() => 'x')).catch(() => undefined);
    assert.equal(breaker.state, 'open');
  }

  async function recovery(): Promise<void> {
    etcd.mode = 'ok';
    await waitFor('the breaker to close', () => breaker.state === 'closed');
    await waitFor('reconciliation', () => store.owedBuckets === 0);
    await sleep(20);
  }

  describe('while etcd answers', () => {
    it('sends strict and leased limits to the shared store, with its full limit', async () => {
      assert.equal(await admitted(store, () => ask(STRICT), 35), 30);
      assert.equal(await admitted(store, () => ask(LEASED), 35), 30);
      assert.equal(shared.consumes, 70);
      assert.equal(shared.used(ask(STRICT)), 30);
      assert.equal(local.size, 0, 'nothing counted locally');
      assert.equal(breaker.state, 'closed');
      assert.equal(breaker.stats.fallbacks, 0);
      assert.equal(store.owedBuckets, 0);
    });

    it('sends local limits to the local store, with this replica\'s share', async () => {
      assert.equal(await admitted(store, () => ask(LOCAL), 20), 10);
      assert.equal(shared.consumes, 0);
      assert.equal(local.size, 1);
    });

    it('passes a leased token already in hand through synchronously', () => {
      shared.pooled = 1;
      const g = store.consume(ask(LEASED));
      assert.ok(!(g instanceof Promise), 'no etcd call, no breaker');
      assert.equal(g.allowed, true);
    });

    it('gives a refund back to the shared store', async () => {
      assert.equal(await admitted(store, () => ask(STRICT), 3), 3);
      store.refund(ask(STRICT));
      await sleep(5);
      assert.equal(shared.refunds, 1);
      assert.equal(shared.used(ask(STRICT)), 2);
    });

    it('a denial from the shared store is an answer, not a failure', async () => {
      assert.equal(await admitted(store, () => ask(STRICT), 60), 30);
      assert.equal(breaker.state, 'closed');
      assert.equal(breaker.stats.fallbacks, 0);
    });
  });

  describe('while etcd fails', () => {
    it('answers from the local share (limit ÷ 3), and the breaker opens after 3 failures', async () => {
      etcd.mode = 'fail';
      const latencies: number[] = [];
      let allowed = 0;
      for (let i = 0; i < 20; i++) {
        const start = Date.now();
        if ((await store.consume(ask(STRICT))).allowed) allowed++;
        latencies.push(Date.now() - start);
      }
      assert.equal(allowed, 10);
      assert.equal(shared.consumes, 3, 'asked etcd until the breaker opened, then no more');
      assert.equal(breaker.state, 'open');
      assert.equal(breaker.stats.fallbacks, 20);
      assert.equal(store.owedBuckets, 1);
      assert.ok(Math.max(...latencies) < BOUND_MS, `latencies ${latencies.join(', ')} ms`);
    });

    it('answers within about the breaker timeout when etcd hangs', async () => {
      etcd.mode = 'hang';
      const latencies: number[] = [];
      let allowed = 0;
      for (let i = 0; i < 12; i++) {
        const start = Date.now();
        if ((await store.consume(ask(STRICT))).allowed) allowed++;
        latencies.push(Date.now() - start);
      }
      assert.equal(allowed, 10);
      assert.equal(shared.consumes, 3);
      assert.equal(breaker.state, 'open');
      for (const [i, ms] of latencies.entries()) {
        assert.ok(ms < BOUND_MS, `request ${i} took ${ms} ms (latencies ${latencies.join(', ')})`);
        if (i < 3) assert.ok(ms >= SETTINGS.timeoutMs - 2, `request ${i} waited for the timeout (${ms} ms)`);
      }
    });

    // Regression: the fallback counted the window from zero, so the window an outage began in
    // admitted what etcd had counted plus every replica's whole share (1.5 x the limit in the
    // fault bench).
    it('starts the window at its share of what etcd had already counted', async () => {
      assert.equal(await admitted(store, () => ask(STRICT), 15), 15, 'half the limit of 30, through etcd');
      await outage();
      // 15 left for 3 replicas: this one's share is 5, not 10.
      assert.equal(await admitted(store, () => ask(STRICT), 10), 5);
      await recovery();
      assert.equal(shared.used(ask(STRICT)), 20);
    });

    it('keeps each key and each rule on its own local share', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(STRICT, 'a'), 15), 10);
      assert.equal(await admitted(store, () => ask(STRICT, 'b'), 15), 10);
      assert.equal(await admitted(store, () => ask(LEASED, 'a'), 15), 10);
      assert.equal(await admitted(store, () => ask(BUCKET, 'a'), 15), 10);
      assert.equal(shared.consumes, 0);
      assert.equal(store.owedBuckets, 4);
    });

    it('local limits are not fallbacks', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(LOCAL), 12), 10);
      assert.equal(breaker.stats.fallbacks, 0);
      assert.equal(store.owedBuckets, 0);
    });

    it('a leased token in hand is not used while the breaker is open', async () => {
      await outage();
      shared.pooled = 5;
      const g = await store.consume(ask(LEASED));
      assert.equal(g.allowed, true);
      assert.equal(shared.consumes, 0);
      assert.equal(breaker.stats.fallbacks, 1);
      assert.equal(store.owedBuckets, 1);
    });

    it('a refund returns an owed token and does not touch the shared store', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(STRICT), 3), 3);
      store.refund(ask(STRICT));
      assert.equal(shared.refunds, 0);
      // the local share got its token back: 10 − 3 + 1 more
      assert.equal(await admitted(store, () => ask(STRICT), 20), 8);
      await recovery();
      assert.deepEqual(
        shared.charges.map((c) => c.n),
        [10],
        '11 admitted, 1 given back',
      );
      assert.equal(shared.refunds, 0);
    });

    it('a refund with nothing owed is dropped while open', async () => {
      await outage();
      store.refund(ask(STRICT, 'never-seen'));
      assert.equal(shared.refunds, 0);
      assert.equal(store.owedBuckets, 0);
    });
  });

  describe('when the breaker closes again', () => {
    it('charges the tokens admitted locally to the shared store exactly once', async () => {
      assert.equal(await admitted(store, () => ask(STRICT), 5), 5, 'before the outage, shared');
      await outage();
      // This replica's share of the 25 left: 30/3 less its part of the 5 counted (5/3), so 8.
      assert.equal(await admitted(store, () => ask(STRICT), 15), 8);
      assert.equal(shared.chargeAttempts, 0, 'nothing written while etcd is down');
      assert.equal(store.reconciled, 0);

      await recovery();
      assert.deepEqual(
        shared.charges.map((c) => [c.id, c.n]),
        [[bucketId(ask(STRICT)), 8]],
      );
      assert.equal(store.reconciled, 8);
      assert.equal(store.owedBuckets, 0);
      assert.equal(shared.used(ask(STRICT)), 13);
      assert.equal(breaker.stats.closed, 1);

      // Another outage and recovery, with nothing admitted locally: nothing is charged again.
      await outage();
      await recovery();
      assert.equal(breaker.stats.closed, 2);
      assert.equal(shared.charges.length, 1);
      assert.equal(shared.chargeAttempts, 1);
      assert.equal(store.reconciled, 8);

      // Decisions are the shared store's again, and it counts what the fallback admitted.
      assert.equal(await admitted(store, () => ask(STRICT), 30), 17);
    });

    it('charges each bucket its own tokens', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(STRICT, 'a'), 4), 4);
      assert.equal(await admitted(store, () => ask(STRICT, 'b'), 7), 7);
      assert.equal(await admitted(store, () => ask(LEASED, 'a'), 2), 2);
      await recovery();
      assert.deepEqual(
        new Map(shared.charges.map((c) => [c.id, c.n])),
        new Map([
          [bucketId(ask(STRICT, 'a')), 4],
          [bucketId(ask(STRICT, 'b')), 7],
          [bucketId(ask(LEASED, 'a')), 2],
        ]),
      );
      assert.equal(store.reconciled, 13);
    });

    it('charges when the breaker is closed by the probe, with no request coming in', async () => {
      await outage('hang');
      assert.equal(await admitted(store, () => ask(STRICT), 3), 3);
      etcd.mode = 'ok';
      await waitFor('the charge', () => shared.charges.length === 1);
      assert.ok(etcd.probes >= 1);
      assert.equal(shared.charges[0]!.n, 3);
    });

    it('drops owed tokens of a window that has ended', async () => {
      await outage();
      const yesterday = () => ask(STRICT, 'k', Date.now() - DAY);
      assert.equal(await admitted(store, yesterday, 4), 4);
      assert.equal(store.owedBuckets, 1);
      await recovery();
      assert.equal(shared.chargeAttempts, 0);
      assert.equal(store.reconciled, 0);
      assert.equal(store.owedBuckets, 0);
    });

    // Regression: owed tokens are kept per window, so an outage across a boundary charges only the current one.
    it('charges only the tokens of the current window when the outage spans windows', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(STRICT, 'k', Date.now() - DAY), 12), 10);
      assert.equal(await admitted(store, () => ask(STRICT, 'k'), 2), 2);
      await recovery();
      assert.deepEqual(
        shared.charges.map((c) => c.n),
        [2],
      );
      assert.equal(store.reconciled, 2);
    });

    it('charges a sliding window the tokens of the window before, as its previous count, when the outage spans the boundary', async () => {
      await outage();
      const yesterday = Date.now() - DAY;
      assert.equal(await admitted(store, () => ask(SLIDING, 'k', yesterday), 5), 5);
      await recovery();
      assert.deepEqual(shared.charges.map((c) => [c.n, c.window]), [[5, windowIndex(DAY, yesterday)]]);
      const state = shared.buckets.get(bucketId(ask(SLIDING))) as { w: number; c: number; p: number };
      assert.deepEqual([state.w, state.c, state.p], [windowIndex(DAY, Date.now()), 0, 5], 'counted in the window before, which still weighs');
    });

    it('a second outage in the same window starts from what etcd counted since, not from the first outage\'s count', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(STRICT), 2), 2);
      await recovery();
      // The other replicas, through etcd, take 20 more: 22 of 30 are gone.
      assert.equal(await admitted(store, () => ask(STRICT), 20), 20);
      await outage();
      // This replica's share of what is left: its part of 22 (7.3 of its 10) is counted, so 2, not 8.
      assert.equal(await admitted(store, () => ask(STRICT), 10), 2);
    });

    it('runs one write-back at a time: a debt is charged once however many passes are asked for', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(STRICT), 3), 3);
      assert.equal(await admitted(store, () => ask(STRICT, 'b'), 2), 2);
      shared.chargeGate = deferred<void>();
      etcd.mode = 'ok';
      await waitFor('the breaker to close', () => breaker.state === 'closed');
      await waitFor('the write-back to be under way', () => shared.chargeAttempts === 1);
      // A request decided meanwhile (locally, as the write-back runs) schedules a pass of its own.
      assert.equal(await admitted(store, () => ask(STRICT, 'other'), 1), 1);
      const reconcile = (store as unknown as { reconcile(): Promise<boolean> }).reconcile.bind(store);
      const again = reconcile();
      shared.chargeGate.resolve();
      await again;
      await waitFor('reconciliation', () => store.owedBuckets === 0);
      await sleep(600);
      assert.deepEqual(new Map(shared.charges.map((c) => [c.id, c.n])), new Map([[bucketId(ask(STRICT)), 3], [bucketId(ask(STRICT, 'b')), 2], [bucketId(ask(STRICT, 'other')), 1]]));
      assert.equal(shared.charges.length, 3, 'each debt charged once');
      assert.equal(store.reconciled, 6);
    });

    it('writes a token bucket\'s debt back, which denies until refill repays it', async () => {
      assert.equal(await admitted(store, () => ask(BUCKET), 30), 30, 'the shared bucket is empty');
      await outage();
      assert.equal(await admitted(store, () => ask(BUCKET), 15), 10);
      await recovery();
      assert.deepEqual(
        shared.charges.map((c) => c.n),
        [10],
      );
      assert.equal(store.reconciled, 10);
      const s = shared.buckets.get(bucketId(ask(BUCKET)));
      assert.ok(s && 'k' in s && s.k < -9, `in debt: ${JSON.stringify(s)}`);
      assert.equal(await admitted(store, () => ask(BUCKET), 5), 0);
    });

    it('writes a token bucket\'s owed tokens back however long ago they were admitted', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(BUCKET, 'k', Date.now() - 2 * DAY), 4), 4);
      await recovery();
      assert.deepEqual(
        shared.charges.map((c) => c.n),
        [4],
      );
    });

    it('keeps the debt when etcd fails during reconciliation, and writes it at the next recovery', async () => {
      await outage();
      assert.equal(await admitted(store, () => ask(STRICT), 6), 6);
      // etcd answers the probe, then fails the charge.
      shared.chargeMode = 'fail';
      etcd.mode = 'ok';
      await waitFor('the charge attempt', () => shared.chargeAttempts >= 1);
      await sleep(10);
      assert.ok(breaker.stats.closed >= 1);
      assert.equal(shared.charges.length, 0);
      assert.equal(store.owedBuckets, 1, 'the debt is kept');
      assert.equal(store.reconciled, 0);

      // (The failed charge may itself have reopened the breaker: the outage is still in its window.)
      shared.chargeMode = undefined;
      if (breaker.state === 'closed') await outage();
      await recovery();
      assert.deepEqual(
        shared.charges.map((c) => c.n),
        [6],
      );
      assert.equal(store.reconciled, 6);
    });

    // Regression: grants from etcd on top of a count still missing the outage's tokens let the
    // window the outage ended in pass the limit.
    it('decides locally until the write-back is done, and writes back what it admitted meanwhile', async () => {
      // A breaker whose timeout leaves room to hold a charge in flight on a loaded machine.
      breaker.shutdown();
      breaker = new EtcdBreaker(silentLogger(), { ...SETTINGS, timeoutMs: 5000 }, () => etcd.probe());
      shared.guard = (op) => breaker.run(op);
      store = new ResilientRateLimitStore(shared as never as EtcdRateLimitStore, local, breaker, silentLogger());
      etcd.mode = 'fail';
      for (let i = 0; i < SETTINGS.consecutiveFailures; i++) await breaker.run(() => etcd.gate(() => 'x')).catch(() => undefined);
      assert.equal(breaker.state, 'open');
      assert.equal(await admitted(store, () => ask(STRICT), 4), 4);

      shared.chargeGate = deferred<void>();
      etcd.mode = 'ok';
      await waitFor('the write-back to start', () => shared.chargeAttempts === 1);
      assert.equal(breaker.state, 'closed');
      const consumesBefore = shared.consumes;
      assert.equal(await admitted(store, () => ask(STRICT), 3), 3);
      assert.equal(shared.consumes, consumesBefore, 'no grant from etcd while the write-back runs');

      shared.chargeGate.resolve();
      await waitFor('both write-back passes', () => shared.charges.length === 2 && store.owedBuckets === 0);
      assert.deepEqual(
        shared.charges.map((c) => c.n),
        [4, 3],
      );
      assert.equal(shared.used(ask(STRICT)), 7);
      await sleep(10);
      assert.equal(await admitted(store, () => ask(STRICT), 1), 1);
      assert.equal(shared.consumes, consumesBefore + 1, 'back to the shared store');
    });

    // Regression: while half-open no request starts an etcd consume, so none is counted twice.
    it('a request during half-open is counted once in the shared bucket', async () => {
      await outage();
      etcd.probeGate = deferred<void>();
      etcd.mode = 'ok';
      await waitFor('half-open', () => breaker.state === 'half-open');
      const g = await store.consume(ask(STRICT, 'half-open'));
      assert.equal(g.allowed, true);
      etcd.probeGate.resolve();
      await recovery();
      assert.equal(shared.used(ask(STRICT, 'half-open')), 1);
    });
  });
});

// --- ResilientNatTable ---------------------------------------------------------------------------

describe('ResilientNatTable', () => {
  let etcd: FakeEtcd;
  let shared: FakeSharedNat;
  let breaker: EtcdBreaker;
  let table: ResilientNatTable;

  beforeEach(() => {
    etcd = new FakeEtcd();
    shared = new FakeSharedNat(etcd);
    breaker = new EtcdBreaker(silentLogger(), SETTINGS, () => etcd.probe());
    table = new ResilientNatTable(shared as never as EtcdNatTable, breaker, silentLogger());
  });

  afterEach(() => breaker.shutdown());

  const chosen = (flow: string) => rendezvous(flow, POOL)!;

  async function recovery(): Promise<void> {
    etcd.mode = 'ok';
    await waitFor('the breaker to close', () => breaker.state === 'closed');
    await waitFor('reconciliation', () => table.pendingFlows === 0);
  }

  /** Makes etcd fail and trips the breaker with operations that are not this table's. */
  async function outage(): Promise<void> {
    etcd.mode = 'fail';
    for (let i = 0; i < SETTINGS.consecutiveFailures; i++) await breaker.run(() => etcd.gate(() => 'x')).catch(() => undefined);
    assert.equal(breaker.state, 'open');
  }

  it('assigns through the shared table while etcd answers', async () => {
    assert.equal(await table.assign(NAT, 'f1', chosen('f1'), undefined, Date.now()), chosen('f1'));
    assert.deepEqual(shared.assigns, [{ flow: 'f1', backend: chosen('f1'), replacing: undefined }]);
    assert.equal(table.lookup(NAT, 'f1'), chosen('f1'));
    assert.equal(table.pendingFlows, 0);
    assert.equal(breaker.stats.fallbacks, 0);
  });

  it('resolves to the mapping the shared table holds when another replica won', async () => {
    shared.flows.set(flowId(NAT, 'f1'), POOL[3]!);
    assert.equal(await table.assign(NAT, 'f1', POOL[0]!, undefined, Date.now()), POOL[3]);
    assert.equal(table.lookup(NAT, 'f1'), POOL[3]);
  });

  it('a single failed assign, which does not open the breaker, is written to etcd shortly', async () => {
    shared.assignMode = 'fail';
    assert.equal(await table.assign(NAT, 'f1', chosen('f1'), undefined, Date.now()), chosen('f1'));
    assert.equal(breaker.state, 'closed');
    assert.equal(table.pendingFlows, 1);
    shared.assignMode = undefined;
    await waitFor('the pending mapping to be written', () => table.pendingFlows === 0, 3000);
    assert.equal(shared.flows.get(flowId(NAT, 'f1')), chosen('f1'));
  });

  it('a successful assign takes the flow out of the pending mappings (before any write-back)', async () => {
    // One failure, which does not open the breaker: the write-back is half a second away.
    shared.assignMode = 'fail';
    await table.assign(NAT, 'f1', chosen('f1'), undefined, Date.now());
    assert.equal(table.pendingFlows, 1);
    shared.assignMode = undefined;
    await table.assign(NAT, 'f1', POOL[0]!, undefined, Date.now());
    assert.equal(table.pendingFlows, 0);
    assert.equal(shared.assigns.length, 2, 'no write-back ran yet');
  });

  it('an expired pending mapping is not revived by a touch: etcd\'s mapping holds, and is kept alive', async () => {
    shared.assignMode = 'fail';
    const long = Date.now() - NAT.idleMs - 1000;
    await table.assign(NAT, 'f1', POOL[0]!, undefined, long);
    shared.assignMode = undefined;
    shared.flows.set(flowId(NAT, 'f1'), POOL[1]!);
    assert.equal(table.lookup(NAT, 'f1'), POOL[1]);
    table.touch(NAT, 'f1', Date.now());
    assert.equal(table.lookup(NAT, 'f1'), POOL[1], 'still etcd\'s');
    assert.equal(shared.touches, 1, 'etcd\'s mapping kept alive');
    assert.equal(table.pendingFlows, 0);
  });

  it('a pending mapping idle past its rule\'s idle time expires: not looked up, not written', async () => {
    await outage();
    const long = Date.now() - NAT.idleMs - 1000;
    await table.assign(NAT, 'old', chosen('old'), undefined, long);
    await table.assign(NAT, 'new', chosen('new'), undefined, Date.now());
    assert.equal(table.lookup(NAT, 'old'), undefined, 'expired, as it would have in etcd');
    assert.equal(table.lookup(NAT, 'new'), chosen('new'));
    await recovery();
    assert.deepEqual(shared.assigns.map((a) => a.flow).filter((f) => f === 'old' || f === 'new'), ['new']);
  });

  it('forwards touches while etcd answers', () => {
    table.touch(NAT, 'f1', Date.now());
    assert.equal(shared.touches, 1);
  });

  it('when etcd fails, assign returns the backend it was given and lookup returns it afterwards', async () => {
    etcd.mode = 'fail';
    const flows = ['f1', 'f2', 'f3', 'f4', 'f5', 'f6'];
    for (const f of flows) {
      const start = Date.now();
      assert.equal(await table.assign(NAT, f, chosen(f), undefined, Date.now()), chosen(f));
      assert.ok(Date.now() - start < BOUND_MS);
    }
    assert.equal(breaker.state, 'open');
    assert.equal(shared.assigns.length, 3, 'etcd asked until the breaker opened');
    for (const f of flows) assert.equal(table.lookup(NAT, f), chosen(f));
    assert.equal(table.pendingFlows, 6);
    assert.equal(breaker.stats.fallbacks, 6);
    assert.equal(shared.flows.size, 0);
  });

  it('when etcd hangs, assign answers within about the breaker timeout', async () => {
    etcd.mode = 'hang';
    for (const f of ['f1', 'f2', 'f3', 'f4']) {
      const start = Date.now();
      assert.equal(await table.assign(NAT, f, chosen(f), undefined, Date.now()), chosen(f));
      const ms = Date.now() - start;
      assert.ok(ms < BOUND_MS, `${f}: ${ms} ms`);
    }
    assert.equal(breaker.state, 'open');
    assert.equal(table.lookup(NAT, 'f4'), chosen('f4'));
  });

  it('does not touch the shared table while open, nor for a flow still pending', async () => {
    etcd.mode = 'fail';
    for (const f of ['f1', 'f2', 'f3']) await table.assign(NAT, f, chosen(f), undefined, Date.now());
    assert.equal(breaker.state, 'open');
    table.touch(NAT, 'f1', Date.now());
    assert.equal(shared.touches, 0);
  });

  it('after recovery, writes the pending mappings with replacing undefined', async () => {
    etcd.mode = 'fail';
    const flows = ['f1', 'f2', 'f3', 'f4', 'f5'];
    for (const f of flows) await table.assign(NAT, f, chosen(f), undefined, Date.now());
    const before = shared.assigns.length;
    await recovery();
    const written = shared.assigns.slice(before);
    assert.deepEqual(
      written.sort((a, b) => a.flow.localeCompare(b.flow)),
      flows.map((f) => ({ flow: f, backend: chosen(f), replacing: undefined })),
    );
    for (const f of flows) {
      assert.equal(shared.flows.get(flowId(NAT, f)), chosen(f));
      assert.equal(table.lookup(NAT, f), chosen(f));
    }
    assert.equal(table.pendingFlows, 0);
  });

  it('after recovery, a different mapping already in force in etcd wins', async () => {
    etcd.mode = 'fail';
    for (const f of ['f1', 'f2', 'f3', 'f4']) await table.assign(NAT, f, chosen(f), undefined, Date.now());
    assert.equal(table.lookup(NAT, 'f4'), chosen('f4'));
    // Meanwhile a replica that could still reach etcd mapped f4 elsewhere.
    const other = POOL.find((b) => b !== chosen('f4'))!;
    shared.flows.set(flowId(NAT, 'f4'), other);
    assert.equal(table.lookup(NAT, 'f4'), chosen('f4'), 'the pending mapping answers during the outage');
    await recovery();
    assert.equal(table.lookup(NAT, 'f4'), other);
    assert.equal(shared.flows.get(flowId(NAT, 'f4')), other, 'etcd\'s mapping is not overwritten');
    assert.equal(table.lookup(NAT, 'f1'), chosen('f1'));
  });

  it('keeps pending mappings when etcd fails again during reconciliation', async () => {
    etcd.mode = 'fail';
    for (const f of ['f1', 'f2', 'f3']) await table.assign(NAT, f, chosen(f), undefined, Date.now());
    // etcd answers the probe, then fails the writes.
    const before = shared.assigns.length;
    shared.assignMode = 'fail';
    etcd.mode = 'ok';
    await waitFor('a write attempt', () => shared.assigns.length > before);
    await sleep(10);
    assert.ok(breaker.stats.closed >= 1);
    assert.equal(table.pendingFlows, 3);
    for (const f of ['f1', 'f2', 'f3']) assert.equal(table.lookup(NAT, f), chosen(f));

    // (The failed write may itself have reopened the breaker: the outage is still in its window.)
    shared.assignMode = undefined;
    if (breaker.state === 'closed') {
      etcd.mode = 'fail';
      for (let i = 0; i < 3; i++) await breaker.run(() => etcd.gate(() => 'x')).catch(() => undefined);
    }
    await recovery();
    for (const f of ['f1', 'f2', 'f3']) assert.equal(shared.flows.get(flowId(NAT, f)), chosen(f));
  });
});

// --- charge() ------------------------------------------------------------------------------------

describe('charge (tokens admitted elsewhere)', () => {
  const T0 = 28_333_334 * 60_000; // the start of a minute window

  it('fixed window: counts past the limit, and the window denies until it ends', () => {
    const p: LimitParams = { algorithm: 'fixed-window', limit: 10, perMs: 60_000 };
    let s = take(p, undefined, 8, T0 + 1).state;
    s = charge(p, s, 5, T0 + 2);
    assert.deepEqual(s, { w: windowIndex(60_000, T0), c: 13 });
    const t = take(p, s, 1, T0 + 3);
    assert.equal(t.granted, 0);
    assert.equal(t.remaining, 0);
    assert.equal(take(p, s, 5, T0 + 60_000).granted, 5, 'the next window starts afresh');
  });

  it('fixed window: a charge in a new window counts in that window only', () => {
    const p: LimitParams = { algorithm: 'fixed-window', limit: 10, perMs: 60_000 };
    const s = charge(p, { w: windowIndex(60_000, T0), c: 10 }, 3, T0 + 60_000);
    assert.deepEqual(s, { w: windowIndex(60_000, T0) + 1, c: 3 });
    assert.equal(take(p, s, 10, T0 + 60_001).granted, 7);
  });

  it('sliding window: counts past the limit and carries into the next window\'s weight', () => {
    const p: LimitParams = { algorithm: 'sliding-window', limit: 10, perMs: 60_000 };
    const s = charge(p, undefined, 15, T0 + 1);
    assert.deepEqual(s, { w: windowIndex(60_000, T0), c: 15, p: 0 });
    assert.equal(take(p, s, 1, T0 + 2).granted, 0);
    // half way through the next window 15 × 0.5 = 7.5 still weigh: 2 tokens left
    assert.equal(take(p, s, 5, T0 + 90_000).granted, 2);
  });

  it('token bucket: goes into debt, and a later take grants nothing until refill repays it', () => {
    // 10 per second, burst 10: one token per 100 ms
    const p: LimitParams = { algorithm: 'token-bucket', limit: 10, perMs: 1000 };
    let s = take(p, undefined, 8, T0).state; // 2 left
    s = charge(p, s, 5, T0);
    assert.ok('k' in s);
    assert.ok(Math.abs(s.k - -3) < 1e-9, `k ${s.k}`);
    assert.equal(take(p, s, 1, T0 + 100).granted, 0, 'refilled to −2');
    assert.equal(take(p, s, 1, T0 + 299).granted, 0, 'still below 0');
    assert.equal(take(p, s, 1, T0 + 350).granted, 0, 'refilled to 0.5');
    assert.equal(take(p, s, 1, T0 + 400).granted, 1, 'repaid, one token');
    assert.equal(take(p, s, 20, T0 + 10_000).granted, 10, 'refills up to the burst only');
  });

  it('token bucket: refill until the charge counts first, capped at capacity', () => {
    const p: LimitParams = { algorithm: 'token-bucket', limit: 10, perMs: 1000 };
    const s = charge(p, { k: 0, t: T0 }, 4, T0 + 60_000);
    assert.ok('k' in s);
    assert.ok(Math.abs(s.k - 6) < 1e-9, `k ${s.k}`);
    assert.equal(s.t, T0 + 60_000);
  });

  it('token bucket: charging a fresh bucket starts from a full one', () => {
    const p: LimitParams = { algorithm: 'token-bucket', limit: 10, perMs: 1000, burst: 20 };
    const s = charge(p, undefined, 25, T0);
    assert.deepEqual(s, { k: -5, t: T0 });
    assert.equal(take(p, s, 1, T0 + 500).granted, 0);
    assert.equal(take(p, s, 1, T0 + 600).granted, 1);
  });
});
