// Rate-limit buckets shared by every replica in etcd, one key per bucket, updated by
// compare-and-swap on the key's mod revision. Two consistency modes use them:
//
// strict  Every admitted request is backed by a committed CAS. Concurrent requests for the same
//         bucket on one replica are coalesced into one transaction that asks for as many tokens as
//         there are requests waiting; the global count is exact.
// leased  A replica takes a block of tokens in one CAS and spends it locally, so most requests cost
//         no etcd round trip. The block follows the replica's observed rate (about one second of
//         its traffic), never more than it can spend before the window ends, and shrinks as the
//         window's budget runs out (at most what is left divided by the live replicas).
//         Every token was granted by etcd, so the replicas together never admit more than the
//         limit; they admit less by at most the tokens still unspent in pools when a window ends.
//         Where traffic stays far below the limit, the next block is taken in the background when
//         the pool falls to PREFETCH_LEAD_MS of traffic, so that requests do not wait for it; a
//         limit that traffic can reach (or a budget near its end) takes a block only when requests
//         need it, so that no more tokens than before are left stranded in pools. Under the same
//         condition the first block of the next window is taken ahead, in the window's last
//         LOOKAHEAD_MS: the key's state counts it apart (`a`, see algorithms.takeAhead) until that
//         window begins, so that the current window's count and budget stay as they were, and the
//         requests that open the next window find their tokens pooled instead of all waiting on
//         one etcd round trip. The first such request in a window takes ahead for every bucket
//         of the same window length that had requests in it and no take under way, in
//         transactions of up to LOOKAHEAD_BATCH_KEYS keys sent together: a bucket with a few
//         requests a second may see none in the last LOOKAHEAD_MS, and many buckets cost a few
//         etcd calls a window, not one each. Blocks taken in the background carry room for the
//         traffic's ups and downs (see blockSize).
//         (A replica of a version before `a` that writes the key in the same window drops it:
//         during such an upgrade a window may admit the blocks taken ahead for it more, at most
//         half the limit.)
//
// A bucket whose last known shared state has no token left is denied without asking etcd (the
// state can only have been consumed further since, until time refills it). Keys are bound to leases
// a little longer than the state matters, so idle buckets disappear from etcd by themselves.
import { createHash } from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import { charge, giveBack, peek, take, takeAhead, windowIndex, type BucketState, type LimitParams, type Take } from '../../middlebox/ratelimit/algorithms';
import type { Logger } from '../../observability/logger';
import type { CompiledRateLimit } from '../../policy/types';
import type { RateLimitGrant, RateLimitPort, RateLimitRequest } from '../port';
import { BoundedMap } from '../ratelimit/bounded-map';
import { bucketId, DEFAULT_MAX_BUCKETS } from '../ratelimit/local';
import { NotAnEtcdFailure } from './client';
import { SharedLeases } from './leases';

export interface EtcdRateLimitOptions {
  client: Etcd3;
  prefix: string;
  logger: Logger;
  /** Live replicas sharing the limits (membership); at least 1. */
  replicas: () => number;
  maxBuckets?: number;
  /**
   * Runs each etcd call (a compare-and-swap, a lease grant): the breaker in state/resilient. It
   * guards the calls themselves, not the time a request waits behind its bucket's batch, so a
   * burst queueing on a healthy etcd is never mistaken for an outage.
   */
  guard?: <T>(op: () => Promise<T>, operation?: 'cas' | 'lease_grant') => Promise<T>;
}

/** Counters of etcd work, for tests, benchmarks and metrics. */
export interface EtcdRateLimitStats {
  /** Committed CAS writes. */
  writes: number;
  /** CAS attempts that lost to another writer and were retried. */
  conflicts: number;
  /** Decisions answered from the last known state with no etcd call. */
  cachedDenials: number;
  /**
   * Requests of leased limits that the pool could not answer at once and that waited through an
   * etcd call on their bucket (a take for them, or one already under way). Every other leased
   * request was answered from the pool, or refused from the last known state, with no etcd call.
   */
  leasedWaits: number;
}

interface Waiter {
  now: number;
  /** The bucket's `settled` when this request began to wait. */
  since: number;
  /** Leased: rounds of block taking this request has waited through. */
  rounds?: number;
  resolve: (g: RateLimitGrant) => void;
  reject: (e: unknown) => void;
}

