// Compiles validated policy documents into the matchers the engines evaluate per request.
import {
  allOf,
  destinationMatcher,
  headerMatcher,
  hostMatcher,
  methodMatcher,
  pathMatcher,
  portMatcher,
  principalMatcher,
  sourceMatcher,
  trafficMatcher,
} from '../middlebox/firewall/match';
import type {
  CompiledFirewallRule,
  CompiledNatRule,
  CompiledPolicy,
  CompiledRateLimit,
  FirewallRuleSpec,
  KeyPart,
  NatAffinity,
  NatSpec,
  PolicyDocument,
  PolicySnapshot,
  RateLimitSpec,
  RequestMatcher,
} from './types';
import type { RequestAttributes } from '../middlebox/types';
import { parseDuration } from './duration';

/** `doc` must have come out of validation; an invalid address or regex here throws. */
export function compilePolicy(doc: PolicyDocument): CompiledPolicy {
  const { spec } = doc;
  const policy: CompiledPolicy = {
    name: doc.metadata.name,
    document: doc,
    shadow: spec.shadow === true,
    selector: trafficMatcher(spec.selector),
    rateLimits: (spec.rateLimits ?? []).map((rule) => compileRateLimit(doc.metadata.name, spec.shadow === true, rule)),
    nat: (spec.nat ?? []).map((rule) => compileNatRule(doc.metadata.name, rule)),
  };
  if (spec.firewall !== undefined) {
    policy.firewall = {
      defaultAction: spec.firewall.default,
      rules: spec.firewall.rules.map(compileFirewallRule),
    };
  }
  return policy;
}

/**
 * Policies in evaluation order: by name, byte order. Names are DNS labels (ASCII), for which
 * JavaScript's code-unit comparison is byte order.
 */
export function compileSnapshot(docs: readonly PolicyDocument[], generation: number): PolicySnapshot {
  const policies = docs
    .map(compilePolicy)
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { generation, policies };
}

function compileFirewallRule(rule: FirewallRuleSpec): CompiledFirewallRule {
  return { name: rule.name, action: rule.action, shadow: rule.shadow === true, matches: firewallRuleMatcher(rule) };
}

/** AND of the rule's fields, cheapest first so most mismatches exit early. */
function firewallRuleMatcher(rule: FirewallRuleSpec): RequestMatcher {
  const matchers: RequestMatcher[] = [];
  if (rule.ports !== undefined) matchers.push(portMatcher(rule.ports));
  if (rule.methods !== undefined) matchers.push(methodMatcher(rule.methods));
  if (rule.from !== undefined) matchers.push(sourceMatcher(rule.from));
  if (rule.to !== undefined) matchers.push(destinationMatcher(rule.to));
  if (rule.principals !== undefined) matchers.push(principalMatcher(rule.principals));
  if (rule.hosts !== undefined) matchers.push(hostMatcher(rule.hosts));
  if (rule.paths !== undefined) matchers.push(pathMatcher(rule.paths));
  // A deny rule holds for any one value of a repeated header; an allow rule only for the whole.
  if (rule.headers !== undefined) matchers.push(headerMatcher(rule.headers, rule.action === 'deny'));
  return allOf(matchers);
}

/**
 * The keys of a rate limit's buckets that a TCP connection lacks: host, path and headers always
 * (only HTTP has them), principal when the connection has none (no client certificate, as on the
 * outbound listener). Such a limit does not apply to the connection, as an HTTP field never
 * matches one in a rule: every such connection would otherwise share its one empty-keyed bucket.
 */
export function keysTcpLacks(by: readonly string[], req: Pick<RequestAttributes, 'protocol' | 'source'>): string[] {
  if (req.protocol !== 'tcp') return [];
  return by.filter((b) => b === 'host' || b === 'path' || b.startsWith('header:') || (b === 'principal' && !req.source.principal));
}

function compileRateLimit(policy: string, policyShadow: boolean, rule: RateLimitSpec): CompiledRateLimit {
  const traffic = trafficMatcher(rule.match);
  // Keys some TCP connection may lack (every one it could, for a connection without a principal).
  const lacking = keysTcpLacks(rule.by, { protocol: 'tcp', source: {} }).length > 0;
  return {
    id: `${policy}/${rule.name}`,
    policy,
    name: rule.name,
    matches: lacking ? (req) => keysTcpLacks(rule.by, req).length === 0 && traffic(req) : traffic,
    keyParts: rule.by.map(keyPart),
    algorithm: rule.algorithm,
    limit: rule.limit,
    perMs: parseDuration(rule.per)!,
    burst: rule.burst,
    consistency: rule.consistency,
    shadow: policyShadow || rule.shadow === true,
    headers: rule.headers === true,
  };
}

/** `by` entries as validated: sourceIp | principal | host | path | header:<name>. */
function keyPart(by: string): KeyPart {
  switch (by) {
    case 'sourceIp':
      return (req) => req.source.ip?.text ?? '';
    case 'principal':
      return (req) => req.source.principal ?? '';
    case 'host':
      return (req) => req.host ?? '';
    case 'path':
      return (req) => req.path ?? '';
    default: {
      const name = by.slice('header:'.length).toLowerCase();
      return (req) => req.headers.get(name) ?? '';
    }
  }
}

function compileNatRule(policy: string, rule: NatSpec): CompiledNatRule {
  return {
    id: `${policy}/${rule.name}`,
    policy,
    name: rule.name,
    matches: trafficMatcher(rule.match),
    backends: rule.to,
    affinity: natAffinity(rule.affinity),
    rewriteHost: rule.rewriteHost === true,
    sourceAs: rule.sourceAs,
    idleMs: parseDuration(rule.idleTimeout)!,
  };
}

/** `affinity` as validated: none | sourceIp | header:<name>. */
function natAffinity(text: string): NatAffinity {
  if (text === 'none') return { kind: 'none' };
  if (text === 'sourceIp') return { kind: 'sourceIp' };
  return { kind: 'header', name: text.slice('header:'.length).toLowerCase() };
}
