// Validation and normalisation of one parsed policy document. Works on the YAML syntax tree rather
// than on plain values, so that every problem carries the line and column it comes from. All
// problems are collected; none stops the walk.
import { runsInLinearTime } from './regex-engine';
import { isAlias, isMap, isPair, isScalar, isSeq, Scalar, visit } from 'yaml';
import type { Alias, Document, LineCounter, Node } from 'yaml';
import { parseCidr, parseIp } from '../middlebox/ip';
import { parseDuration } from './duration';
import { DEFAULT_POLICY_LIMITS, tooManyRules, type PolicyLimits } from './limits';
import {
  API_VERSION,
  KIND,
  type Consistency,
  type FirewallAction,
  type FirewallRuleSpec,
  type FirewallSpec,
  type HeaderMatchSpec,
  type NatSpec,
  type PathPattern,
  type PolicyDocument,
  type PolicyError,
  type PolicySpec,
  type RateLimitAlgorithm,
  type RateLimitSpec,
  type TrafficMatchSpec,
} from './types';

/** The document being validated and where its problems go. */
export interface ValidationSource {
  file: string;
  lines: LineCounter;
  /** Resolves aliases. */
  document: Document;
  errors: PolicyError[];
  /** Rules per list (maxRulesPerPolicy); default DEFAULT_POLICY_LIMITS. */
  limits?: PolicyLimits;
}

export const MAX_REGEX_LENGTH = 1024;
/**
 * Values that aliases may add to one document's walk, in all. Reusing a list by alias is fine;
 * a short document whose aliases stand for millions of values (each alias of a big list expanded
 * again) is refused instead of taking minutes and gigabytes to validate.
 */