interface Bucket {
  key: string;
  rule: CompiledRateLimit;
  params: LimitParams;
  /** Last shared state seen, and the mod revision it had ("0": no key). */
  state?: BucketState;
  mod: string;
  waiting: Waiter[];
  busy: boolean;
  /** etcd calls on this bucket's key that have come back, answered or failed. */
  settled: number;
  // leased
  pool: number;
  poolEpoch: number;
  /** Tokens etcd granted this replica's pool in the pool's epoch. */
  pooled: number;
  arrivals: number;
  rateSince: number;
  /** Observed arrivals per millisecond on this replica (smoothed). */
  rate: number;
  /** Tokens etcd granted this replica for a later window (aheadEpoch), taken ahead of it. */
  ahead: number;
  aheadEpoch: number;
}

/**
 * A lost compare-and-swap means another replica's write went through, so the system as a whole
 * always progresses; a retry starts at once from the state the failed transaction returned.
 */
const MAX_CAS_ATTEMPTS = 100;
/** A leased request waits through at most this many block takes before it is answered from what is known. */
const MAX_LEASED_ROUNDS = 4;
/** A leased block aims at this much of the replica's traffic. */
const BLOCK_TARGET_MS = 1000;
/** The next leased block is taken in the background when the pool holds less than this much traffic. */
const PREFETCH_LEAD_MS = 50;
/** In a window's last this many ms (at most a quarter of the window), the next window's first block is taken. */
const LOOKAHEAD_MS = 100;

/** How far into a window of `perMs` a leased replica takes the next window's first block ahead (for benchmarks). */
export function lookaheadOffsetMs(perMs: number): number {
  return perMs - Math.min(LOOKAHEAD_MS, perMs / 4);
}

/**
 * Blocks taken ahead for many buckets share transactions of at most this many keys (well inside
 * etcd's default --max-txn-ops of 128, each key taking one compare and one put or get).
 */
const LOOKAHEAD_BATCH_KEYS = 64;

/** Token-bucket tokens held in a pool are spent within this time of their grant, or dropped. */
const BUCKET_POOL_MS = 250;
const KEY_TTL_SLACK_MS = 2000;

export class EtcdRateLimitStore implements RateLimitPort {
  readonly stats: EtcdRateLimitStats = { writes: 0, conflicts: 0, cachedDenials: 0, leasedWaits: 0 };
  private readonly buckets: BoundedMap<Bucket>;
  private readonly leases: SharedLeases;
  /** Set by leave(): leased limits take no blocks any more. */
  private leaving = false;
  /** Leased buckets a request has used lately: those a look-ahead sweep considers. */
  private readonly active = new Set<Bucket>();
  /** Per window length: the window whose look-ahead sweep has run (its index). */
  private readonly swept = new Map<number, number>();
  /** Buckets whose block ahead waits for the next batched transaction. */
  private aheadQueue: Array<{ b: Bucket; now: number }> = [];
  /** Background work under way (prefetch, look-ahead batches, late give-backs): leave() waits for it. */
  private readonly inFlight = new Set<Promise<void>>();
  /** Tokens given back by takes that landed after leave() began. */
  private givenBackLate = 0;
  /** Look-ahead sweeps to run before the next batch goes out: the bucket that asked, and when. */
  private readonly sweeps: Array<{ b: Bucket; now: number }> = [];

