// `middlebox explain`: which rules match a described request and what each middlebox would decide.
// The request goes through the same CheckRequest translation as Envoy's, and the decision through
// the live pipeline (src/middlebox/explain.ts); this file reads the policies (files or etcd), peeks
// at shared state read-only when the source is etcd, and prints.
//
// Exit codes: 0 the request would be allowed, 1 it would be denied, 2 bad flags or bad input (a
// policy file that does not validate, an address that is not one), 3 the policies or the state
// could not be read (etcd unreachable).
import type { Etcd3 } from 'etcd3';
import { MiddleboxError } from '../errors';
import { translateCheckRequest } from '../grpc/authz/request';
import type { CheckRequest, HeaderValue, Peer } from '../grpc/envoy-types';
import {
  explain,
  stateToConsult,
  type ExplainState,
  type Explanation,
  type FirewallPolicyTrace,
  type LimitTrace,
  type NatRuleTrace,
} from '../middlebox/explain';
import { hostPort, parseIp } from '../middlebox/ip';
import type { BucketState } from '../middlebox/ratelimit/algorithms';
import type { Verdict } from '../middlebox/types';
import { compileSnapshot } from '../policy/compile';
import { notHeaderNames, readHeaderList, sentListFor } from '../policy/headers';
import type { PolicyLimits } from '../policy/limits';
import type { PolicyDocument, PolicySnapshot } from '../policy/types';
import { withDeadline } from '../state/etcd/client';
import { flowKey } from '../state/etcd/nat';
import { getPolicies, policyKey, readStored } from '../state/etcd/policies';
import { etcdKey } from '../state/etcd/ratelimit';
import { stringOpt, UsageError, type Command } from './command';
import { etcdHelp, etcdOptions, withEtcd } from './etcd-flags';
import { loadFiles, policyLimitHelp, policyLimitOptions, policyLimitsFrom } from './policy';