export const MAX_ALIAS_EXPANSION = 100_000;
const HTTP_METHODS: ReadonlySet<string> = new Set([
  'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH',
]);
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const HOST_LABEL = /^[a-z0-9_]([-a-z0-9_]{0,61}[a-z0-9_])?$/;
/** RFC 9110 token characters; a leading ":" admits Envoy's pseudo-headers (":authority"). */
const HEADER_NAME = /^:?[!#$%&'*+.^_`|~0-9a-z-]+$/;
const HEADER_PREFIX = 'header:';
/** Kubernetes label key syntax; it also keeps keys such as "__proto__" out of the labels object. */
const LABEL_KEY = /^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

const ACTIONS: readonly FirewallAction[] = ['allow', 'deny'];
const ALGORITHMS: readonly RateLimitAlgorithm[] = ['fixed-window', 'sliding-window', 'token-bucket'];
const CONSISTENCIES: readonly Consistency[] = ['strict', 'leased', 'local'];
const BY_KEYS = ['sourceIp', 'principal', 'host', 'path'];

const POLICY_FIELDS = ['apiVersion', 'kind', 'metadata', 'spec'];
const SPEC_FIELDS = ['selector', 'shadow', 'firewall', 'rateLimits', 'nat'];
const TRAFFIC_FIELDS = ['hosts', 'paths', 'methods', 'ports'];
const NAT_MATCH_FIELDS = ['hosts', 'ports', 'paths'];
const RULE_FIELDS = ['name', 'action', 'shadow', 'from', 'to', 'ports', 'methods', 'hosts', 'paths', 'headers', 'principals'];
const RATE_LIMIT_FIELDS = ['name', 'match', 'limit', 'per', 'by', 'algorithm', 'burst', 'consistency', 'shadow', 'headers'];
const NAT_FIELDS = ['name', 'match', 'to', 'affinity', 'rewriteHost', 'sourceAs', 'idleTimeout'];

/**
 * Returns the normalised document (defaults filled in, methods upper-cased, hosts and header names
 * lower-cased, addresses canonical), or undefined when any problem was found, in which case the
 * problems are in source.errors. Readers below return undefined for a value they reported (or that
 * is absent) and may build partial objects; such objects never escape because of this rule.
 */
export function validatePolicyDocument(source: ValidationSource, root: Node): PolicyDocument | undefined {
  const errorsBefore = source.errors.length;
  const v = new Walk(source);
  const fields = v.fields(root, '', POLICY_FIELDS, POLICY_FIELDS);
  if (fields === undefined) return undefined;
  v.constant(fields.get('apiVersion'), 'apiVersion', API_VERSION);
  v.constant(fields.get('kind'), 'kind', KIND);
  const metadata = v.optional(fields, 'metadata', 'metadata', readMetadata);
  const spec = v.optional(fields, 'spec', 'spec', readSpec);
  if (source.errors.length > errorsBefore || metadata === undefined || spec === undefined) return undefined;
  return { apiVersion: API_VERSION, kind: KIND, metadata, spec };
}

/** Where a document's metadata.name is written, for reporting a name used twice. */
export function policyNameNode(root: Node): Node | undefined {
  if (!isMap(root)) return undefined;
  const metadata = root.get('metadata', true);
  return isMap(metadata) ? (metadata.get('name', true) as Node | undefined) : undefined;
}

function readMetadata(v: Walk, node: Node, path: string): PolicyDocument['metadata'] | undefined {
  const fields = v.fields(node, path, ['name', 'labels'], ['name']);
  if (fields === undefined) return undefined;
  return dropUndefined({
    name: v.optional(fields, 'name', `${path}.name`, readName) ?? '',
    labels: v.optional(fields, 'labels', `${path}.labels`, readLabels),
  });
}

function readLabels(v: Walk, node: Node, path: string): Record<string, string> | undefined {
  const map = v.resolve(node);
  if (!isMap(map)) {
    v.report(node, path, `expected a map, got ${describe(map)}`);
    return undefined;
  }
  const labels: Record<string, string> = {};
  for (const pair of map.items) {
    const key = pair.key as Node;
    const name = isScalar(key) && typeof key.value === 'string' ? key.value : undefined;
    if (name === undefined || !LABEL_KEY.test(name)) {
      v.report(key, path, `${describe(key)} is not a label key: [prefix/]name, name 1-63 characters of letters, digits, "-", "_", "."`);
      continue;
    }
    const value = v.string(valueNode(pair.value as Node | null, key), `${path}.${name}`);
    if (value !== undefined) labels[name] = value;
  }
  return labels;
}

function readSpec(v: Walk, node: Node, path: string): PolicySpec | undefined {
  const fields = v.fields(node, path, SPEC_FIELDS, []);
  if (fields === undefined) return undefined;
  return dropUndefined({
    selector: v.optional(fields, 'selector', `${path}.selector`, readTrafficMatch(TRAFFIC_FIELDS)),
    shadow: v.optional(fields, 'shadow', `${path}.shadow`, readBoolean),
    firewall: v.optional(fields, 'firewall', `${path}.firewall`, readFirewall),
    rateLimits: v.optional(fields, 'rateLimits', `${path}.rateLimits`, (v, n, p) => v.namedList(n, p, readRateLimit, 'rate limits')),
    nat: v.optional(fields, 'nat', `${path}.nat`, (v, n, p) => v.namedList(n, p, readNat, 'NAT rules')),
  });
}

function readTrafficMatch(allowed: readonly string[]): ItemReader<TrafficMatchSpec> {
  return (v, node, path) => {
    const fields = v.fields(node, path, allowed, []);
    return fields === undefined ? undefined : readTrafficFields(v, fields, path);
  };
}

/** hosts/paths/methods/ports, shared by selectors, rate-limit and NAT matches and firewall rules. */
function readTrafficFields(v: Walk, fields: ReadonlyMap<string, Node>, path: string): TrafficMatchSpec {
  return dropUndefined({
    hosts: v.optional(fields, 'hosts', `${path}.hosts`, (v, n, p) => v.matchList(n, p, readHost)),
    paths: v.optional(fields, 'paths', `${path}.paths`, (v, n, p) => v.matchList(n, p, readPathPattern)),
    methods: v.optional(fields, 'methods', `${path}.methods`, (v, n, p) => v.matchList(n, p, readMethod)),
    ports: v.optional(fields, 'ports', `${path}.ports`, (v, n, p) => v.matchList(n, p, readPort)),
  });
}

function readFirewall(v: Walk, node: Node, path: string): FirewallSpec | undefined {
  const fields = v.fields(node, path, ['default', 'rules'], []);
  if (fields === undefined) return undefined;
  return {
    default: v.optional(fields, 'default', `${path}.default`, readOneOf(ACTIONS)) ?? 'allow',
    rules: v.optional(fields, 'rules', `${path}.rules`, (v, n, p) => v.namedList(n, p, readFirewallRule, 'firewall rules')) ?? [],
  };
}

function readFirewallRule(v: Walk, node: Node, path: string): FirewallRuleSpec | undefined {
  const fields = v.fields(node, path, RULE_FIELDS, ['name', 'action']);
  if (fields === undefined) return undefined;
  return dropUndefined({
    name: v.optional(fields, 'name', `${path}.name`, readName) ?? '',
    action: v.optional(fields, 'action', `${path}.action`, readOneOf(ACTIONS)) ?? 'deny',
    shadow: v.optional(fields, 'shadow', `${path}.shadow`, readBoolean),
    from: v.optional(fields, 'from', `${path}.from`, (v, n, p) => v.matchList(n, p, readCidr)),
    to: v.optional(fields, 'to', `${path}.to`, (v, n, p) => v.matchList(n, p, readCidr)),
    ...readTrafficFields(v, fields, path),
    headers: v.optional(fields, 'headers', `${path}.headers`, readHeaderMatches),
    principals: v.optional(fields, 'principals', `${path}.principals`, (v, n, p) => v.matchList(n, p, readPrincipal)),
  });
}

/**
 * Every entry must hold for a rule to match, so naming one header twice is either redundant or
 * unsatisfiable; refusing it also catches authors who expected "any of".
 */
function readHeaderMatches(v: Walk, node: Node, path: string): HeaderMatchSpec[] {
  const items = v.matchItems(node, path, readHeaderMatch);
  v.reportDuplicates(
    items,
    (header) => header.name,
    (name) => `header "${name}" is listed twice; a rule matches only when every headers entry holds`,
  );
  return items.map((item) => item.value);
}

function readHeaderMatch(v: Walk, node: Node, path: string): HeaderMatchSpec | undefined {
  const fields = v.fields(node, path, ['name', 'value', 'regex', 'present'], ['name']);
  if (fields === undefined) return undefined;
  const header = dropUndefined({
    name: v.optional(fields, 'name', `${path}.name`, readHeaderName) ?? '',
    value: v.optional(fields, 'value', `${path}.value`, readString),
    regex: v.optional(fields, 'regex', `${path}.regex`, readRegex),
    present: v.optional(fields, 'present', `${path}.present`, readBoolean),
  });
  const hasValue = fields.has('value');
  const hasRegex = fields.has('regex');
  if (hasValue && hasRegex) {
    v.report(fields.get('regex'), `${path}.regex`, 'give either value or regex, not both');
  }
  if (header.present === false && (hasValue || hasRegex)) {
    v.report(
      fields.get('present'),
      `${path}.present`,
      'present: false means the header must be absent; it cannot be combined with value or regex',
    );
  }
  return header;
}

function readRateLimit(v: Walk, node: Node, path: string): RateLimitSpec | undefined {
  const fields = v.fields(node, path, RATE_LIMIT_FIELDS, ['name', 'limit', 'per']);
  if (fields === undefined) return undefined;
  const limit: RateLimitSpec = dropUndefined({
    name: v.optional(fields, 'name', `${path}.name`, readName) ?? '',
    match: v.optional(fields, 'match', `${path}.match`, readTrafficMatch(TRAFFIC_FIELDS)),
    limit: v.optional(fields, 'limit', `${path}.limit`, readPositiveInteger) ?? 0,
    per: v.optional(fields, 'per', `${path}.per`, readPer) ?? '',
    by: v.optional(fields, 'by', `${path}.by`, readBy) ?? [],
    algorithm: v.optional(fields, 'algorithm', `${path}.algorithm`, readOneOf(ALGORITHMS)) ?? 'sliding-window',
    burst: v.optional(fields, 'burst', `${path}.burst`, readPositiveInteger),
    consistency: v.optional(fields, 'consistency', `${path}.consistency`, readOneOf(CONSISTENCIES)) ?? 'leased',
    shadow: v.optional(fields, 'shadow', `${path}.shadow`, readBoolean),
    headers: v.optional(fields, 'headers', `${path}.headers`, readBoolean),
  });
  if (fields.has('burst') && limit.algorithm !== 'token-bucket') {
    const written = fields.has('algorithm') ? limit.algorithm : `${limit.algorithm} (the default)`;
    v.report(fields.get('burst'), `${path}.burst`, `burst applies only to algorithm token-bucket, not ${written}`);
  }
  return limit;
}

function readPer(v: Walk, node: Node, path: string): string | undefined {
  const text = v.string(node, path);
  if (text === undefined) return undefined;
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) {
    v.report(node, path, `"${text}" is not a positive duration (e.g. 500ms, 1s, 30s, 1m, 1h, 1h30m)`);
  }
  return text;
}