  constructor(private readonly opts: EtcdRateLimitOptions) {
    // A bucket dropped to make room leaves the look-ahead sweep's set with it.
    this.buckets = new BoundedMap(opts.maxBuckets ?? DEFAULT_MAX_BUCKETS, (_, b) => this.active.delete(b));
    this.leases = new SharedLeases(opts.client, opts.guard);
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Leased tokens this replica holds unspent, in pools whose window (or epoch) still runs: for metrics. */
  heldTokens(now = Date.now()): number {
    let held = 0;
    for (const b of this.buckets.values()) {
      const epoch = this.epochAt(b, now);
      if (epoch === b.poolEpoch && b.pool >= 1) held += Math.floor(b.pool);
      // A block taken for this window or a later one (for this window: it becomes the pool at the
      // bucket's next request; until then the pool is an earlier window's, not counted above).
      if (b.aheadEpoch >= epoch) held += Math.floor(b.ahead);
    }
    return held;
  }

  /**
   * The replica is leaving (SIGTERM). Leased limits from now on take from etcd only what waiting
   * requests need, so that no block is stranded with a replica that Envoy is about to stop calling,
   * and the tokens its pools hold unspent in windows still running go back to etcd, for the
   * replicas that stay. Takes under way in the background (prefetch, look-ahead) are waited for,
   * and what they bring is given back too. Resolves to the number of tokens given back.
   */
  async leave(clock: () => number = Date.now): Promise<number> {
    this.leaving = true;
    const lateBefore = this.givenBackLate;
    let returned = 0;
    for (const b of [...this.buckets.values()]) {
      if (b.rule.consistency !== 'leased') continue;
      // Each bucket at its own moment: the loop waits on etcd, and a stale time would roll a pool
      // that is still serving back into an epoch it has left.
      const now = clock();
      this.rollPool(b, now);
      // A block taken ahead leaves with the rest, as of the window it was counted for (set aside
      // first, so that a window beginning meanwhile does not make it a pool nobody gives back).
      const ahead = Math.floor(b.ahead);
      const aheadAt = b.aheadEpoch * b.params.perMs;
      b.ahead = 0;
      b.aheadEpoch = -1;
      const n = Math.floor(b.pool);
      if (n >= 1) {
        b.pool -= n;
        b.pooled -= n;
      }
      // One bucket's failure (etcd gone) leaves its tokens to lapse, not the other buckets' too.
      for (const [tokens, at] of [[n, now], [ahead, aheadAt]] as const) {
        if (tokens < 1) continue;
        try {
          if (await this.giveBackShared(b, at, tokens)) returned += tokens;
        } catch (e) {
          this.opts.logger.warn({ limit: b.rule.id, tokens, err: (e as Error).message }, 'could not give leased tokens back to etcd: they lapse with their window');
        }
      }
    }
    // A block that lands now goes back as it lands (keepAhead, prefetch): wait for those.
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
    return returned + this.givenBackLate - lateBefore;
  }

  /** Keeps `work` in inFlight until it settles, for leave() to wait on. */
  private track(work: Promise<void>): void {
    this.inFlight.add(work);
    void work.finally(() => this.inFlight.delete(work));
  }

  consume(req: RateLimitRequest): RateLimitGrant | Promise<RateLimitGrant> {
    const b = this.bucket(req);
    if (req.rule.consistency === 'leased') {
      this.rollPool(b, req.now);
      b.arrivals += 1;
      this.active.add(b);
      if (b.pool >= 1 && b.waiting.length === 0) {
        b.pool -= 1;
        const grant = this.pooledGrant(b, req.now);
        if (!b.busy) {
          if (this.wantsPrefetch(b, req.now)) this.track(this.prefetch(b, req.now));
          else if (this.wantsLookahead(b, req.now)) this.lookahead(b, req.now);
        }
        return grant;
      }
    }
    return new Promise((resolve, reject) => {
      b.waiting.push({ now: req.now, since: b.settled, resolve, reject });
      if (!b.busy) void this.drain(b);
    });
  }

  /**
   * Tokens the shared bucket had counted in the current window when this replica last saw it (all
   * replicas together; a leased pool's unspent tokens included), or undefined if it has not seen it.
   * Token buckets: undefined. Leased: this replica last saw the count when it took its own block,
   * and the others take blocks of about the same size after it, so each of them is assumed to hold
   * as many tokens as this one took in the window (at most the limit in all): an outage then costs
   * some of the window's tokens rather than admitting the others' blocks twice.
   */
  sharedUsed(req: RateLimitRequest): number | undefined {
    const b = this.buckets.get(bucketId(req));
    if (!b?.state || b.params.algorithm === 'token-bucket') return undefined;
    const seen = Math.max(0, b.rule.limit - peek(b.params, b.state, req.now).remaining);
    if (b.rule.consistency !== 'leased') return seen;
    this.rollPool(b, req.now);
    const others = Math.max(0, this.opts.replicas() - 1) * b.pooled;
    return Math.min(b.rule.limit, seen + others);
  }

  refund(req: RateLimitRequest): void {
    const b = this.bucket(req);
    if (req.rule.consistency === 'leased') {
      this.rollPool(b, req.now);
      // A token of a window the pool has left lapses with it.
      if (this.epochAt(b, req.now) === b.poolEpoch) b.pool += 1;
      return;
    }
    void this.giveBackShared(b, req.now).catch((e) =>
      this.opts.logger.warn({ limit: b.rule.id, err: (e as Error).message }, 'could not give back a rate-limit token'),
    );
  }

  /**
   * Adds `n` tokens consumed elsewhere (by the local fallback during an outage) to the shared
   * bucket, whether or not they fit: the shared count must show what was really admitted. For a
   * window limit, `window` is the window they were admitted in (default: req.now's); a sliding
   * window counts the previous one's tokens as its previous count.
   */
  async charge(req: RateLimitRequest, n: number, window?: number): Promise<void> {
    const b = this.bucket(req);
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      if (await this.compareAndSwap(b, charge(b.params, b.state, n, req.now, window), req.now)) return;
    }
    throw new NotAnEtcdFailure(`rate limit ${b.rule.id}: could not write back ${n} tokens`);
  }

