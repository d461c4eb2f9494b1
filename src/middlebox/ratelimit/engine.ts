// The rate-limit decision. Every rate limit of every policy whose selector matches, and whose own
// `match` matches, takes one token from its bucket (the bucket is chosen by the rule's `by` keys).
// The request is allowed only if every enforced limit grants a token; if one denies, the tokens
// the others took are given back, so a denied request consumes no quota. Shadow limits take tokens
// (they measure what would happen) but their denials are only recorded.
import { UnsentHeaderRead } from '../../policy/headers';
import type { CompiledRateLimit, PolicySnapshot } from '../../policy/types';
import type { RateLimitGrant, RateLimitPort, RateLimitRequest } from '../../state/port';
import type { HeaderValue, RequestAttributes, ShadowDenial, Verdict } from '../types';

const STATUS = 429;
const KEY_SEPARATOR = '\u0001';

export function decideRateLimit(
  snapshot: PolicySnapshot,
  req: RequestAttributes,
  port: RateLimitPort,
  now: number,
): Verdict | Promise<Verdict> | undefined {
  let asks: RateLimitRequest[] | undefined;
  const policies = snapshot.policies;
  for (let p = 0; p < policies.length; p++) {
    const policy = policies[p]!;
    if (policy.rateLimits.length === 0 || !policy.selector(req)) continue;
    for (const rule of policy.rateLimits) {
      try {
        if (rule.matches(req)) (asks ??= []).push({ rule, key: bucketKey(rule, req), now });
      } catch (e) {
        // A shadow limit that needs a header the sidecar did not send counts nothing.
        if (e instanceof UnsentHeaderRead && rule.shadow) continue;
        throw UnsentHeaderRead.at(e, rule.policy, rule.name);
      }
    }
  }
  if (!asks) return undefined;

  const grants = asks.map((a) => port.consume(a));
  if (grants.some((g) => g instanceof Promise)) {
    return Promise.all(grants).then((settled) => combine(asks!, settled, port));
  }
  return combine(asks, grants as RateLimitGrant[], port);
}

export function bucketKey(rule: CompiledRateLimit, req: RequestAttributes): string {
  const parts = rule.keyParts;
  if (parts.length === 0) return '';
  if (parts.length === 1) return parts[0]!(req);
  let key = parts[0]!(req);
  for (let i = 1; i < parts.length; i++) key += KEY_SEPARATOR + parts[i]!(req);
  return key;
}

function combine(asks: RateLimitRequest[], grants: RateLimitGrant[], port: RateLimitPort): Verdict {
  let denied: number | undefined;
  let shadowDenials: ShadowDenial[] | undefined;
  for (let i = 0; i < asks.length; i++) {
    if (grants[i]!.allowed) continue;
    const rule = asks[i]!.rule;
    if (rule.shadow) (shadowDenials ??= []).push({ middlebox: 'ratelimit', policy: rule.policy, rule: rule.name, status: STATUS });
    else if (denied === undefined) denied = i;
  }

  if (denied !== undefined) {
    for (let i = 0; i < asks.length; i++) if (grants[i]!.allowed) port.refund(asks[i]!);
    const rule = asks[denied]!.rule;
    const grant = grants[denied]!;
    return {
      allow: false,
      status: STATUS,
      middlebox: 'ratelimit',
      policy: rule.policy,
      rule: rule.name,
      reason: 'rate_limited',
      headers: [{ key: 'retry-after', value: String(Math.max(1, Math.ceil(grant.retryAfterMs / 1000))) }, ...rateLimitHeaders(grant)],
      shadowDenials,
    };
  }

  // Allowed: advertise the tightest limit among the rules that ask for headers.
  let tightest: RateLimitGrant | undefined;
  for (let i = 0; i < asks.length; i++) {
    if (!asks[i]!.rule.headers || asks[i]!.rule.shadow) continue;
    if (!tightest || grants[i]!.remaining < tightest.remaining) tightest = grants[i];
  }
  return {
    allow: true,
    reason: 'allowed',
    responseHeaders: tightest ? rateLimitHeaders(tightest) : undefined,
    shadowDenials,
  };
}

/** The RateLimit header fields (IETF httpapi draft): limit, remaining, seconds until reset. */
function rateLimitHeaders(g: RateLimitGrant): HeaderValue[] {
  return [
    { key: 'ratelimit-limit', value: String(g.limit) },
    { key: 'ratelimit-remaining', value: String(Math.max(0, g.remaining)) },
    { key: 'ratelimit-reset', value: String(Math.max(0, Math.ceil(g.resetMs / 1000))) },
  ];
}
