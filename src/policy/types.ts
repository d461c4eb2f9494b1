// The policy format (apiVersion middlebox.io/v1alpha1, kind Policy) as it is after parsing and
// validation, and its compiled form that the engines evaluate.
import type { RequestAttributes } from '../middlebox/types';

export const API_VERSION = 'middlebox.io/v1alpha1';
export const KIND = 'Policy';

/** A path pattern: "/exact", "/prefix/*", or { regex: "^/v[0-9]+/" } (anchored by the author). */
export type PathPattern = string | { regex: string };

export interface TrafficMatchSpec {
  hosts?: string[];
  paths?: PathPattern[];
  methods?: string[];
  ports?: number[];
}

export interface HeaderMatchSpec {
  name: string;
  /** Exact value. */
  value?: string;
  /** Regular expression over the value. */
  regex?: string;
  /** true: header must be there (the default when no value/regex); false: header must be absent. */
  present?: boolean;
}

export type FirewallAction = 'allow' | 'deny';

export interface FirewallRuleSpec {
  name: string;
  action: FirewallAction;
  /** Decide and log, never enforce. */
  shadow?: boolean;
  /** Source CIDRs (or bare addresses). */
  from?: string[];
  /** Destination CIDRs (or bare addresses). */
  to?: string[];
  /** Destination ports. */
  ports?: number[];
  methods?: string[];
  hosts?: string[];
  paths?: PathPattern[];
  headers?: HeaderMatchSpec[];
  /** SPIFFE ids of the caller; a trailing "*" matches any suffix. */
  principals?: string[];
}

export interface FirewallSpec {
  default: FirewallAction;
  rules: FirewallRuleSpec[];
}

export type RateLimitAlgorithm = 'fixed-window' | 'sliding-window' | 'token-bucket';
export type Consistency = 'strict' | 'leased' | 'local';

export interface RateLimitSpec {
  name: string;
  match?: TrafficMatchSpec;
  limit: number;
  /** Duration text as written: 500ms, 1s, 30s, 1m, 1h. */
  per: string;
  /** sourceIp | principal | host | path | header:<name>; several combined. Empty: one global bucket. */
  by: string[];
  algorithm: RateLimitAlgorithm;
  burst?: number;
  consistency: Consistency;
  shadow?: boolean;
  /** Add ratelimit-* headers to allowed responses too. */
  headers?: boolean;
}

export interface NatSpec {
  name: string;
  match?: TrafficMatchSpec;
  /** Pool of ip:port ("[v6]:port" for IPv6). */
  to: string[];
  /** none | sourceIp | header:<name> */
  affinity: string;
  rewriteHost?: boolean;
  sourceAs?: string;
  /** How long a flow's mapping outlives its last request (duration text; default 5m). */
  idleTimeout: string;
}

export interface PolicySpec {
  selector?: TrafficMatchSpec;
  shadow?: boolean;
  firewall?: FirewallSpec;
  rateLimits?: RateLimitSpec[];
  nat?: NatSpec[];
}

export interface PolicyDocument {
  apiVersion: typeof API_VERSION;
  kind: typeof KIND;
  metadata: { name: string; labels?: Record<string, string> };
  spec: PolicySpec;
}

/** A validation problem located in its source. */
export interface PolicyError {
  file: string;
  /** 1-based line, when known. */
  line?: number;
  /** 1-based column, when known. */
  column?: number;
  /** Where in the document, e.g. spec.firewall.rules[2].from[0]. */
  path?: string;
  message: string;
}

/** Compiled once when a policy loads; evaluated per request without allocation where possible. */
export type RequestMatcher = (req: RequestAttributes) => boolean;

export interface CompiledFirewallRule {
  name: string;
  action: FirewallAction;
  shadow: boolean;
  matches: RequestMatcher;
}

export interface CompiledFirewall {
  defaultAction: FirewallAction;
  rules: readonly CompiledFirewallRule[];
}

/** Reads one part of a rate-limit key from a request ("" when the request lacks it). */
export type KeyPart = (req: RequestAttributes) => string;

export interface CompiledRateLimit {
  /** policy/rule: names the limit in logs, metrics, etcd keys and denial bodies. */
  id: string;
  policy: string;
  name: string;
  matches: RequestMatcher;
  keyParts: readonly KeyPart[];
  algorithm: RateLimitAlgorithm;
  limit: number;
  perMs: number;
  burst?: number;
  consistency: Consistency;
  shadow: boolean;
  /** Add ratelimit-* headers to allowed responses too. */
  headers: boolean;
}

export type NatAffinity = { kind: 'none' } | { kind: 'sourceIp' } | { kind: 'header'; name: string };

export interface CompiledNatRule {
  /** policy/rule */
  id: string;
  policy: string;
  name: string;
  matches: RequestMatcher;
  /** Canonical ip:port ([v6]:port), in the order written. */
  backends: readonly string[];
  affinity: NatAffinity;
  rewriteHost: boolean;
  sourceAs?: string;
  idleMs: number;
}

export interface CompiledPolicy {
  name: string;
  document: PolicyDocument;
  shadow: boolean;
  selector: RequestMatcher;
  firewall?: CompiledFirewall;
  rateLimits: readonly CompiledRateLimit[];
  nat: readonly CompiledNatRule[];
}

/** Every policy in force, in evaluation order (by name, byte order). */
export interface PolicySnapshot {
  /** Increases with every change a replica applies. */
  generation: number;
  policies: readonly CompiledPolicy[];
}