  private bucket(req: RateLimitRequest): Bucket {
    const id = bucketId(req);
    let b = this.buckets.get(id);
    if (!b) {
      const r = req.rule;
      b = {
        key: etcdKey(this.opts.prefix, r, req.key),
        rule: r,
        params: { algorithm: r.algorithm, limit: r.limit, perMs: r.perMs, burst: r.burst },
        mod: '0',
        waiting: [],
        busy: false,
        settled: 0,
        pool: 0,
        poolEpoch: -1,
        pooled: 0,
        arrivals: 0,
        rateSince: req.now,
        rate: 0,
        ahead: 0,
        aheadEpoch: -1,
      };
    }
    this.buckets.set(id, b);
    return b;
  }

  /** Serves waiting requests, one shared take per round, until none is left. */
  private async drain(b: Bucket): Promise<void> {
    b.busy = true;
    try {
      while (b.waiting.length > 0) {
        const batch = b.waiting.splice(0);
        const now = batch[batch.length - 1]!.now;
        try {
          if (b.rule.consistency === 'leased') await this.serveLeased(b, batch, now);
          else this.serveStrict(b, batch, await this.takeShared(b, batch.length, now));
        } catch (e) {
          // Those queued behind a failed call are refused with it rather than made to wait for
          // another: a request costs at most one etcd timeout before its fallback answers.
          for (const w of [...batch, ...b.waiting.splice(0)]) this.answered(b, w).reject(e);
        }
      }
    } finally {
      b.busy = false;
    }
  }

  /** Counts `w` in stats.leasedWaits if it is a leased request that waited through an etcd call. */
  private answered(b: Bucket, w: Waiter): Waiter {
    if (b.rule.consistency === 'leased' && b.settled > w.since) this.stats.leasedWaits += 1;
    return w;
  }

  private serveStrict(b: Bucket, batch: Waiter[], t: Take): void {
    batch.forEach((w, i) =>
      w.resolve({
        allowed: i < t.granted,
        limit: b.rule.limit,
        remaining: i < t.granted ? t.remaining + (t.granted - 1 - i) : 0,
        resetMs: t.resetMs,
        retryAfterMs: i < t.granted ? 0 : Math.max(t.retryAfterMs, 1),
      }),
    );
  }

  private async serveLeased(b: Bucket, batch: Waiter[], now: number): Promise<void> {
    this.rollPool(b, now);
    let exhausted = false;
    if (b.pool < batch.length) {
      const asked = this.blockSize(b, batch.length - b.pool, now);
      const t = await this.takeShared(b, asked, now);
      this.addToPool(b, t, t.granted, now);
      // etcd granted less than asked: the shared bucket has nothing more for this window.
      exhausted = t.granted < asked;
    }
    const again: Waiter[] = [];
    for (const w of batch) {
      if (b.pool >= 1) {
        b.pool -= 1;
        this.answered(b, w).resolve(this.pooledGrant(b, now));
      } else if (!exhausted && (w.rounds = (w.rounds ?? 0) + 1) <= MAX_LEASED_ROUNDS) {
        // Requests that arrived while the block was being taken were served from the pool this
        // batch was counting on: the bucket is not empty, so take another block for the rest.
        again.push(w);
      } else {
        const p = peek(b.params, b.state, now);
        this.answered(b, w).resolve({ allowed: false, limit: b.rule.limit, remaining: 0, resetMs: p.resetMs, retryAfterMs: Math.max(p.retryAfterMs, 1) });
      }
    }
    if (again.length) b.waiting.unshift(...again);
  }

  /**
   * Whether to take the next block now, in the background: the pool holds less than
   * PREFETCH_LEAD_MS of this replica's traffic, the window has more than twice that to run, the
   * replicas' traffic at this replica's rate would use at most half of the limit in a window, and
   * the shared budget last seen could give every replica two such blocks. A limit that traffic
   * can reach takes blocks only for requests that wait, as before, so that no token is stranded
   * in a pool while another replica is refused.
   */
  private wantsPrefetch(b: Bucket, now: number): boolean {
    if (b.pool >= b.rate * PREFETCH_LEAD_MS) return false;
    const epochLeftMs = (windowIndex(b.params.perMs, now) + 1) * b.params.perMs - now;
    if (epochLeftMs <= 2 * PREFETCH_LEAD_MS) return false;
    return this.roomForBackgroundBlocks(b, now, epochLeftMs);
  }

