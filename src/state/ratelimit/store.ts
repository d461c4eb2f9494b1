// The rate-limit port the pipeline uses: each limit goes to the store of its consistency mode.
import type { RateLimitGrant, RateLimitPort, RateLimitRequest } from '../port';

export class RateLimitStores implements RateLimitPort {
  constructor(
    private readonly local: RateLimitPort,
    private readonly shared: RateLimitPort,
  ) {}

  consume(req: RateLimitRequest): RateLimitGrant | Promise<RateLimitGrant> {
    return req.rule.consistency === 'local' ? this.local.consume(req) : this.shared.consume(req);
  }

  refund(req: RateLimitRequest): void {
    if (req.rule.consistency === 'local') this.local.refund(req);
    else this.shared.refund(req);
  }
}