function readBy(v: Walk, node: Node, path: string): string[] {
  const items = v.items(node, path, (v, item, itemPath) => {
    const key = v.string(item, itemPath);
    if (key === undefined) return undefined;
    if (BY_KEYS.includes(key)) return key;
    if (key.startsWith(HEADER_PREFIX)) return headerKey(v, item, itemPath, key);
    v.report(item, itemPath, `"${key}" is not a rate-limit key: use sourceIp, principal, host, path or header:<name>`);
    return undefined;
  });
  v.reportDuplicates(items, (key) => key, (key) => `"${key}" is listed twice`);
  return items.map((item) => item.value);
}

function readNat(v: Walk, node: Node, path: string): NatSpec | undefined {
  const fields = v.fields(node, path, NAT_FIELDS, ['name', 'to']);
  if (fields === undefined) return undefined;
  return dropUndefined({
    name: v.optional(fields, 'name', `${path}.name`, readName) ?? '',
    match: v.optional(fields, 'match', `${path}.match`, readTrafficMatch(NAT_MATCH_FIELDS)),
    to: v.optional(fields, 'to', `${path}.to`, readBackends) ?? [],
    affinity: v.optional(fields, 'affinity', `${path}.affinity`, readAffinity) ?? 'none',
    rewriteHost: v.optional(fields, 'rewriteHost', `${path}.rewriteHost`, readBoolean),
    sourceAs: v.optional(fields, 'sourceAs', `${path}.sourceAs`, readAddress),
    idleTimeout: v.optional(fields, 'idleTimeout', `${path}.idleTimeout`, readPer) ?? '5m',
  });
}

