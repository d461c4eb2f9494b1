// Request matchers, built once per policy load from validated specs and shared by the firewall,
// rate-limit and NAT engines. Each builder turns one field's list into a predicate that is true
// when any entry matches; a request that lacks the attribute a field looks at (no host on a tcp
// connection, no source address) never matches it. Per call: Set lookups, precomputed prefixes,
// byte comparisons and precompiled regexes; no allocation.
import type { HeaderMatchSpec, PathPattern, RequestMatcher, TrafficMatchSpec } from '../../policy/types';
import { CidrSet, parseCidr, type Cidr } from '../ip';

export const matchAll: RequestMatcher = () => true;

/** True when every matcher is; `matchAll` entries cost nothing. */
export function allOf(matchers: readonly RequestMatcher[]): RequestMatcher {
  const needed = matchers.filter((m) => m !== matchAll);
  if (needed.length === 0) return matchAll;
  if (needed.length === 1) return needed[0];
  if (needed.length === 2) {
    const [a, b] = needed;
    return (req) => a(req) && b(req);
  }
  return (req) => {
    for (let i = 0; i < needed.length; i++) if (!needed[i](req)) return false;
    return true;
  };
}

/** Selector or `match` block: hosts AND paths AND methods AND ports; omitted fields match all. */
export function trafficMatcher(spec: TrafficMatchSpec | undefined): RequestMatcher {
  if (spec === undefined) return matchAll;
  const matchers: RequestMatcher[] = [];
  if (spec.ports !== undefined) matchers.push(portMatcher(spec.ports));
  if (spec.methods !== undefined) matchers.push(methodMatcher(spec.methods));
  if (spec.hosts !== undefined) matchers.push(hostMatcher(spec.hosts));
  if (spec.paths !== undefined) matchers.push(pathMatcher(spec.paths));
  return allOf(matchers);
}

/** Destination port. */
export function portMatcher(ports: readonly number[]): RequestMatcher {
  const set = new Set(ports);
  return (req) => req.destination.port !== undefined && set.has(req.destination.port);
}

/** Methods as validated (upper case); requests carry upper-case methods. */
export function methodMatcher(methods: readonly string[]): RequestMatcher {
  const set = new Set(methods.map((m) => m.toUpperCase()));
  return (req) => req.method !== undefined && set.has(req.method);
}

/** "name" exactly, "*.suffix" any subdomain of suffix (not suffix itself), "*" any host. */
export function hostMatcher(patterns: readonly string[]): RequestMatcher {
  const exact = new Set<string>();
  const suffixes: string[] = [];
  let any = false;
  for (const pattern of patterns) {
    const host = pattern.toLowerCase();
    if (host === '*') any = true;
    else if (host.startsWith('*.')) suffixes.push(host.slice(1));
    else exact.add(host);
  }
  return (req) => {
    const host = req.host;
    if (host === undefined) return false;
    if (any || exact.has(host)) return true;
    for (let i = 0; i < suffixes.length; i++) {
      // The suffix keeps its leading dot, so "xexample.com" is not under ".example.com".
      if (host.length > suffixes[i].length && host.endsWith(suffixes[i])) return true;
    }
    return false;
  };
}

/** "/exact"; "/api/*" matches "/api" and everything below "/api/"; {regex} via RegExp.test. */
export function pathMatcher(patterns: readonly PathPattern[]): RequestMatcher {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const regexes: RegExp[] = [];
  for (const pattern of patterns) {
    if (typeof pattern !== 'string') {
      regexes.push(new RegExp(pattern.regex));
    } else if (pattern.endsWith('/*')) {
      const base = pattern.slice(0, -2);
      if (base !== '') exact.add(base);
      prefixes.push(`${base}/`);
    } else {
      exact.add(pattern);
    }
  }
  return (req) => {
    const path = req.path;
    if (path === undefined) return false;
    if (exact.has(path)) return true;
    for (let i = 0; i < prefixes.length; i++) if (path.startsWith(prefixes[i])) return true;
    for (let i = 0; i < regexes.length; i++) if (regexes[i].test(path)) return true;
    return false;
  };
}

/** Source address within any of the CIDRs. */
export function sourceMatcher(cidrs: readonly string[]): RequestMatcher {
  const set = compileCidrs(cidrs);
  return (req) => req.source.ip !== undefined && set.contains(req.source.ip);
}

/** Destination address within any of the CIDRs. */
export function destinationMatcher(cidrs: readonly string[]): RequestMatcher {
  const set = compileCidrs(cidrs);
  return (req) => req.destination.ip !== undefined && set.contains(req.destination.ip);
}

/** The caller's principal, exactly or by prefix when the pattern ends in "*". */
export function principalMatcher(patterns: readonly string[]): RequestMatcher {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const pattern of patterns) {
    if (pattern.endsWith('*')) prefixes.push(pattern.slice(0, -1));
    else exact.add(pattern);
  }
  return (req) => {
    const principal = req.source.principal;
    if (principal === undefined) return false;
    if (exact.has(principal)) return true;
    for (let i = 0; i < prefixes.length; i++) if (principal.startsWith(prefixes[i])) return true;
    return false;
  };
}

/**
 * Unlike the other fields, headers is a conjunction: each entry names a different header and all
 * must hold (as in Envoy's and the Gateway API's header matches). Any-of is two rules. HTTP only.
 */
export function headerMatcher(specs: readonly HeaderMatchSpec[], anyValue = false): RequestMatcher {
  const all = allOf(specs.map((spec) => headerCondition(spec, anyValue)));
  return (req) => req.protocol === 'http' && all(req);
}

function headerCondition(spec: HeaderMatchSpec, anyValue: boolean): RequestMatcher {
  const name = spec.name.toLowerCase();
  if (spec.present === false) return (req) => !req.headers.has(name);
  const matchesValue = spec.value !== undefined ? (v: string) => v === spec.value : spec.regex !== undefined ? regexTest(spec.regex) : undefined;
  if (matchesValue === undefined) return (req) => req.headers.has(name);
  return (req) => {
    const actual = req.headers.get(name);
    return actual !== undefined && (matchesValue(actual) || (anyValue && anyOneValue(actual, matchesValue)));
  };
}

function regexTest(source: string): (v: string) => boolean {
  const regex = new RegExp(source);
  return (v) => regex.test(v);
}

/**
 * A header sent more than once reaches the middlebox as its values joined with ",". For a deny rule
 * any one of them counts (`x-debug: true` sent twice, "true,true", must not slip past a rule on
 * "true" while the app reads its first value); an allow rule needs the whole, or a client could add
 * a value to earn it (x-forwarded-for, where Envoy appends the real client last).
 */
function anyOneValue(actual: string, test: (v: string) => boolean): boolean {
  return actual.includes(',') && actual.split(',').some((v) => test(v.trim()));
}

function compileCidrs(texts: readonly string[]): CidrSet {
  const cidrs: Cidr[] = texts.map((text) => {
    const cidr = parseCidr(text);
    if (cidr === undefined) throw new Error(`not a CIDR: "${text}" (policies must be validated before compiling)`);
    return cidr;
  });
  return new CidrSet(cidrs);
}
