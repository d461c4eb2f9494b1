// Consistency `local`: each replica counts in memory against its share of the limit (limit ÷ live
// replicas), so N replicas together admit about the limit with no etcd traffic at all. Also the
// fallback when etcd cannot be asked.
import { charge, giveBack, peek, take, type BucketState, type LimitParams } from '../../middlebox/ratelimit/algorithms';
import type { RateLimitGrant, RateLimitPort, RateLimitRequest } from '../port';
import { BoundedMap } from './bounded-map';

export interface LocalRateLimitOptions {
  /** How many replicas share each limit right now (from membership); at least 1. */
  replicas: () => number;
  /** Most buckets kept; the least recently used goes first. */
  maxBuckets?: number;
}

export const DEFAULT_MAX_BUCKETS = 100_000;

export class LocalRateLimitStore implements RateLimitPort {
  private readonly buckets: BoundedMap<BucketState>;

  constructor(private readonly opts: LocalRateLimitOptions) {
    this.buckets = new BoundedMap(opts.maxBuckets ?? DEFAULT_MAX_BUCKETS);
  }

  /** Buckets dropped because the cap was reached (each may let its key start afresh). */
  get evictions(): number {
    return this.buckets.evictions;
  }

  get size(): number {
    return this.buckets.size;
  }

  consume(req: RateLimitRequest): RateLimitGrant {
    const params = this.share(req);
    const id = bucketId(req);
    const t = take(params, this.buckets.get(id), 1, req.now);
    this.buckets.set(id, t.state);
    return { allowed: t.granted === 1, limit: req.rule.limit, remaining: t.remaining, resetMs: t.resetMs, retryAfterMs: t.retryAfterMs };
  }

  /**
   * Raises this window's count of a window limit to at least this replica's part of `used`, the
   * tokens the shared bucket had counted in it when last seen (all replicas together): a fallback
   * that begins mid-window then admits a share of what is left, not a share of the whole limit on
   * top of it, and so does a second fallback in the same window after etcd counted more meanwhile.
   * Never lowers the count; nothing for a token bucket.
   */
  seed(req: RateLimitRequest, used: number): void {
    if (req.rule.algorithm === 'token-bucket' || used <= 0) return;
    const id = bucketId(req);
    const state = this.buckets.get(id);
    const share = this.share(req);
    const mine = used / Math.max(1, this.opts.replicas());
    // Counted here so far, as the shared count is measured (the limit less what is left).
    const counted = share.limit - peek(share, state, req.now).remaining;
    if (mine > counted) this.buckets.set(id, charge(share, state, mine - counted, req.now));
  }

  refund(req: RateLimitRequest): void {
    const id = bucketId(req);
    const state = this.buckets.get(id);
    if (state) this.buckets.set(id, giveBack(this.share(req), state, 1, req.now));
  }

  /**
   * This replica's share of the rule: limit and burst divided by the live replicas, but never less
   * than one token, or a limit smaller than the replica count would admit nothing anywhere.
   */
  private share(req: RateLimitRequest): LimitParams {
    const n = Math.max(1, this.opts.replicas());
    const r = req.rule;
    return {
      algorithm: r.algorithm,
      perMs: r.perMs,
      limit: Math.max(1, r.limit / n),
      burst: r.burst === undefined ? undefined : Math.max(1, r.burst / n),
    };
  }
}

export function bucketId(req: RateLimitRequest): string {
  return `${req.rule.id}\u0000${req.key}`;
}
