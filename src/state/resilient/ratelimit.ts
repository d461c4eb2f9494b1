// Rate limits that keep deciding when etcd is slow or gone. `strict` and `leased` limits ask etcd,
// whose calls go through the breaker; when one fails, times out or the breaker is open, the request is
// decided by the local approximation instead (the limit ÷ the last known number of live replicas,
// counted in memory) and the tokens it admits are remembered. When the breaker closes, those tokens
// are written back into the shared buckets (for windows that have not ended yet, and a sliding
// window's previous one, which still weighs; a token bucket's always), so the shared count shows
// what was really admitted, and decisions return to their mode.
//
// Bound while degraded: each replica admits at most its share, so all of them together admit about
// the limit when the load balancer spreads requests evenly, and at most the limit plus one share per
// replica that the others did not count; a replica partitioned alone admits its share, not the limit.
import { windowIndex } from '../../middlebox/ratelimit/algorithms';
import type { Logger } from '../../observability/logger';
import type { EtcdRateLimitStore } from '../etcd/ratelimit';
import type { RateLimitGrant, RateLimitPort, RateLimitRequest } from '../port';
import { BoundedMap } from '../ratelimit/bounded-map';
import type { LocalRateLimitStore } from '../ratelimit/local';
import { bucketId, DEFAULT_MAX_BUCKETS } from '../ratelimit/local';
import type { EtcdBreaker } from './breaker';
import { WriteBack } from './write-back';

/** Write-back passes after an outage before decisions return to etcd with some debt still owed. */
const WRITE_BACK_PASSES = 3;

/** What a bucket's fallback admitted and etcd has not counted yet. */
interface Owed {
  /** The latest request that owed (its rule and key; its time is not used). */
  req: RateLimitRequest;
  /**
   * Tokens per window they were admitted in (a token bucket: one entry, TOKEN_BUCKET_WINDOW); only
   * the latest two windows, the ones a write-back can still count in (a sliding window weighs the
   * one before the current).
   */
  byWindow: Map<number, number>;
}

const TOKEN_BUCKET_WINDOW = -1;

export class ResilientRateLimitStore implements RateLimitPort {
  /**
   * Tokens admitted by the fallback, per bucket, not yet written back to etcd. Bounded as the local
   * buckets are: a long outage over many keys cannot grow it without end (a bucket dropped to make
   * room loses its write-back, as its local count is lost too).
   */
  private readonly owed = new BoundedMap<Owed>(DEFAULT_MAX_BUCKETS);
  /** Write-back passes: one at a time, or two could charge the same debt twice. */
  private readonly writeBack: WriteBack<boolean>;
  /** Tokens written back after outages (for tests and metrics). */
  reconciled = 0;
  /**
   * Set while the outage's tokens are being written back after the breaker closed: decisions stay
   * local until then, or fresh grants from etcd would come on top of a count that is not complete.
   */
  private writingBack = false;

  constructor(
    private readonly shared: EtcdRateLimitStore,
    private readonly local: LocalRateLimitStore,
    private readonly breaker: EtcdBreaker,
    private readonly logger: Logger,
  ) {
    this.writeBack = new WriteBack(breaker, () => this.reconcileOnce());
    breaker.onTransition((state) => {
      if (state === 'closed') void this.writeBackThenResume();
    });
  }

  get owedBuckets(): number {
    return this.owed.size;
  }

  consume(req: RateLimitRequest): RateLimitGrant | Promise<RateLimitGrant> {
    if (req.rule.consistency === 'local') return this.local.consume(req);
    // Half-open included: the breaker's own probe decides when etcd is back, so that no request's
    // token is taken in etcd and then, when the breaker turns it away, counted locally as well.
    // After it closes, decisions stay local until the outage's tokens are written back.
    if (this.breaker.isDegraded || this.writingBack) return this.fallback(req);
    // The shared store runs its etcd calls through the breaker itself (see its `guard`); a leased
    // token already in hand needs no call at all.
    const shared = this.shared.consume(req);
    return shared instanceof Promise ? shared.catch(() => this.fallback(req)) : shared;
  }