function readBackends(v: Walk, node: Node, path: string): string[] {
  const items = v.matchItems(node, path, readBackend);
  v.reportDuplicates(items, (backend) => backend, (backend) => `backend ${backend} is listed twice`);
  return items.map((item) => item.value);
}

/** "ip:port", IPv6 as "[addr]:port"; returned in canonical form. */
function readBackend(v: Walk, node: Node, path: string): string | undefined {
  const text = v.string(node, path);
  if (text === undefined) return undefined;
  const colon = text.lastIndexOf(':');
  const host = colon < 0 ? '' : text.slice(0, colon);
  const portText = text.slice(colon + 1);
  const bareIpv6 = host.includes(':') && !host.startsWith('[');
  const ip = bareIpv6 ? undefined : parseIp(host);
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : 0;
  if (ip === undefined || port < 1 || port > 65535) {
    v.report(node, path, `"${text}" is not ip:port${bareIpv6 ? ' (write IPv6 as [addr]:port)' : ''}`);
    return undefined;
  }
  return ip.family === 6 ? `[${ip.text}]:${port}` : `${ip.text}:${port}`;
}

function readAffinity(v: Walk, node: Node, path: string): string | undefined {
  const affinity = v.string(node, path);
  if (affinity === undefined) return undefined;
  if (affinity === 'none' || affinity === 'sourceIp') return affinity;
  if (affinity.startsWith(HEADER_PREFIX)) return headerKey(v, node, path, affinity);
  v.report(node, path, `"${affinity}" is not an affinity: use none, sourceIp or header:<name>`);
  return undefined;
}

/** "header:<name>" with the name checked and lower-cased. */
function headerKey(v: Walk, node: Node, path: string, text: string): string | undefined {
  const name = text.slice(HEADER_PREFIX.length).toLowerCase();
  if (!HEADER_NAME.test(name)) {
    v.report(node, path, `"${text}": "${name}" is not a valid header name`);
    return undefined;
  }
  if (name === 'host') {
    v.report(node, path, `"${text}": ${HOST_IS_AUTHORITY}`);
    return undefined;
  }
  return HEADER_PREFIX + name;
}

