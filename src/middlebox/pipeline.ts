// One decision pipeline for every protocol adapter: request attributes → firewall → rate limit →
// NAT → verdict. A request the firewall denies never reaches the rate limiter (it consumes no
// quota), and only an allowed request is translated. The pipeline stays synchronous unless a limit
// or a new NAT flow has to ask shared state.
import type { PolicySnapshot } from '../policy/types';
import type { NatTablePort, RateLimitPort } from '../state/port';
import { decideFirewall } from './firewall/engine';
import { decideNat } from './nat/engine';
import { decideRateLimit } from './ratelimit/engine';
import type { NatDecision, RequestAttributes, Verdict } from './types';

const NOT_LOADED: Verdict = { allow: false, status: 503, reason: 'policy_not_loaded' };

export interface DecisionPorts {
  rateLimits: RateLimitPort;
  nat: NatTablePort;
}

export interface DecideOptions {
  /** NAT needs both directions of a request, so only ext_proc asks for it. */
  nat?: boolean;
  /**
   * The firewall and the rate limits were decided for this request already (by ext_authz, before
   * ext_proc on the same listener): only NAT is decided, and nothing is charged again.
   */
  natOnly?: boolean;
}

const ALLOWED: Verdict = { allow: true, reason: 'allowed' };

/** Fail closed until the replica knows its policy: no snapshot is not the same as no policy. */
export function decide(
  snapshot: PolicySnapshot | undefined,
  req: RequestAttributes,
  ports: DecisionPorts,
  now: number,
  opts: DecideOptions = {},
): Verdict | Promise<Verdict> {
  if (!snapshot) return NOT_LOADED;
  const translate = (v: Verdict): Verdict | Promise<Verdict> => {
    const nat = decideNat(snapshot, req, ports.nat, now);
    if (nat === undefined) return v;
    return nat instanceof Promise ? nat.then((n) => withNat(v, n)) : withNat(v, nat);
  };
  if (opts.natOnly) return opts.nat ? translate(ALLOWED) : ALLOWED;
  const firewall = decideFirewall(snapshot, req);
  if (!firewall.allow) return firewall;
  const limited = decideRateLimit(snapshot, req, ports.rateLimits, now);
  const afterLimits = (v: Verdict): Verdict | Promise<Verdict> => (v.allow && opts.nat ? translate(v) : v);
  if (limited === undefined) return afterLimits(firewall);
  return limited instanceof Promise ? limited.then((v) => afterLimits(merge(firewall, v))) : afterLimits(merge(firewall, limited));
}

function withNat(v: Verdict, nat: NatDecision): Verdict {
  return { ...v, nat };
}

function merge(firewall: Verdict, limited: Verdict): Verdict {
  // The common case, allowed with nothing to add: no new object per request.
  if (limited.allow && !limited.responseHeaders && !limited.shadowDenials) return firewall;
  const shadowDenials =
    firewall.shadowDenials && limited.shadowDenials
      ? [...firewall.shadowDenials, ...limited.shadowDenials]
      : firewall.shadowDenials ?? limited.shadowDenials;
  if (!limited.allow) return { ...limited, shadowDenials };
  return { ...firewall, responseHeaders: limited.responseHeaders, shadowDenials };
}
