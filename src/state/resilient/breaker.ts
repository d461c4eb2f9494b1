// One circuit breaker (opossum) between this replica and etcd. Every per-request etcd operation
// goes through it: after enough of them fail or time out it opens, and for `resetTimeoutMs` the
// decisions use their local fallback at once instead of waiting on etcd; then a single probe is let
// through (half-open) and a success closes it again. Every transition is logged and counted.
import CircuitBreaker from 'opossum';
import type { Logger } from '../../observability/logger';
import { NotAnEtcdFailure } from '../etcd/client';

/** What an etcd operation run through the breaker is, for metrics; the breaker's own probe is 'probe'. */
export type BreakerOperation = 'cas' | 'lease_grant' | 'nat_assign' | 'probe';

export interface BreakerSettings {
  /** One etcd operation may take this long before it counts as failed and the fallback answers. */
  timeoutMs: number;
  /** Failed share of recent operations (percent) that opens the breaker... */
  errorThresholdPercentage: number;
  /** ...once at least this many operations were seen in the rolling window. */
  volumeThreshold: number;
  /** How long the breaker stays open before it lets one probe through. */
  resetTimeoutMs: number;
  /** The rolling window the error share is measured over. */
  rollingWindowMs: number;
  /**
   * Failures in a row that open the breaker whatever the share: after a busy minute of successes,
   * a frozen etcd must not have to fail as many requests again before the share tips.
   */
  consecutiveFailures: number;
  /**
   * After a first failure, the breaker asks etcd a cheap read with this much shorter deadline (when
   * it has a probe; 0: never): if that fails too, it opens at once rather than wait for another
   * request's full timeout, and if etcd answers, the one slow call was not an outage.
   */
  confirmTimeoutMs: number;
}

/**
 * Chosen so that a frozen etcd costs a request at most one 100 ms timeout and opens the breaker
 * about 150 ms after it froze: the first timed-out operation is confirmed by a 50 ms read (else
 * by 2 failed operations in a row), or it opens when half of the last 5 s of operations failed,
 * while ordinary latency on a busy node (a few ms, tens under load) never trips it. Envoy's own
 * deadline for a decision is 250 ms, so the fallback answers in time.
 */
export const DEFAULT_BREAKER: BreakerSettings = {
  timeoutMs: 100,
  errorThresholdPercentage: 50,
  volumeThreshold: 3,
  resetTimeoutMs: 2000,
  rollingWindowMs: 5000,
  consecutiveFailures: 2,
  confirmTimeoutMs: 50,
};

export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerStats {
  state: BreakerState;
  opened: number;
  halfOpened: number;
  closed: number;
  /** Operations answered by a fallback because etcd failed, timed out, or the breaker was open. */
  fallbacks: number;
  /** When the breaker last opened (ms since epoch). */
  openedAt?: number;
}

export class EtcdBreaker {
  readonly stats: BreakerStats = { state: 'closed', opened: 0, halfOpened: 0, closed: 0, fallbacks: 0 };
  private readonly breaker: CircuitBreaker<[() => Promise<unknown>], unknown>;
  private readonly listeners: Array<(state: BreakerState) => void> = [];
  private confirming = false;
  /** Rejecters of operations still waiting on etcd: the breaker opening turns them away at once. */
  private readonly waiting = new Set<(e: Error) => void>();