const HOST_IS_AUTHORITY = 'Envoy sends the request\'s host as ":authority", never as "host": use hosts: [...], or the name ":authority"';

function readHeaderName(v: Walk, node: Node, path: string): string | undefined {
  const name = v.string(node, path)?.toLowerCase();
  if (name === undefined) return undefined;
  if (!HEADER_NAME.test(name)) {
    v.report(node, path, `"${name}" is not a valid header name`);
    return undefined;
  }
  if (name === 'host') {
    // A rule on it would never see a value: matching nothing, or (present: false) everything.
    v.report(node, path, HOST_IS_AUTHORITY);
    return undefined;
  }
  return name;
}

function readAddress(v: Walk, node: Node, path: string): string | undefined {
  const text = v.string(node, path);
  if (text === undefined) return undefined;
  const ip = parseIp(text);
  if (ip === undefined) v.report(node, path, `"${text}" is not an IP address`);
  return ip?.text;
}

function readCidr(v: Walk, node: Node, path: string): string | undefined {
  const text = v.string(node, path);
  if (text === undefined) return undefined;
  const cidr = parseCidr(text);
  if (cidr === undefined) {
    v.report(node, path, `"${text}" is not a CIDR or IP address (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)`);
  }
  return cidr?.text;
}

function readPort(v: Walk, node: Node, path: string): number | undefined {
  const port = v.integer(node, path);
  if (port === undefined) return undefined;
  if (port < 1 || port > 65535) {
    v.report(node, path, `port ${port} is out of range 1..65535`);
    return undefined;
  }
  return port;
}

function readMethod(v: Walk, node: Node, path: string): string | undefined {
  const method = v.string(node, path)?.toUpperCase();
  if (method === undefined) return undefined;
  if (!HTTP_METHODS.has(method)) {
    v.report(node, path, `"${method}" is not an HTTP method (${[...HTTP_METHODS].join(', ')})`);
    return undefined;
  }
  return method;
}

/** An exact name, "*.suffix" (any subdomain) or "*"; request hosts never carry a port. */
function readHost(v: Walk, node: Node, path: string): string | undefined {
  const host = v.string(node, path)?.toLowerCase();
  if (host === undefined) return undefined;
  if (host === '*') return host;
  const name = host.startsWith('*.') ? host.slice(2) : host;
  const isName = name.length <= 253 && name.split('.').every((label) => HOST_LABEL.test(label));
  // An IPv6 literal, "[::1]" or "::1" (a host here never has a port, so either is unambiguous).
  const isIpv6Literal = host.includes(':') && (host.startsWith('[') ? host.endsWith(']') : true) && parseIp(host)?.family === 6;
  if (!isName && !isIpv6Literal) {
    v.report(node, path, `"${host}" is not a host: write a name without port, "*.suffix" or "*"`);
    return undefined;
  }
  // Requests carry an IPv6 host without brackets, in canonical form: compare like with like.
  return isIpv6Literal ? parseIp(host)!.text : host;
}

