// One decision pipeline for every protocol adapter: request attributes → firewall → rate limit →
// verdict. A request the firewall denies never reaches the rate limiter, so it consumes no quota.
// The pipeline stays synchronous unless a limit has to ask shared state.
import type { PolicySnapshot } from '../policy/types';
import type { RateLimitPort } from '../state/port';
import { decideFirewall } from './firewall/engine';
import { decideRateLimit } from './ratelimit/engine';
import type { RequestAttributes, Verdict } from './types';

const NOT_LOADED: Verdict = { allow: false, status: 503, reason: 'policy_not_loaded' };

export interface DecisionPorts {
  rateLimits: RateLimitPort;
}

/** Fail closed until the replica knows its policy: no snapshot is not the same as no policy. */
export function decide(
  snapshot: PolicySnapshot | undefined,
  req: RequestAttributes,
  ports: DecisionPorts,
  now: number,
): Verdict | Promise<Verdict> {
  if (!snapshot) return NOT_LOADED;
  const firewall = decideFirewall(snapshot, req);
  if (!firewall.allow) return firewall;
  const limited = decideRateLimit(snapshot, req, ports.rateLimits, now);
  if (limited === undefined) return firewall;
  return limited instanceof Promise ? limited.then((v) => merge(firewall, v)) : merge(firewall, limited);
}

function merge(firewall: Verdict, limited: Verdict): Verdict {
  const shadowDenials =
    firewall.shadowDenials && limited.shadowDenials
      ? [...firewall.shadowDenials, ...limited.shadowDenials]
      : firewall.shadowDenials ?? limited.shadowDenials;
  if (!limited.allow) return { ...limited, shadowDenials };
  return { ...firewall, responseHeaders: limited.responseHeaders, shadowDenials };
}