  constructor(
    private readonly logger: Logger,
    readonly settings: BreakerSettings = DEFAULT_BREAKER,
    /**
     * A cheap etcd read run when the breaker goes half-open, so that it closes (and local state is
     * reconciled) as soon as etcd answers, whether or not requests come in to probe it.
     */
    private readonly probe?: () => Promise<unknown>,
  ) {
    this.breaker = new CircuitBreaker((op: () => Promise<unknown>) => op(), {
      timeout: settings.timeoutMs,
      errorThresholdPercentage: settings.errorThresholdPercentage,
      volumeThreshold: settings.volumeThreshold,
      resetTimeout: settings.resetTimeoutMs,
      rollingCountTimeout: settings.rollingWindowMs,
      errorFilter: (err: unknown) => err instanceof NotAnEtcdFailure,
    });
    let inARow = 0;
    const failed = () => {
      inARow += 1;
      if (!this.breaker.closed) return;
      if (inARow >= settings.consecutiveFailures) this.breaker.open();
      else if (inARow === 1) this.confirm();
    };
    // A timeout is reported as a failure too.
    this.breaker.on('failure', failed);
    this.breaker.on('success', () => (inARow = 0));
    this.breaker.on('open', () => {
      inARow = 0;
      this.transition('open');
      // After the operation that opened it has settled with its own error.
      const turnedAway = [...this.waiting];
      this.waiting.clear();
      setImmediate(() => {
        for (const reject of turnedAway) reject(Object.assign(new Error('etcd breaker opened while the operation waited'), { code: 'EOPENBREAKER' }));
      });
    });
    this.breaker.on('halfOpen', () => this.transition('half-open'));
    this.breaker.on('close', () => this.transition('closed'));
  }

  get state(): BreakerState {
    return this.stats.state;
  }

  get isOpen(): boolean {
    return this.stats.state === 'open';
  }

  /** Decisions are (or may be) coming from local state: open, or half-open and not yet proven. */
  get isDegraded(): boolean {
    return this.stats.state !== 'closed';
  }

  /**
   * Runs an etcd operation through the breaker; rejects at once while open, and when the breaker
   * opens while the operation waits (its caller falls back then rather than at its own timeout).
   * `operation` names it for whoever measures operations (a subclass); the breaker ignores it.
   */
  run<T>(op: () => Promise<T>, _operation?: BreakerOperation): Promise<T> {
    const fired = this.breaker.fire(op) as Promise<T>;
    if (!this.breaker.closed) return fired;
    return new Promise<T>((resolve, reject) => {
      this.waiting.add(reject);
      fired.then(resolve, reject).finally(() => this.waiting.delete(reject));
    });
  }

  /** Counts an answer given by a fallback. */
  fellBack(): void {
    this.stats.fallbacks += 1;
  }

  onTransition(listener: (state: BreakerState) => void): void {
    this.listeners.push(listener);
  }

  shutdown(): void {
    this.breaker.shutdown();
  }

  /** One failure seen while closed: a quick read tells an outage from one slow call. */
  private confirm(): void {
    const { probe } = this;
    const ms = this.settings.confirmTimeoutMs;
    if (!probe || ms <= 0 || this.confirming) return;
    this.confirming = true;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    });
    Promise.race([probe(), deadline]).then(
      () => undefined,
      (e: unknown) => {
        if (!this.breaker.closed) return;
        this.logger.warn({ breaker: 'etcd', err: (e as Error).message }, 'etcd failed an operation and the confirming read');
        this.breaker.open();
      },
    ).finally(() => {
      clearTimeout(timer);
      this.confirming = false;
    });
  }

  private transition(state: BreakerState): void {
    this.stats.state = state;
    const counts = () => ({ opened: this.stats.opened, halfOpened: this.stats.halfOpened, closed: this.stats.closed, fallbacks: this.stats.fallbacks });
    if (state === 'open') {
      this.stats.opened += 1;
      this.stats.openedAt = Date.now();
      this.logger.warn({ breaker: 'etcd', state, resetTimeoutMs: this.settings.resetTimeoutMs, ...counts() }, 'etcd breaker open: deciding from local state');
    } else if (state === 'half-open') {
      this.stats.halfOpened += 1;
      this.logger.info({ breaker: 'etcd', state, ...counts() }, 'etcd breaker half-open: probing etcd');
      if (this.probe) void this.run(this.probe).catch(() => undefined);
    } else {
      this.stats.closed += 1;
      const outageMs = this.stats.openedAt ? Date.now() - this.stats.openedAt : undefined;
      this.logger.info({ breaker: 'etcd', state, outageMs, ...counts() }, 'etcd breaker closed: back to shared state');
    }
    for (const l of this.listeners) l(state);
  }
}