/** "/exact", "/prefix/*" or { regex }. */
function readPathPattern(v: Walk, node: Node, path: string): PathPattern | undefined {
  const resolved = v.resolve(node);
  if (isMap(resolved)) {
    const fields = v.fields(resolved, path, ['regex'], ['regex']);
    const regex = fields && v.optional(fields, 'regex', `${path}.regex`, readRegex);
    return regex === undefined ? undefined : { regex };
  }
  if (!isScalar(resolved) || typeof resolved.value !== 'string') {
    v.report(node, path, `expected a path string or {regex: ...}, got ${describe(resolved)}`);
    return undefined;
  }
  const text = resolved.value;
  const star = text.indexOf('*');
  let problem: string | undefined;
  if (!text.startsWith('/')) problem = 'must start with "/"';
  else if (star >= 0 && !(star === text.length - 1 && text.endsWith('/*'))) {
    problem = '"*" is only allowed as a trailing "/*" (use {regex: ...} for more)';
  } else if (/[?#]/.test(text)) problem = 'paths are matched without query string or fragment';
  if (problem !== undefined) {
    v.report(node, path, `"${text}": ${problem}`);
    return undefined;
  }
  return text;
}

/** A SPIFFE id or other principal; a trailing "*" matches any suffix. */
function readPrincipal(v: Walk, node: Node, path: string): string | undefined {
  const principal = v.string(node, path);
  if (principal === undefined) return undefined;
  const star = principal.indexOf('*');
  if (principal === '' || (star >= 0 && star !== principal.length - 1)) {
    v.report(node, path, `"${principal}" is not a principal: "*" is only allowed at the end`);
    return undefined;
  }
  return principal;
}

function readName(v: Walk, node: Node, path: string): string | undefined {
  const name = v.string(node, path);
  if (name === undefined) return undefined;
  if (!DNS_LABEL.test(name)) {
    v.report(node, path, `"${name}" must be 1-63 characters of a-z, 0-9 and "-", starting and ending with a letter or digit`);
    return undefined;
  }
  return name;
}

function readRegex(v: Walk, node: Node, path: string): string | undefined {
  const source = v.string(node, path);
  if (source === undefined) return undefined;
  if (source.length > MAX_REGEX_LENGTH) {
    v.report(node, path, `regex is ${source.length} characters long; the limit is ${MAX_REGEX_LENGTH}`);
    return undefined;
  }
  try {
    new RegExp(source);
  } catch (e) {
    v.report(node, path, `invalid regex: ${(e as Error).message}`);
    return undefined;
  }
  // Regexes run on the replica's event loop against paths and header values the client chooses:
  // only those V8's linear-time engine can run, which takes over a match that backtracks too much
  // (regex-engine.ts), so that no crafted value can stall a replica.
  if (!runsInLinearTime(source)) {
    v.report(node, path, 'this regex cannot run in linear time (it has a lookahead or lookbehind, a backreference, or a bounded repeat over 16 such as {0,32}): rewrite it without them, or a crafted value could stall the replica');
    return undefined;
  }
  return source;
}


function readPositiveInteger(v: Walk, node: Node, path: string): number | undefined {
  const value = v.integer(node, path);
  if (value !== undefined && value < 1) {
    v.report(node, path, `must be a positive whole number, got ${value}`);
    return undefined;
  }
  return value;
}

function readOneOf<T extends string>(options: readonly T[]): ItemReader<T> {
  return (v, node, path) => {
    const value = v.string(node, path);
    if (value === undefined) return undefined;
    if ((options as readonly string[]).includes(value)) return value as T;
    v.report(node, path, `"${value}" is not one of ${options.join(', ')}${suggestion(value, options)}`);
    return undefined;
  };
}

const readString: ItemReader<string> = (v, node, path) => v.string(node, path);
const readBoolean: ItemReader<boolean> = (v, node, path) => v.boolean(node, path);

/** Reads one value; undefined when it was reported (or, for optional fields, absent). */
type ItemReader<T> = (v: Walk, node: Node, path: string) => T | undefined;

interface Item<T> {
  value: T;
  node: Node;
  path: string;
}

/** The walk over one document: typed readers that report what is wrong and where. */
class Walk {
  /** Each alias's anchored node, found in one pass (yaml's Alias.resolve searches the whole document each time). */
  private aliasTargets: Map<Alias, Node | undefined> | undefined;
  /** Values a collection stands for, its aliases expanded. */
  private readonly expandedSizes = new WeakMap<Node, number>();
  private expanded = 0;
  /** Past MAX_ALIAS_EXPANSION: aliases resolve to nothing and no more problems are reported. */
  private overExpanded = false;

  constructor(private readonly source: ValidationSource) {}

  report(node: Node | undefined, path: string, message: string): void {
    if (this.overExpanded) return;
    const error: PolicyError = { file: this.source.file, path, message };
    const offset = node?.range?.[0];
    if (offset !== undefined) {
      const { line, col } = this.source.lines.linePos(offset);
      error.line = line;
      error.column = col;
    }
    this.source.errors.push(error);
  }

  resolve(node: Node): Node {
    if (!isAlias(node)) return node;
    const target = this.aliasTarget(node);
    if (target === undefined) return new Scalar(null);
    this.expanded += this.expandedSize(target);
    if (this.expanded > MAX_ALIAS_EXPANSION) {
      const message = `aliases expand this document to more than ${MAX_ALIAS_EXPANSION} values; refer to big lists fewer times, or write them out`;
      this.report(node, `*${node.source}`, message);
      this.overExpanded = true;
      return new Scalar(null);
    }
    return target;
  }

  /** As yaml resolves an alias: the last node anchored with its name before it, in document order. */
  private aliasTarget(alias: Alias): Node | undefined {
    if (this.aliasTargets === undefined) {
      const targets = new Map<Alias, Node | undefined>();
      const anchored = new Map<string, Node>();
      visit(this.source.document, {
        Node: (_key, node) => {
          if (isAlias(node)) targets.set(node, anchored.get(node.source));
          else if (node.anchor) anchored.set(node.anchor, node);
        },
      });
      this.aliasTargets = targets;
    }
    return this.aliasTargets.get(alias);
  }

  /** How many values a node stands for, aliases inside it expanded; linear in the document thanks to the cache. */
  private expandedSize(node: unknown): number {
    if (isAlias(node)) {
      const target = this.aliasTarget(node);
      return target === undefined ? 1 : this.expandedSize(target);
    }
    if (!isMap(node) && !isSeq(node)) return 1;
    const known = this.expandedSizes.get(node);
    if (known !== undefined) return known;
    // An alias of an enclosing node (a cycle) counts once: the walk follows the schema, so it ends.
    this.expandedSizes.set(node, 1);
    let size = 1;
    for (const item of node.items as unknown[]) {
      size += isPair(item) ? this.expandedSize(item.key) + this.expandedSize(item.value) : this.expandedSize(item);
    }
    this.expandedSizes.set(node, size);
    return size;
  }

  /**
   * The fields of a map, by name; unknown and missing fields are reported here. Undefined when
   * the node is not a map.
   */
  fields(node: Node, path: string, allowed: readonly string[], required: readonly string[]): Map<string, Node> | undefined {
    const map = this.resolve(node);
    if (!isMap(map)) {
      this.report(node, path === '' ? '(document)' : path, `expected a map, got ${describe(map)}`);
      return undefined;
    }
    const fields = new Map<string, Node>();
    for (const pair of map.items) {
      const key = pair.key as Node | null;
      const name = key !== null && isScalar(key) ? String(key.value) : undefined;
      if (key === null || name === undefined || !allowed.includes(name)) {
        this.report(key ?? node, join(path, name ?? '?'), `unknown field${suggestion(name ?? '', allowed)}`);
        continue;
      }
      fields.set(name, valueNode(pair.value as Node | null, key));
    }
    for (const name of required) {
      if (!fields.has(name)) this.report(node, join(path, name), 'required field is missing');
    }
    return fields;
  }

  optional<T>(fields: ReadonlyMap<string, Node>, name: string, path: string, read: ItemReader<T>): T | undefined {
    const node = fields.get(name);
    return node === undefined ? undefined : read(this, node, path);
  }

  /**
   * The valid items of a list, each with where it was written. With `bound`, a list longer than
   * its count is reported at the first entry past it, and the entries past it are not read.
   */
  items<T>(node: Node, path: string, read: ItemReader<T>, bound?: { count: number; message: (given: number) => string }): Item<T>[] {
    const seq = this.resolve(node);
    if (!isSeq(seq)) {
      this.report(node, path, `expected a list, got ${describe(seq)}`);
      return [];
    }
    const items: Item<T>[] = [];
    const given = seq.items.length;
    const readable = bound === undefined ? given : Math.min(given, bound.count);
    for (let i = 0; i < readable; i++) {
      const entry = seq.items[i] as Node;
      const itemPath = `${path}[${i}]`;
      const value = read(this, entry, itemPath);
      if (value !== undefined) items.push({ value, node: entry, path: itemPath });
    }
    if (bound !== undefined && given > bound.count) {
      this.report(seq.items[bound.count] as Node, `${path}[${bound.count}]`, bound.message(given));
    }
    return items;
  }

  /**
   * Items of a list that restricts what a rule matches. An empty list would match nothing, which
   * is never what an author means: omitting the field is how to match everything.
   */
  matchItems<T>(node: Node, path: string, read: ItemReader<T>): Item<T>[] {
    const seq = this.resolve(node);
    if (isSeq(seq) && seq.items.length === 0) {
      this.report(node, path, 'must not be empty (omit the field to match everything)');
    }
    return this.items(node, path, read);
  }

  matchList<T>(node: Node, path: string, read: ItemReader<T>): T[] {
    return this.matchItems(node, path, read).map((item) => item.value);
  }

  /**
   * A list of rules with a `name` each (`what` says which, in errors); names must be unique within
   * the list, and there may be at most maxRulesPerPolicy of them.
   */
  namedList<T extends { name: string }>(node: Node, path: string, read: ItemReader<T>, what: string): T[] {
    const limits = this.source.limits ?? DEFAULT_POLICY_LIMITS;
    const items = this.items(node, path, read, { count: limits.maxRulesPerPolicy, message: (given) => tooManyRules(what, given, limits) });
    const seen = new Set<string>();
    for (const item of items) {
      const name = item.value.name;
      // "" stands for a name already reported as missing or invalid: not a duplicate of another one.
      if (name !== '' && seen.has(name)) {
        const entry = this.resolve(item.node);
        const nameNode = isMap(entry) ? (entry.get('name', true) as Node) : item.node;
        this.report(nameNode, `${item.path}.name`, `duplicate name "${name}"`);
      }
      seen.add(name);
    }
    return items.map((item) => item.value);
  }

  reportDuplicates<T>(items: readonly Item<T>[], key: (value: T) => string, message: (key: string) => string): void {
    const seen = new Set<string>();
    for (const item of items) {
      const k = key(item.value);
      if (seen.has(k)) this.report(item.node, item.path, message(k));
      seen.add(k);
    }
  }

  string(node: Node, path: string): string | undefined {
    return this.scalar(node, path, 'string') as string | undefined;
  }

  boolean(node: Node, path: string): boolean | undefined {
    return this.scalar(node, path, 'boolean') as boolean | undefined;
  }

  integer(node: Node, path: string): number | undefined {
    const value = this.scalar(node, path, 'number') as number | undefined;
    if (value !== undefined && !Number.isInteger(value)) {
      this.report(node, path, `expected a whole number, got ${value}`);
      return undefined;
    }
    return value;
  }

  constant(node: Node | undefined, path: string, expected: string): void {
    if (node === undefined) return;
    const value = this.string(node, path);
    if (value !== undefined && value !== expected) this.report(node, path, `must be ${expected}, got "${value}"`);
  }

  private scalar(node: Node, path: string, type: 'string' | 'number' | 'boolean'): unknown {
    const resolved = this.resolve(node);
    if (isScalar(resolved) && typeof resolved.value === type) return resolved.value;
    this.report(node, path, `expected a ${type}, got ${describe(resolved)}`);
    return undefined;
  }
}

/** A missing value (`key:` with nothing after it) is located at its key. */
function valueNode(value: Node | null, key: Node): Node {
  if (value !== null) return value;
  const empty = new Scalar(null);
  empty.range = key.range;
  return empty;
}

/** Optional fields are left out rather than present with value undefined. */
function dropUndefined<T extends object>(value: T): T {
  for (const key of Object.keys(value) as (keyof T)[]) {
    if (value[key] === undefined) delete value[key];
  }
  return value;
}

function describe(node: Node): string {
  if (isMap(node)) return 'a map';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) {
    const value = node.value;
    if (value === null || value === undefined) return 'nothing (null)';
    if (typeof value === 'string') return `a string ("${value}")`;
    if (typeof value === 'number') return `a number (${value})`;
    if (typeof value === 'boolean') return `a boolean (${value})`;
  }
  return 'an unsupported value';
}

function join(path: string, field: string): string {
  return path === '' ? field : `${path}.${field}`;
}

/** ' (did you mean "from"?)' when a known word is a likely typo of what was written. */
function suggestion(written: string, known: readonly string[]): string {
  let best: string | undefined;
  // Two edits cover a swapped pair ("form"); on very short words that would suggest anything.
  let bestDistance = written.length <= 3 ? 2 : 3;
  for (const candidate of known) {
    const distance = editDistance(written.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best === undefined || best === written ? '' : ` (did you mean "${best}"?)`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length];
}