  refund(req: RateLimitRequest): void {
    if (req.rule.consistency === 'local') return this.local.refund(req);
    const owed = this.owed.get(bucketId(req));
    const window = owedWindow(req);
    const tokens = owed?.byWindow.get(window) ?? 0;
    if (owed && tokens > 0) {
      owed.byWindow.set(window, tokens - 1);
      this.local.refund(req);
      return;
    }
    if (!this.breaker.isDegraded) this.shared.refund(req);
  }

  private fallback(req: RateLimitRequest): RateLimitGrant {
    this.breaker.fellBack();
    // A single failed call need not open the breaker; its debt is then written back shortly.
    if (!this.breaker.isDegraded) this.writeBack.soon();
    // The window's count so far, as last seen in etcd, so the fallback's share is of what is left.
    const used = this.shared.sharedUsed(req);
    if (used) this.local.seed(req, used);
    const grant = this.local.consume(req);
    if (grant.allowed) this.owe(req, owedWindow(req), 1);
    return grant;
  }

  /** Adds `tokens` admitted in `window` to what `req`'s bucket owes etcd. */
  private owe(req: RateLimitRequest, window: number, tokens: number): void {
    const id = bucketId(req);
    const owed = this.owed.get(id) ?? { req, byWindow: new Map<number, number>() };
    owed.req = req;
    owed.byWindow.set(window, (owed.byWindow.get(window) ?? 0) + tokens);
    const latest = Math.max(...owed.byWindow.keys());
    for (const w of owed.byWindow.keys()) if (w < latest - 1) owed.byWindow.delete(w);
    this.owed.set(id, owed);
  }

  private async writeBackThenResume(): Promise<void> {
    this.writingBack = true;
    try {
      // Requests decided locally while a pass runs owe tokens too: write until nothing is owed, the
      // breaker opens again, or a few passes (each is one charge per bucket) did not settle it.
      for (let pass = 0; pass < WRITE_BACK_PASSES && this.owed.size > 0 && !this.breaker.isDegraded; pass++) {
        if (!(await this.reconcile())) break;
      }
    } finally {
      this.writingBack = false;
    }
  }

  /**
   * Writes the fallback's admissions back into the shared buckets once etcd answers again; false
   * when a charge failed (its debt is kept, and tried again shortly if the breaker stays closed).
   * One pass at a time: a caller during a pass gets that pass's result.
   */
  private reconcile(): Promise<boolean> {
    return this.writeBack.run();
  }

  private async reconcileOnce(): Promise<boolean> {
    const now = Date.now();
    let written = 0;
    let failed = false;
    for (const id of [...this.owed.keys()]) {
      // Taken out as it is now: tokens owed from here on go to a new entry, not lost with this one.
      const owed = this.owed.get(id);
      if (!owed) continue;
      this.owed.delete(id);
      const { rule } = owed.req;
      for (const [window, tokens] of owed.byWindow) {
        if (tokens <= 0) continue;
        // A window that has ended no longer limits anything (a sliding window's previous one still
        // does): its debt is void.
        if (window !== TOKEN_BUCKET_WINDOW && window < windowIndex(rule.perMs, now) - (rule.algorithm === 'sliding-window' ? 1 : 0)) continue;
        try {
          await this.shared.charge({ ...owed.req, now }, tokens, window === TOKEN_BUCKET_WINDOW ? undefined : window);
          written += tokens;
        } catch (e) {
          // etcd failed again: keep the debt for the next attempt.
          this.owe(owed.req, window, tokens);
          failed = true;
          this.logger.warn({ limit: rule.id, err: (e as Error).message }, 'could not write local rate-limit consumption back to etcd');
        }
      }
    }
    this.reconciled += written;
    if (written) this.logger.info({ tokens: written }, 'local rate-limit consumption written back to etcd');
    if (failed && !this.breaker.isDegraded) this.writeBack.soon();
    return !failed;
  }
}

/** The window a fallback's token counts in (a token bucket has none). */
function owedWindow(req: RateLimitRequest): number {
  return req.rule.algorithm === 'token-bucket' ? TOKEN_BUCKET_WINDOW : windowIndex(req.rule.perMs, req.now);
}