  /**
   * Whether to take the next window's first block now: the window ends within LOOKAHEAD_MS (or a
   * quarter of the window), no block is held for the next window yet, and the traffic stays as far
   * below the limit as wantsPrefetch asks, measured against the next window's budget.
   */
  private wantsLookahead(b: Bucket, now: number): boolean {
    const next = windowIndex(b.params.perMs, now) + 1;
    if (b.aheadEpoch >= next || b.poolEpoch >= next) return false;
    if (now < (next - 1) * b.params.perMs + lookaheadOffsetMs(b.params.perMs)) return false;
    return this.roomForBackgroundBlocks(b, next * b.params.perMs, b.params.perMs);
  }

  /**
   * What background takes (prefetch, look-ahead) ask: a known rate, a window (not a token bucket),
   * the replicas' traffic at this replica's rate using at most half of the limit in a window, and a
   * budget at `at` that could give every replica two blocks of `windowLeftMs` of traffic.
   */
  private roomForBackgroundBlocks(b: Bucket, at: number, windowLeftMs: number): boolean {
    if (this.leaving || b.rate <= 0 || b.params.algorithm === 'token-bucket') return false;
    const replicas = Math.max(1, this.opts.replicas());
    if (2 * b.rate * b.params.perMs * replicas > b.rule.limit) return false;
    const block = b.rate * Math.min(BLOCK_TARGET_MS, windowLeftMs);
    return peek(b.params, b.state, at).remaining >= 2 * block * replicas;
  }

  /** Takes the next block while the pool still serves; requests that run out meanwhile wait for it. */
  private prefetch(b: Bucket, now: number): Promise<void> {
    return this.inBackground(b, 'background leased block take failed', async () => {
      const t = await this.takeShared(b, this.blockSize(b, 1, now, now, true), now);
      // leave() began while the block was being taken: what the requests waiting now need is kept,
      // the rest goes back to etcd, as leave() gave the pool back.
      const keep = this.leaving ? Math.min(t.granted, b.waiting.length) : t.granted;
      this.addToPool(b, t, keep, now);
      if (keep < t.granted) this.track(this.giveBackLater(b, now, t.granted - keep));
    });
  }

  /**
   * A take no request waits on yet (prefetch, look-ahead), holding the bucket busy: requests that
   * run out of tokens meanwhile wait for it, and are served by drain() when it is done. If it
   * fails, they are refused with it, as drain() does, so that their fallback answers now instead
   * of after a second etcd timeout.
   */
  private async inBackground(b: Bucket, failure: string, work: () => Promise<void>): Promise<void> {
    b.busy = true;
    try {
      await work();
    } catch (e) {
      this.opts.logger.debug({ limit: b.rule.id, err: (e as Error).message }, failure);
      for (const w of b.waiting.splice(0)) this.answered(b, w).reject(e);
    } finally {
      b.busy = false;
      if (b.waiting.length > 0) void this.drain(b);
    }
  }

  /**
   * Takes the first block of the next window ahead of it (counted apart in etcd until it begins)
   * and holds it until then, for `b` and, the first time in a window, for every other bucket of the
   * same window length that had traffic in it and qualifies (wantsLookahead): a bucket with a few
   * requests a second may see none in the window's last LOOKAHEAD_MS, and its first request of the
   * next window would otherwise wait on etcd. The takes go out together, LOOKAHEAD_BATCH_KEYS
   * buckets to a transaction, all transactions at once, so that a thousand buckets cost a replica
   * sixteen etcd calls a window rather than a thousand, and each bucket one round trip. Requests that run out of a pool meanwhile wait for its take, then take
   * their own block of the current window.
   */
  private lookahead(b: Bucket, now: number): void {
    const window = windowIndex(b.params.perMs, now);
    this.queueAhead(b, now);
    if (this.swept.get(b.params.perMs) === window) return;
    this.swept.set(b.params.perMs, window);
    // The other buckets are looked for once this request has been answered (queueAhead's turn).
    this.sweeps.push({ b, now });
  }

  /** Queues every other bucket that wants its block ahead now, for the same batch as `b`. */
  private sweep(b: Bucket, now: number): void {
    for (const other of this.active) {
      if (other.poolEpoch < this.epochAt(other, now)) {
        // No request since an earlier window: the next one brings it back.
        this.active.delete(other);
      } else if (other !== b && !other.busy && other.params.perMs === b.params.perMs && this.wantsLookahead(other, now)) {
        this.queueAhead(other, now);
      }
    }
  }

