// The NAT decision: which backend of a virtual service's pool an allowed request goes to, and the
// header changes that carry it out in both directions.
//
// The first NAT rule that matches (policies in name order, rules in order) applies; NAT is a routing
// choice, so one rule decides. Affinity `none` spreads requests round robin over the pool. With
// `sourceIp` or `header:<name>` the request's flow key picks its backend: the shared NAT table's
// mapping when there is one, else rendezvous hashing over the pool minus drained backends, which
// every replica computes alike, recorded in the table so that it stays put when the pool changes.
import { createHash } from 'node:crypto';
import type { CompiledNatRule, PolicySnapshot } from '../../policy/types';
import type { NatTablePort } from '../../state/port';
import type { HeaderValue, NatDecision, RequestAttributes } from '../types';
import { rendezvous } from './rendezvous';

/** Where Envoy's ORIGINAL_DST cluster (use_http_header) reads the destination. */
export const DESTINATION_HEADER = 'x-envoy-original-dst-host';
export const NAT_RESPONSE_HEADER = 'x-middlebox-nat';

export function decideNat(
  snapshot: PolicySnapshot,
  req: RequestAttributes,
  table: NatTablePort,
  now: number,
): NatDecision | Promise<NatDecision> | undefined {
  const rule = firstMatch(snapshot, req);
  if (!rule) return undefined;
  const pool = rule.backends.filter((b) => !table.isDrained(b));
  // Draining is for new flows; with every backend drained, serving beats refusing.
  const candidates = pool.length > 0 ? pool : rule.backends;
  const flow = flowKey(rule, req);
  if (flow === undefined) return decision(rule, candidates[table.nextIndex(rule.id) % candidates.length]!);

  const mapped = table.lookup(rule, flow);
  if (mapped !== undefined && candidates.includes(mapped)) {
    table.touch(rule, flow, now);
    return decision(rule, mapped, flow);
  }
  const chosen = rendezvous(flow, candidates)!;
  const assigned = table.assign(rule, flow, chosen, mapped, now);
  const settle = (backend: string) => decision(rule, rule.backends.includes(backend) ? backend : chosen, flow);
  return assigned instanceof Promise ? assigned.then(settle) : settle(assigned);
}

function firstMatch(snapshot: PolicySnapshot, req: RequestAttributes): CompiledNatRule | undefined {
  for (const policy of snapshot.policies) {
    if (policy.nat.length === 0 || !policy.selector(req)) continue;
    for (const rule of policy.nat) if (rule.matches(req)) return rule;
  }
  return undefined;
}

/** The flow key of the rule's affinity; undefined for `none` or when the request lacks it. */
function flowKey(rule: CompiledNatRule, req: RequestAttributes): string | undefined {
  switch (rule.affinity.kind) {
    case 'none':
      return undefined;
    case 'sourceIp':
      return req.source.ip?.text;
    case 'header': {
      const value = req.headers.get(rule.affinity.name);
      if (!value) return undefined;
      // A client chooses it: a long one is stored and kept in memory as its digest.
      // A value that looks like such a digest is digested too: no client can send another's key.
      return value.length > MAX_FLOW_KEY_CHARS || value.startsWith(DIGEST_PREFIX) ? `${DIGEST_PREFIX}${createHash('sha256').update(value).digest('base64url')}` : value;
    }
  }
}

/** Longest header value used as a flow key as it is; a longer one is replaced by its digest. */
export const MAX_FLOW_KEY_CHARS = 256;
const DIGEST_PREFIX = 'sha256:';

function decision(rule: CompiledNatRule, backend: string, flow?: string): NatDecision {
  return { policy: rule.policy, rule: rule.name, backend, flow, rewriteHost: rule.rewriteHost, sourceAs: rule.sourceAs };
}

// --- carrying it out -------------------------------------------------------------------------------

export interface HeaderChanges {
  set: HeaderValue[];
  remove: string[];
  /** Routing inputs changed: Envoy must pick the route again. */
  clearRouteCache: boolean;
}

/**
 * The request side: the destination always written (a client's own x-envoy-original-dst-host is
 * never obeyed), the authority rewritten when asked, the source hidden behind `sourceAs`.
 */
export function requestChanges(nat: NatDecision | undefined, req: RequestAttributes): HeaderChanges {
  if (!nat) {
    return { set: [], remove: req.headers.has(DESTINATION_HEADER) ? [DESTINATION_HEADER] : [], clearRouteCache: false };
  }
  const set: HeaderValue[] = [{ key: DESTINATION_HEADER, value: nat.backend }];
  if (nat.rewriteHost) set.push({ key: ':authority', value: nat.backend });
  if (nat.sourceAs) {
    set.push({ key: 'x-forwarded-for', value: nat.sourceAs }, { key: 'x-real-ip', value: nat.sourceAs });
  }
  return { set, remove: [], clearRouteCache: nat.rewriteHost };
}

/**
 * The response side: `location` and `content-location` that point at the backend are translated
 * back to the virtual host the client asked for, and x-middlebox-nat says which rule translated.
 */
export function responseChanges(nat: NatDecision, virtualHost: string, headers: ReadonlyMap<string, string>): HeaderValue[] {
  const set: HeaderValue[] = [{ key: NAT_RESPONSE_HEADER, value: `${nat.policy}/${nat.rule}` }];
  for (const name of ['location', 'content-location']) {
    const value = headers.get(name);
    if (value === undefined) continue;
    const translated = translateUrl(value, nat.backend, virtualHost);
    if (translated !== value) set.push({ key: name, value: translated });
  }
  return set;
}

/** Replaces the authority of an absolute URL when it names the backend; anything else is left alone. */
export function translateUrl(value: string, backend: string, virtualHost: string): string {
  const m = /^(https?:)\/\/([^/?#]*)(.*)$/i.exec(value);
  if (!m) return value;
  const authority = m[2]!.toLowerCase();
  const [host, port] = splitHostPort(backend);
  const defaultPort = m[1]!.toLowerCase() === 'https:' ? '443' : '80';
  const pointsAtBackend = authority === backend || (port === defaultPort && authority === host);
  return pointsAtBackend ? `${m[1]}//${virtualHost}${m[3]}` : value;
}

function splitHostPort(hostPort: string): [string, string] {
  const colon = hostPort.lastIndexOf(':');
  return [hostPort.slice(0, colon), hostPort.slice(colon + 1)];
}