const EXIT_ALLOW = 0;
const EXIT_DENY = 1;
const EXIT_BAD_INPUT = 2;
const EXIT_UNAVAILABLE = 3;
const ETCD_READ_MS = 5000;
const HEADER_NAME = /^:?[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const METHOD = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

export const explainCommand: Command = {
  name: 'explain',
  summary: 'Show which rules match a described request and what the firewall, rate limits and NAT would decide. Changes nothing.',
  usage:
    'middlebox explain [-f FILE ...] [--method M] [--path P] [--host H] [--header "name: value" ...] [--source IP[:PORT]] ' +
    '[--dest IP[:PORT]] [--dest-port N] [--principal ID] [--protocol http|tcp] [--authz-headers NAMES] [-o text|json] [--etcd URLS] [--prefix PREFIX]',
  help: [
    'Policies come from -f FILE (one or more; - for stdin) or, without -f, from etcd. With etcd the',
    'shared rate-limit buckets and NAT table are read (never written) to say what they would grant.',
    '',
    '  -f, --filename FILE      policy file (YAML or JSON, several documents allowed; - for stdin); repeatable',
    '  --method METHOD          HTTP method (default GET)',
    '  --path PATH              request path (default /); a query is dropped, as the middlebox drops it',
    '  --host HOST              Host / :authority; a port is dropped, as the middlebox drops it',
    '  --header "NAME: VALUE"   a request header; repeatable (a repeated name joins with ",")',
    '  --source IP[:PORT]       the client address ([v6]:port for IPv6 with a port)',
    '  --dest IP[:PORT]         the address the client connected to',
    '  --dest-port N            the destination port (instead of --dest IP:PORT)',
    '  --principal ID           the caller\'s SPIFFE id',
    '  --protocol P             http (default) or tcp (a connection: no method, host, path or headers)',
    '  --authz-headers NAMES    as a sidecar rendered with `envoy bootstrap --authz-headers NAMES` would ask:',
    '                           a request that reaches an enforced rule on a header left out is refused',
    '                           (403 headers_not_sent); default: every header is sent',
    '  -o, --output FORMAT      text (default) or json',
    ...policyLimitHelp(),
    ...etcdHelp,
    '',
    'Exit status: 0 allowed, 1 denied, 2 bad flags or input (an invalid or unreadable policy, TLS or password file, a bad address),',
    '3 the policies or state could not be read (etcd unreachable).',
  ],
  options: {
    filename: { type: 'string', short: 'f', multiple: true },
    method: { type: 'string' },
    path: { type: 'string' },
    host: { type: 'string' },
    header: { type: 'string', multiple: true },
    source: { type: 'string' },
    dest: { type: 'string' },
    'dest-port': { type: 'string' },
    principal: { type: 'string' },
    protocol: { type: 'string' },
    'authz-headers': { type: 'string' },
    output: { type: 'string', short: 'o' },
    ...etcdOptions,
    ...policyLimitOptions,
  },
  async run({ values }) {
    const format = stringOpt(values, 'output') ?? 'text';
    if (format !== 'text' && format !== 'json') throw new UsageError(`-o must be text or json, got ${JSON.stringify(format)}`);
    const sent = sentHeaders(values);
    const files = filenames(values);
    const etcdFlags = Object.keys(etcdOptions).filter((name) => values[name] !== undefined);
    if (files.length > 0 && etcdFlags.length > 0) {
      throw new UsageError(`give -f FILE or --${etcdFlags[0]}, not both: the policies come from one place`);
    }
    const { check, destinationPortOnly } = describedRequest(values);
    const translation = translateCheckRequest(check);
    if (!translation.ok) {
      // As the live path would: refused before any policy is consulted.
      const verdict: Verdict = { allow: false, status: translation.status, reason: translation.reason };
      if (format === 'json') process.stdout.write(`${JSON.stringify({ verdict, refused: translation.message }, null, 2)}\n`);
      else process.stdout.write(`Verdict   DENY ${translation.status} (${translation.reason}): ${translation.message}; no policy is consulted\n`);
      return EXIT_DENY;
    }
    const req = translation.request;
    // Envoy always reports an address with a port; a port alone cannot go through the translation.
    if (destinationPortOnly !== undefined) req.destination = { ...req.destination, port: destinationPortOnly };
    const now = Date.now();

    let loaded: Loaded;
    try {
      const limits = policyLimitsFrom(values);
      loaded = files.length > 0 ? fromFiles(files, limits) : await withEtcd(values, (client, prefix) => fromEtcd(client, prefix, limits, (s) => stateToConsult(s, req, now)));
    } catch (e) {
      return failure(e);
    }
    const explanation = explain(loaded.snapshot, req, { now, state: loaded.state, sentHeaders: sent });
    if (format === 'json') {
      process.stdout.write(`${JSON.stringify({ source: loaded.source, ...explanation, warnings: loaded.warnings }, null, 2)}\n`);
    } else {
      for (const w of loaded.warnings) process.stderr.write(`warning: ${w}\n`);
      process.stdout.write(render(explanation, loaded.source));
    }
    return explanation.verdict.allow ? EXIT_ALLOW : EXIT_DENY;
  },
};

/** --authz-headers as the sidecar's list, the names always sent included; undefined: every header. */
function sentHeaders(values: Record<string, unknown>): string | undefined {
  const text = stringOpt(values, 'authz-headers');
  if (text === undefined) return undefined;
  const { names, bad } = readHeaderList(text);
  if (bad.length) throw new UsageError(`--authz-headers: ${notHeaderNames(bad)}`);
  return sentListFor(names);
}

/** Bad input is exit 2, an unreachable etcd 3; never a stack trace. */
function failure(e: unknown): number {
  if (e instanceof UsageError) throw e;
  const message = (e as Error)?.message ?? String(e);
  process.stderr.write(`middlebox explain: ${message}\n`);
  if (e instanceof MiddleboxError) {
    for (const d of e.details) process.stderr.write(`${d}\n`);
    // A file named on the command line that cannot be used (a missing CA, an empty password file) is bad input too.
    if (e.code === 'policy_invalid' || e.code === 'bad_etcd_endpoint' || e.code === 'file_not_found') return EXIT_BAD_INPUT;
  } else if (process.env.MIDDLEBOX_DEBUG) {
    process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
  }
  return EXIT_UNAVAILABLE;
}

// --- the described request ----------------------------------------------------------------------------

function filenames(values: Record<string, unknown>): string[] {
  const f = values.filename;
  return Array.isArray(f) ? (f as string[]) : typeof f === 'string' ? [f] : [];
}

/**
 * The CheckRequest Envoy's ext_authz filter would send for the described request, and the
 * destination port when it was given without an address.
 */
export function describedRequest(values: Record<string, unknown>): { check: CheckRequest; destinationPortOnly?: number } {
  const protocol = stringOpt(values, 'protocol') ?? 'http';
  if (protocol !== 'http' && protocol !== 'tcp') throw new UsageError(`--protocol must be http or tcp, got ${JSON.stringify(protocol)}`);
  const headerTexts = Array.isArray(values.header) ? (values.header as string[]) : [];
  if (protocol === 'tcp') {
    for (const flag of ['method', 'path', 'host'] as const) {
      if (stringOpt(values, flag) !== undefined) throw new UsageError(`--${flag} does not apply to --protocol tcp (a connection has no ${flag})`);
    }
    if (headerTexts.length > 0) throw new UsageError('--header does not apply to --protocol tcp (a connection has no headers)');
  }

  const source = endpointArg(values, 'source');
  const dest = endpointArg(values, 'dest');
  const destPortText = stringOpt(values, 'dest-port');
  if (destPortText !== undefined) {
    if (dest.port !== undefined) throw new UsageError('give the destination port once: --dest IP:PORT or --dest-port N');
    dest.port = port(destPortText, '--dest-port');
  }
  const principal = stringOpt(values, 'principal');
  const destinationPortOnly = dest.ip === undefined ? dest.port : undefined;
  const check: CheckRequest = {
    attributes: { source: peer(source, principal), destination: peer(dest) },
  };
  if (protocol === 'tcp') return { check, destinationPortOnly };

  const method = stringOpt(values, 'method') ?? 'GET';
  if (!METHOD.test(method)) throw new UsageError(`--method ${JSON.stringify(method)} is not an HTTP method`);
  const path = stringOpt(values, 'path') ?? '/';
  if (!path.startsWith('/')) throw new UsageError(`--path must start with "/", got ${JSON.stringify(path)}`);
  const host = stringOpt(values, 'host');
  if (host !== undefined && host.trim() === '') throw new UsageError('--host must not be empty');
  const headers = headerTexts.map(headerArg);
  // Envoy's header map carries the pseudo-headers too; rules may name them.
  const given = new Set(headers.map((h) => h.key!.toLowerCase()));
  const pseudo: HeaderValue[] = [
    { key: ':method', value: method },
    { key: ':path', value: path },
    ...(host !== undefined ? [{ key: ':authority', value: host }] : []),
  ].filter((h) => !given.has(h.key));
  check.attributes!.request = {
    http: { method, path, ...(host !== undefined ? { host } : {}), header_map: { headers: [...pseudo, ...headers] } },
  };
  return { check, destinationPortOnly };
}

function headerArg(text: string): HeaderValue {
  // A pseudo-header (":authority: x") starts with its own colon.
  const colon = text.indexOf(':', text.startsWith(':') ? 1 : 0);
  const name = colon < 0 ? '' : text.slice(0, colon).trim();
  if (colon < 0 || !HEADER_NAME.test(name)) {
    throw new UsageError(`--header ${JSON.stringify(text)} is not "name: value" with a valid header name`);
  }
  return { key: name.toLowerCase(), value: text.slice(colon + 1).trim() };
}

interface EndpointArg {
  ip?: string;
  port?: number;
}

/** IP, IP:PORT, [v6] or [v6]:PORT; a bare IPv6 address has no port. */
function endpointArg(values: Record<string, unknown>, flag: 'source' | 'dest'): EndpointArg {
  const text = stringOpt(values, flag);
  if (text === undefined) return {};
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  const v4WithPort = /^([^:]+):(\d+)$/.exec(text);
  const host = bracketed ? bracketed[1]! : v4WithPort ? v4WithPort[1]! : text;
  const portText = bracketed ? bracketed[2] : v4WithPort ? v4WithPort[2] : undefined;
  const ip = parseIp(host);
  if (ip === undefined) throw new UsageError(`--${flag} ${JSON.stringify(text)} is not IP[:PORT] (IPv6 with a port as [addr]:port)`);
  return { ip: ip.text, port: portText === undefined ? undefined : port(portText, `--${flag}`) };
}

function port(text: string, flag: string): number {
  const n = /^\d{1,5}$/.test(text) ? Number(text) : 0;
  if (n < 1 || n > 65535) throw new UsageError(`${flag}: port must be 1-65535, got ${JSON.stringify(text)}`);
  return n;
}

function peer(e: EndpointArg, principal?: string): Peer {
  const p: Peer = {};
  if (e.ip !== undefined) p.address = { socket_address: { address: e.ip, ...(e.port !== undefined ? { port_value: e.port } : {}) } };
  if (principal !== undefined) p.principal = principal;
  return p;
}

// --- where the policies come from ---------------------------------------------------------------------

type PolicyOrigin = { kind: 'files'; files: string[] } | { kind: 'etcd'; prefix: string; policies: number; revision?: string };

interface Loaded {
  snapshot: PolicySnapshot;
  source: PolicyOrigin;
  state?: ExplainState;
  warnings: string[];
}

/** All files are validated (as `policy validate` does); any problem in any of them is bad input, reported together. */
function fromFiles(files: string[], limits: PolicyLimits): Loaded {
  const docs = loadFiles(files, ' in the policy files', limits);
  return { snapshot: compileSnapshot(docs, 1), source: { kind: 'files', files }, warnings: [] };
}

/**
 * The policies stored in etcd, taken in as a replica takes them in, and the shared state this
 * request would touch: its rate-limit buckets, its NAT flow's mapping, the drained backends.
 */
async function fromEtcd(client: Etcd3, prefix: string, limits: PolicyLimits, consult: (s: PolicySnapshot) => ReturnType<typeof stateToConsult>): Promise<Loaded> {
  const stored = await getPolicies(client, prefix, ETCD_READ_MS);
  const docs: PolicyDocument[] = [];
  const warnings: string[] = [];
  for (const [name, text] of stored) {
    const { document, errors } = readStored(policyKey(prefix, name), name, text, undefined, limits);
    if (document) docs.push(document);
    else {
      warnings.push(
        `stored policy ${JSON.stringify(name)} is refused by every replica (${errors.map((e) => e.message).join('; ')}); ` +
          'replicas keep its last good version, which explain cannot see, so it is left out',
      );
    }
  }
  const snapshot = compileSnapshot(docs, 1);
  const wanted = consult(snapshot);
  const buckets = new Map<string, BucketState | null>();
  for (const b of wanted.buckets) {
    const text = await withDeadline('rate-limit bucket read', ETCD_READ_MS, () => client.get(etcdKey(prefix, b.rule, b.key)).string());
    buckets.set(b.ref, text === null ? null : bucketState(text));
  }
  const natFlows = new Map<string, string>();
  for (const f of wanted.flows) {
    const text = await withDeadline('NAT table read', ETCD_READ_MS, () => client.get(flowKey(prefix, f.rule, f.flow)).string());
    const backend = text === null ? undefined : storedBackend(text, f.rule.id, f.flow);
    if (backend !== undefined) natFlows.set(f.ref, backend);
  }
  // `<prefix>/nat/drained/<backend>`: see src/state/etcd/nat.ts.
  const drainedPrefix = `${prefix}/nat/drained/`;
  const drainedKeys = await withDeadline('NAT drained read', ETCD_READ_MS, () => client.getAll().prefix(drainedPrefix).keys());
  const drained = new Set(drainedKeys.map((k) => k.slice(drainedPrefix.length)));
  return {
    snapshot,
    source: { kind: 'etcd', prefix, policies: docs.length },
    state: { buckets, natFlows, natTableConsulted: true, drained },
    warnings,
  };
}

/** As the rate-limit store reads it: anything that is not a bucket state counts as an empty bucket. */
function bucketState(text: string): BucketState | null {
  try {
    const v = JSON.parse(text) as Record<string, unknown> | null;
    if (v !== null && typeof v === 'object' && (('w' in v && 'c' in v) || ('k' in v && 't' in v))) return v as unknown as BucketState;
  } catch {
    // fall through
  }
  return null;
}

function storedBackend(text: string, ruleId: string, flow: string): string | undefined {
  try {
    const v = JSON.parse(text) as { flow?: unknown; backend?: unknown; rule?: unknown } | null;
    if (v && typeof v.backend === 'string' && v.flow === flow && v.rule === ruleId) return v.backend;
  } catch {
    // fall through
  }
  return undefined;
}

// --- text output ----------------------------------------------------------------------------------------

export function render(x: Explanation, origin: PolicyOrigin): string {
  const out: string[] = [];
  const from = origin.kind === 'files' ? origin.files.join(', ') : `etcd ${origin.prefix} (${origin.policies} polic${origin.policies === 1 ? 'y' : 'ies'})`;
  out.push(`Policies  ${from}`);
  out.push(`Request   ${requestLine(x)}`);
  out.push(`Verdict   ${verdictLine(x.verdict)}`);

  out.push('', 'Firewall (policies in name order; in a policy the first matching rule decides, else its default)');
  if (x.firewall.policies.length === 0) out.push('  no policy has a firewall: allowed');
  for (const p of x.firewall.policies) out.push(...firewallPolicy(p));

  const applying = x.rateLimits.limits.filter((l) => l.applies);
  const others = x.rateLimits.limits.filter((l) => !l.applies);
  const rlHead = x.rateLimits.reached ? '' : ' — not reached: the firewall denied, so no token is taken; these would apply';
  out.push('', `Rate limits (every matching limit takes one token)${rlHead}`);
  if (x.rateLimits.limits.length === 0) out.push('  no policy has rate limits');
  else if (applying.length === 0) out.push('  none applies');
  for (const l of applying) out.push(...limitLines(l));
  for (const l of others) out.push(`  ${l.id}: does not apply: ${l.mismatches.join('; ')}`);
  if (x.rateLimits.verdict && !x.rateLimits.verdict.allow) {
    out.push(`  → ${x.rateLimits.verdict.policy}/${x.rateLimits.verdict.rule} would deny (429)`);
  }

  out.push('', `NAT (ext_proc only; the first matching rule acts)${x.nat.rules.length > 0 && !x.nat.reached ? ' — not reached: the request is denied' : ''}`);
  if (x.nat.rules.length === 0) out.push('  no policy has NAT rules');
  for (const r of x.nat.rules) out.push(natRuleLine(r));
  const d = x.nat.decision;
  if (d) {
    out.push(`  → backend ${d.backend}  (affinity ${d.affinity}; pool ${d.pool.join(', ')}${d.drained.length ? `; drained ${d.drained.join(', ')}` : ''})`);
    out.push(`    ${d.summary}`);
  } else if (x.nat.rules.length > 0) {
    out.push('  → no rule matches: the request is not translated');
  }

  if (x.notes.length > 0) {
    out.push('', 'Notes');
    for (const n of x.notes) out.push(`  - ${n}`);
  }
  return `${out.join('\n')}\n`;
}

function requestLine(x: Explanation): string {
  const r = x.request;
  const src = r.source.ip === undefined ? 'no source' : `from ${hostPort(r.source.ip, r.source.port)}`;
  const dst =
    r.destination.ip !== undefined ? `  to ${hostPort(r.destination.ip, r.destination.port)}` : r.destination.port !== undefined ? `  to port ${r.destination.port}` : '';
  const principal = r.source.principal ? `  principal ${r.source.principal}` : '';
  if (r.protocol === 'tcp') return `TCP connection ${src}${dst}${principal}`;
  const headers = Object.keys(r.headers).filter((h) => !h.startsWith(':'));
  const shownHeaders = headers.length ? `  headers ${headers.join(', ')}` : '';
  return `${r.method} ${r.host ?? ''}${r.path}  ${src}${dst}${principal}${shownHeaders}`;
}

function verdictLine(v: Verdict): string {
  let line: string;
  if (v.allow) {
    line = 'ALLOW';
    if (v.policy) line += ` (first enforced allow rule: ${v.policy}/${v.rule})`;
    if (v.nat) line += `; NAT → ${v.nat.backend} by ${v.nat.policy}/${v.nat.rule}`;
  } else {
    const by = v.middlebox ? ` by ${v.middlebox} ${v.policy}/${v.rule}` : v.policy ? ` at ${v.policy}/${v.rule}` : '';
    line = `DENY ${v.status ?? ''}${by} (${v.reason})`;
    const retry = v.headers?.find((h) => h.key === 'retry-after');
    if (retry) line += `, retry-after ${retry.value} s`;
  }
  for (const s of v.shadowDenials ?? []) line += `; shadow ${s.middlebox}/${s.policy}/${s.rule} would have denied`;
  return line;
}

const ROLE_TEXT: Record<string, string> = {
  decides: 'MATCH  ← decides',
  'shadow-deny': 'MATCH  (shadow: would deny, recorded; evaluation goes on)',
  'shadow-match': 'MATCH  (shadow allow: no effect)',
  'after-decision': 'not looked at: after the deciding rule',
  'not-evaluated': 'not looked at: the selector does not match',
};

function firewallPolicy(p: FirewallPolicyTrace): string[] {
  const tags = [p.shadow ? 'shadow' : '', p.reached ? '' : 'not reached: an earlier policy denied'].filter(Boolean);
  const lines = [`  policy ${p.policy}${tags.length ? `  (${tags.join('; ')})` : ''}`];
  if (!p.selector.matched) {
    lines.push(`    selector does not match: ${p.selector.mismatches.join('; ')} → not evaluated`);
    return lines;
  }
  const width = Math.max(4, ...p.rules.map((r) => r.name.length));
  const actionWidth = p.rules.some((r) => r.shadow) ? 12 : 6;
  p.rules.forEach((r, i) => {
    const what = r.role === 'no-match' ? `no match: ${r.mismatches.join('; ')}` : ROLE_TEXT[r.role]!;
    const extra = r.role === 'after-decision' ? `; it would ${r.matched ? 'match' : 'not match'}` : '';
    lines.push(`    ${String(i + 1).padStart(2)}. ${r.name.padEnd(width)}  ${(r.shadow ? `${r.action} shadow` : r.action).padEnd(actionWidth)} ${what}${extra}`);
  });
  const decided = p.decidingRule ? `rule ${p.decidingRule}` : `the default (${p.defaultAction})`;
  const outcome = p.outcome === 'shadow-deny' ? 'deny, but the policy is shadow: recorded, not enforced' : p.outcome;
  lines.push(`    → ${outcome} by ${decided}`);
  return lines;
}

function limitLines(l: LimitTrace): string[] {
  const by = l.key.length === 0 ? 'one bucket for all' : `key ${l.key.map((k) => `${k.by}=${JSON.stringify(k.value)}`).join(' ')}`;
  const burst = l.burst !== undefined ? ` burst ${l.burst}` : '';
  const shadow = l.shadow ? ' shadow' : '';
  return [
    `  ${l.id}: ${l.limit} per ${l.per}, ${l.algorithm}${burst}, ${l.consistency}${shadow}; ${by}`,
    `    ${l.bucket?.summary ?? ''}`,
  ];
}

function natRuleLine(r: NatRuleTrace): string {
  if (r.matched) return `  ${r.id}: matches${r.first ? '  ← acts' : ' (an earlier rule acts)'}`;
  return `  ${r.id}: no match: ${r.mismatches.join('; ')}`;
}