  /** Holds `b` busy (as a take no request waits on) until the next batch of takes ahead is done. */
  private queueAhead(b: Bucket, now: number): void {
    b.busy = true;
    this.aheadQueue.push({ b, now });
    if (this.aheadQueue.length > 1) return;
    // Everything queued in this turn of the event loop goes out together, all its transactions at
    // once: a bucket waits one round trip for its block, however many buckets there are.
    setImmediate(() => {
      for (const { b: trigger, now: at } of this.sweeps.splice(0)) this.sweep(trigger, at);
      const queued = this.aheadQueue;
      this.aheadQueue = [];
      for (let i = 0; i < queued.length; i += LOOKAHEAD_BATCH_KEYS) this.track(this.takeAheadBatch(queued.slice(i, i + LOOKAHEAD_BATCH_KEYS)));
    });
  }

  /**
   * One compare-and-swap over every bucket of the batch: all their keys written if none moved since
   * this replica saw it, none otherwise, in which case the answer carries every key's current state
   * and the batch is tried again from it (another replica wrote; the system progressed).
   */
  private async takeAheadBatch(queued: Array<{ b: Bucket; now: number }>): Promise<void> {
    const { client } = this.opts;
    const guard = this.opts.guard ?? ((op) => op());
    const batch = queued.map((q) => q.b);
    const takes = queued.map(({ b, now }) => {
      const target = windowIndex(b.params.perMs, now) + 1;
      const start = target * b.params.perMs;
      // Ahead of the target window while the key is still before it; in it, once another replica
      // has moved the key on (its clock passed the boundary first, or a lost compare-and-swap finds
      // it there), as an ordinary take at the window's start.
      const how = (state: BucketState | undefined, n: number): Take =>
        state && 'w' in state && state.w >= target ? take(b.params, state, n, start) : takeAhead(b.params, state, n, now);
      return { b, now, target, n: this.blockSize(b, 1, now, start, true), how };
    });
    try {
      let pending = takes;
      for (let attempt = 0; pending.length > 0; attempt++) {
        if (attempt === MAX_CAS_ATTEMPTS) throw new NotAnEtcdFailure(`${pending.length} leased look-ahead takes: ${MAX_CAS_ATTEMPTS} compare-and-swap attempts lost to other writers`);
        const leases = await Promise.all(pending.map((x) => this.leases.leaseFor(keyTtlMs(x.b.params), x.now)));
        // Each take from the state last seen and compared against that state's revision, read
        // together after the wait for the leases: another path (a charge, a give-back) may have
        // written the key meanwhile, and a write computed from the state before it would undo it.
        const ops = pending.map((x, i) => ({ x, lease: leases[i]!, mod: x.b.mod, t: x.how(x.b.state, x.n) }));
        // A bucket etcd has nothing more for (as last seen) writes nothing.
        const writes = ops.filter((o) => o.t.granted > 0 || (o.mod === '0' && o.x.b.state === undefined));
        pending = writes.map((o) => o.x);
        if (writes.length === 0) break;
        const [first, ...rest] = writes;
        let txn = client.if(first!.x.b.key, 'Mod', '==', first!.mod);
        for (const o of rest) txn = txn.and(o.x.b.key, 'Mod', '==', o.mod);
        let res;
        try {
          res = await guard(
            () =>
              txn
                .then(...writes.map((o) => client.put(o.x.b.key).value(JSON.stringify(o.t.state)).lease(o.lease)))
                .else(...writes.map((o) => client.get(o.x.b.key)))
                .commit(),
            'cas',
          );
        } catch (e) {
          for (const o of writes) this.leases.dropIfGone(o.lease, e);
          throw e;
        } finally {
          // Every bucket of the batch was held for this call, whether or not its key is in it.
          for (const b of batch) b.settled += 1;
        }
        if (res.succeeded) {
          this.stats.writes += writes.length;
          for (const { x, t } of writes) {
            x.b.state = t.state;
            x.b.mod = String(res.header.revision);
            this.keepAhead(x.b, t, x.target);
          }
          break;
        }
        this.stats.conflicts += 1;
        pending.forEach((x, i) => learnState(x.b, res.responses[i]));
      }
    } catch (e) {
      this.opts.logger.debug({ limits: [...new Set(batch.map((b) => b.rule.id))], err: (e as Error).message }, 'leased look-ahead block take failed');
      // As inBackground: requests that ran out meanwhile are refused with it, so that their
      // fallback answers now rather than after a second etcd timeout.
      for (const b of batch) for (const w of b.waiting.splice(0)) this.answered(b, w).reject(e);
    } finally {
      for (const b of batch) {
        b.busy = false;
        if (b.waiting.length > 0) void this.drain(b);
      }
    }
  }

