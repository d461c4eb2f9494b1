// The etcd breaker with its operations timed into the metrics.
import { EtcdBreaker, type BreakerOperation, type BreakerSettings } from '../state/resilient/breaker';
import type { Logger } from './logger';
import type { EtcdOperation, MiddleboxMetrics } from './metrics';

/**
 * The breaker, with every etcd operation it runs timed into the metrics by operation. Rate-limit
 * calls name their operation through the store's guard (runAs); the half-open probe is known by
 * identity; NAT's create-if-absent transactions name theirs in run(). An operation that names
 * nothing counts as 'other', never as another operation.
 */
export class MeteredBreaker extends EtcdBreaker {
  constructor(
    logger: Logger,
    settings: BreakerSettings,
    private readonly probeRead: () => Promise<unknown>,
    private readonly metrics: Pick<MiddleboxMetrics, 'timeEtcd'>,
  ) {
    super(logger, settings, probeRead);
  }

  /** Named by the caller; the breaker's own probe by identity; anything else unnamed counts as 'other'. */
  override run<T>(op: () => Promise<T>, operation?: BreakerOperation): Promise<T> {
    return this.runAs(operation ?? (op === this.probeRead ? 'probe' : 'other'), op);
  }

  runAs<T>(operation: EtcdOperation, op: () => Promise<T>): Promise<T> {
    return this.metrics.timeEtcd(operation, () => super.run(op));
  }
}
