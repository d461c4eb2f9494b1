// A cap on the distinct keys one rate limit tracks on a replica (`serve --max-keys-per-rate-limit`).
// A limit keyed by what a client chooses (a header, a path) would otherwise give every invented
// value a bucket of its own, and push the buckets of other limits out of the replica's
// --max-rate-limit-keys LRU (a `local` limit's evicted bucket starts afresh). Past the cap, the
// requests of a new key do not get a bucket: they all share the limit's one overflow bucket, so the
// limit still holds for them, together (conservative: they may be denied sooner than their own
// bucket would have). Each such request is counted (`overflows`, the metric
// middlebox_ratelimit_keys_overflow_total) and a warning is logged, at most once a minute per limit.
//
// A key keeps its slot while it is in use, and gives it up once its bucket no longer matters (the
// algorithm's state lifetime after its last request): a burst of new keys never takes the slots of
// active ones. For a key already tracked, which is nearly every request, the cost is a Map lookup.
import { stateLifetimeMs } from '../../middlebox/ratelimit/algorithms';
import type { Logger } from '../../observability/logger';
import type { CompiledRateLimit, Consistency } from '../../policy/types';
import type { RateLimitGrant, RateLimitPort, RateLimitRequest } from '../port';

export const DEFAULT_MAX_KEYS_PER_RULE = 10_000;

/**
 * The bucket key that every key past the cap shares. Request keys are header values, addresses,
 * hosts and paths, which never hold a NUL (Envoy refuses one in a header), so none collides with it.
 */
export const OVERFLOW_KEY = '\u0000overflow';

/** A tracked key's last-seen time is written at most this often, so a busy key costs one lookup. */
const REFRESH_MS = 1000;
/** Limits that have seen no request for their keys' lifetime are forgotten; looked for this often. */
const SWEEP_EVERY_MS = 60_000;
/** A limit's overflow warning, at most this often. */
const LOG_EVERY_MS = 60_000;

export interface KeyCapOptions {
  /** Distinct keys per limit (default DEFAULT_MAX_KEYS_PER_RULE). */
  maxKeysPerRule?: number;
  logger?: Logger;
}

/** Requests whose key was past the cap, by the limit's consistency (a fixed set: metric labels). */
export type OverflowCounts = Record<Consistency, number>;

/** The keys of one limit (by its id: they outlive policy reloads). */
class RuleKeys {
  /** Key → when it was last seen (to REFRESH_MS); Map order is oldest first, near enough. */
  readonly seen = new Map<string, number>();
  /** How long a key may go unseen before its slot may go to another key. */
  idleMs: number;
  lastUsed = 0;
  /** No key was seen before this (a lower bound): until it is idle, there is no room to make. */
  oldestAt = -Infinity;
  /** Overflowed requests since the last warning. */
  unlogged = 0;
  loggedAt = -Infinity;

  constructor(public rule: CompiledRateLimit) {
    this.idleMs = idleMs(rule);
  }
}

export class KeyCappedRateLimits implements RateLimitPort {
  readonly maxKeysPerRule: number;
  readonly overflows: OverflowCounts = { strict: 0, leased: 0, local: 0 };
  private readonly rules = new Map<string, RuleKeys>();
  private nextSweep = 0;

  constructor(
    private readonly inner: RateLimitPort,
    private readonly opts: KeyCapOptions = {},
  ) {
    this.maxKeysPerRule = opts.maxKeysPerRule ?? DEFAULT_MAX_KEYS_PER_RULE;
  }

  /** Keys tracked, over every limit (for tests). */
  get trackedKeys(): number {
    let n = 0;
    for (const keys of this.rules.values()) n += keys.seen.size;
    return n;
  }

  /**
   * Past the cap, `req.key` becomes OVERFLOW_KEY before the request goes on, so that the refund
   * the engine may make with the same request goes to the same bucket.
   */
  consume(req: RateLimitRequest): RateLimitGrant | Promise<RateLimitGrant> {
    // Without `by` a limit has one bucket: nothing to cap.
    if (req.rule.keyParts.length > 0) this.admit(req);
    return this.inner.consume(req);
  }

  refund(req: RateLimitRequest): void {
    this.inner.refund(req);
  }

  private admit(req: RateLimitRequest): void {
    const { rule, now } = req;
    if (now >= this.nextSweep) this.sweep(now);
    let keys = this.rules.get(rule.id);
    if (keys === undefined) {
      keys = new RuleKeys(rule);
      this.rules.set(rule.id, keys);
    } else if (keys.rule !== rule) {
      // Reloaded: `per` or the algorithm may have changed.
      keys.rule = rule;
      keys.idleMs = idleMs(rule);
    }
    keys.lastUsed = now;
    const seen = keys.seen.get(req.key);
    if (seen !== undefined) {
      if (now - seen >= REFRESH_MS) {
        keys.seen.delete(req.key);
        keys.seen.set(req.key, now);
      }
      return;
    }
    if (keys.seen.size >= this.maxKeysPerRule && !makeRoom(keys, now)) {
      this.overflow(keys, req);
      return;
    }
    if (keys.seen.size === 0) keys.oldestAt = now;
    keys.seen.set(req.key, now);
  }

  private overflow(keys: RuleKeys, req: RateLimitRequest): void {
    req.key = OVERFLOW_KEY;
    this.overflows[req.rule.consistency] += 1;
    keys.unlogged += 1;
    if (req.now - keys.loggedAt < LOG_EVERY_MS) return;
    this.opts.logger?.warn(
      { rule: req.rule.id, maxKeysPerRateLimit: this.maxKeysPerRule, overflowed: keys.unlogged },
      'rate limit has more distinct keys than --max-keys-per-rate-limit: requests of new keys share its overflow bucket',
    );
    keys.loggedAt = req.now;
    keys.unlogged = 0;
  }

  /** Forgets limits none of whose keys matter any more (a limit removed from the policy, say). */
  private sweep(now: number): void {
    this.nextSweep = now + SWEEP_EVERY_MS;
    for (const [id, keys] of this.rules) {
      if (now - keys.lastUsed > keys.idleMs) this.rules.delete(id);
    }
  }
}

/** Drops the keys idle for longer than their lifetime, oldest first; true when one slot or more came free. */
function makeRoom(keys: RuleKeys, now: number): boolean {
  // Nothing can be idle yet: no iteration (and no allocation) while new keys keep overflowing.
  if (now - keys.oldestAt <= keys.idleMs) return false;
  let freed = false;
  for (const [key, at] of keys.seen) {
    if (now - at <= keys.idleMs) {
      keys.oldestAt = at;
      return freed;
    }
    keys.seen.delete(key);
    freed = true;
  }
  keys.oldestAt = now;
  return freed;
}

/**
 * A key's bucket lifetime, plus the refresh slack (a key's recorded time may be up to REFRESH_MS
 * older than its last request).
 */
function idleMs(rule: CompiledRateLimit): number {
  return stateLifetimeMs(rule) + REFRESH_MS;
}