  /** Where the tokens of a take ahead go: held for their window, its pool if it has begun, or back. */
  private keepAhead(b: Bucket, t: Take, target: number): void {
    if (t.granted === 0) return;
    const w = (t.state as { w: number }).w;
    // The window the tokens are counted in.
    const epoch = w >= target ? w : w + 1;
    if (this.leaving) this.track(this.giveBackLater(b, epoch * b.params.perMs, t.granted));
    else if (epoch > b.poolEpoch) {
      b.ahead = epoch === b.aheadEpoch ? b.ahead + t.granted : t.granted;
      b.aheadEpoch = epoch;
    } else if (epoch === b.poolEpoch) {
      // The window began while the take was on its way: the block is its pool now.
      b.pool += t.granted;
      b.pooled += t.granted;
    }
  }

  private pooledGrant(b: Bucket, now: number): RateLimitGrant {
    const p = peek(b.params, b.state, now);
    return { allowed: true, limit: b.rule.limit, remaining: p.remaining + Math.floor(b.pool), resetMs: p.resetMs, retryAfterMs: 0 };
  }

  /**
   * Pool tokens belong to a window (or, for a token bucket, a short epoch) and end with it. The
   * pool only moves forward: a late caller with an earlier time (a refund, a batch that waited on
   * etcd across the boundary) never empties the current window's pool.
   */
  private rollPool(b: Bucket, now: number): void {
    this.rollPoolTo(b, this.epochAt(b, now));
  }

  private rollPoolTo(b: Bucket, epoch: number): void {
    if (epoch > b.poolEpoch) {
      // A block taken ahead for this window becomes its pool; one for a window already gone lapses.
      const carried = b.aheadEpoch === epoch ? b.ahead : 0;
      b.pool = carried;
      b.pooled = carried;
      b.poolEpoch = epoch;
      if (b.aheadEpoch <= epoch) {
        b.ahead = 0;
        b.aheadEpoch = -1;
      }
    }
  }

  private epochAt(b: Bucket, now: number): number {
    return b.params.algorithm === 'token-bucket' ? Math.floor(now / BUCKET_POOL_MS) : windowIndex(b.params.perMs, now);
  }

  /**
   * Adds `n` tokens of take `t` to the pool of the window etcd counted them in: a take that started
   * before a boundary may be counted after it (another replica had moved the key on), and its
   * tokens must not be dropped with the old window's pool, nor spent in it.
   */
  private addToPool(b: Bucket, t: Take, n: number, now: number): void {
    const epoch = b.params.algorithm === 'token-bucket' ? this.epochAt(b, now) : (t.state as { w: number }).w;
    this.rollPoolTo(b, epoch);
    if (epoch !== b.poolEpoch) return; // the pool has already moved past it: the tokens lapse
    b.pool += n;
    b.pooled += n;
  }

  /** Gives tokens back to etcd without holding anyone up; a failure only leaves them to lapse. */
  private async giveBackLater(b: Bucket, now: number, n: number): Promise<void> {
    try {
      if (await this.giveBackShared(b, now, n)) this.givenBackLate += n;
    } catch (e) {
      this.opts.logger.warn({ limit: b.rule.id, tokens: n, err: (e as Error).message }, 'could not give leased tokens back to etcd: they lapse with their window');
    }
  }

  /**
   * How many tokens a leased replica asks for (see the header comment), for the window of `at`.
   * A block taken in the background (prefetch, look-ahead), which only happens where traffic stays
   * far below the limit, carries room for the traffic's ups and downs: about two standard
   * deviations of as many random arrivals, plus one. Without it, a bucket with ten requests a
   * window runs out of its block in most windows, and a request waits on etcd for the rest.
   */
  private blockSize(b: Bucket, needed: number, now: number, at = now, background = false): number {
    if (this.leaving) return needed;
    const elapsed = now - b.rateSince;
    if (elapsed >= 50) {
      const observed = b.arrivals / elapsed;
      b.rate = b.rate === 0 ? observed : 0.5 * b.rate + 0.5 * observed;
      b.arrivals = 0;
      b.rateSince = now;
    }
    const epochLeftMs =
      b.params.algorithm === 'token-bucket'
        ? BUCKET_POOL_MS - (at % BUCKET_POOL_MS)
        : (windowIndex(b.params.perMs, at) + 1) * b.params.perMs - at;
    const expected = b.rate * Math.min(BLOCK_TARGET_MS, epochLeftMs);
    const wanted = Math.ceil(background ? expected + 2 * Math.sqrt(expected) + 1 : expected);
    const available = peek(b.params, b.state, at).remaining;
    const fairShare = Math.floor(available / Math.max(1, this.opts.replicas()));
    return Math.max(needed, Math.min(wanted, fairShare));
  }

  /** One CAS loop: take n tokens from the shared bucket (or fewer, or none); `how`: take, or takeAhead. */
  private async takeShared(b: Bucket, n: number, now: number, how: typeof take = take): Promise<Take> {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const t = how(b.params, b.state, n, now);
      if (t.granted === 0) {
        if (b.mod !== '0' || b.state !== undefined) {
          if (how === take) this.stats.cachedDenials += 1;
          return t;
        }
      }
      if (await this.compareAndSwap(b, t.state, now)) return t;
      this.stats.conflicts += 1;
    }
    throw new NotAnEtcdFailure(`rate limit ${b.rule.id}: ${MAX_CAS_ATTEMPTS} compare-and-swap attempts lost to other writers`);
  }

  /** Gives `n` tokens back to the shared bucket; false if its state is unknown or every attempt lost. */
  private async giveBackShared(b: Bucket, now: number, n = 1): Promise<boolean> {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      if (!b.state) return false;
      const next = giveBack(b.params, b.state, n, now);
      if (next === b.state) return false; // counted in a window that is over: nothing to give back
      if (await this.compareAndSwap(b, next, now)) return true;
    }
    return false;
  }

  /** Writes `next` if the key is still at the revision we last saw; otherwise learns the current one. */
  private async compareAndSwap(b: Bucket, next: BucketState, now: number): Promise<boolean> {
    const { client } = this.opts;
    const guard = this.opts.guard ?? ((op) => op());
    // The revision of the state `next` was computed from, taken before the wait for the lease: if
    // another path writes the key meanwhile, this write must lose, not undo it.
    const mod = b.mod;
    const lease = await this.leases.leaseFor(keyTtlMs(b.params), now);
    let res;
    try {
      res = await guard(() =>
        client
          .if(b.key, 'Mod', '==', mod)
          .then(client.put(b.key).value(JSON.stringify(next)).lease(lease))
          .else(client.get(b.key))
          .commit(),
        'cas',
      );
    } catch (e) {
      this.leases.dropIfGone(lease, e);
      throw e;
    } finally {
      b.settled += 1;
    }
    if (res.succeeded) {
      this.stats.writes += 1;
      b.state = next;
      b.mod = String(res.header.revision);
      return true;
    }
    learnState(b, res.responses[0]);
    return false;
  }

}

/** How long a bucket's state matters after its last write. */
function keyTtlMs(p: LimitParams): number {
  switch (p.algorithm) {
    case 'fixed-window':
      return p.perMs + KEY_TTL_SLACK_MS;
    case 'sliding-window':
      return 2 * p.perMs + KEY_TTL_SLACK_MS;
    case 'token-bucket':
      return Math.ceil(((p.burst ?? p.limit) / p.limit) * p.perMs) + KEY_TTL_SLACK_MS;
  }
}

/** `<prefix>/ratelimit/<policy>/<rule>/<hash of the key>`: bounded length whatever the key. */
export function etcdKey(prefix: string, rule: CompiledRateLimit, key: string): string {
  const digest = createHash('sha256').update(key).digest('base64url').slice(0, 22);
  return `${prefix}/ratelimit/${rule.policy}/${rule.name}/${digest}`;
}

/** What a lost compare-and-swap's `get` answered for a bucket's key: its state and revision ("0": no key). */
function learnState(b: Bucket, answer: { response_range?: { kvs?: Array<{ value: Buffer; mod_revision: string }> | null } | null } | undefined): void {
  const kv = answer?.response_range?.kvs?.[0];
  b.state = kv ? parseState(kv.value.toString()) : undefined;
  b.mod = kv ? String(kv.mod_revision) : '0';
}

/** A value that is not a bucket state (written by hand, say) counts as an empty bucket. */
function parseState(text: string): BucketState | undefined {
  try {
    const v = JSON.parse(text) as BucketState;
    if (typeof v === 'object' && v !== null && (('w' in v && 'c' in v) || ('k' in v && 't' in v))) return v;
  } catch {
    // fall through
  }
  return undefined;
}
