// `middlebox explain`: what every middlebox would decide for one described request, and why.
//
// The verdict is not recomputed here: it is the live pipeline's own decide(), run against
// read-only ports that record what the engines ask for instead of consuming tokens or writing NAT
// mappings. The traces beside it (every firewall rule, every rate limit, every NAT rule) evaluate
// the compiled matchers the engines use; the per-field reasons ("why not") come from the same
// builders in firewall/match.ts, applied to one field at a time. So explain and the live verdict
// cannot drift apart: if an engine changes, explain's verdict changes with it. Pure: no I/O; the
// shared state to peek at (rate-limit buckets, NAT mappings, drained backends) is passed in.
import type {
  CompiledNatRule,
  CompiledPolicy,
  CompiledRateLimit,
  FirewallAction,
  FirewallRuleSpec,
  HeaderMatchSpec,
  PathPattern,
  PolicySnapshot,
  RateLimitAlgorithm,
  Consistency,
  RequestMatcher,
  TrafficMatchSpec,
} from '../policy/types';
import { keysTcpLacks } from '../policy/compile';
import { GuardedHeaders, headerGuard, UnsentHeaderRead, unsentHeaderVerdict } from '../policy/headers';
import type { NatTablePort, RateLimitGrant, RateLimitPort, RateLimitRequest } from '../state/port';
import { decideFirewall } from './firewall/engine';
import {
  destinationMatcher,
  headerMatcher,
  hostMatcher,
  methodMatcher,
  pathMatcher,
  portMatcher,
  principalMatcher,
  sourceMatcher,
} from './firewall/match';
import { decideNat } from './nat/engine';
import { decide } from './pipeline';
import { peek, type BucketState, type LimitParams } from './ratelimit/algorithms';
import { bucketKey, decideRateLimit } from './ratelimit/engine';
import type { NatDecision, RequestAttributes, Verdict } from './types';

// --- input -------------------------------------------------------------------------------------------

/** Shared state read beforehand (from etcd), keyed by limitRef / flowRef. What is left out was not consulted. */
export interface ExplainState {
  /** Rate-limit buckets: null means consulted and absent (a full bucket). */
  buckets?: ReadonlyMap<string, BucketState | null>;
  /** NAT table mappings (flow → backend). A flow missing from a consulted table has no mapping. */
  natFlows?: ReadonlyMap<string, string>;
  /** True when natFlows holds every mapping that was asked for (absent = no mapping). */
  natTableConsulted?: boolean;
  /** Drained backends; undefined: not consulted. */
  drained?: ReadonlySet<string>;
}

export interface ExplainOptions {
  /** Wall-clock milliseconds (windows are aligned to the epoch). Default Date.now(). */
  now?: number;
  state?: ExplainState;
  /** The list a sidecar rendered with `--authz-headers` sends (sentListFor); default every header. */
  sentHeaders?: string;
}

/** Key of a rate-limit bucket in ExplainState.buckets. */
export function limitRef(ruleId: string, key: string): string {
  return `${ruleId}\u0000${key}`;
}

/** Key of a NAT flow in ExplainState.natFlows. */
export function flowRef(ruleId: string, flow: string): string {
  return `${ruleId}\u0000${flow}`;
}

// --- output ------------------------------------------------------------------------------------------

export interface Explanation {
  request: RequestSummary;
  /** What the live pipeline (firewall → rate limits → NAT, as on the ext_proc path) answers. */
  verdict: Verdict;
  firewall: FirewallExplanation;
  rateLimits: RateLimitExplanation;
  nat: NatExplanation;
  /** Things worth knowing about this request or this explanation. */
  notes: string[];
}

export interface RequestSummary {
  protocol: 'http' | 'tcp';
  source: { ip?: string; port?: number; principal?: string };
  destination: { ip?: string; port?: number };
  method?: string;
  host?: string;
  path?: string;
  headers: Record<string, string>;
}

export interface FirewallExplanation {
  /** Policies that have a firewall, in evaluation order (by name). */
  policies: FirewallPolicyTrace[];
  /** The firewall engine's own verdict. */
  verdict: Verdict;
}

export type PolicyOutcome = 'not-selected' | 'allow' | 'deny' | 'shadow-deny';

export interface FirewallPolicyTrace {
  policy: string;
  shadow: boolean;
  /** False when an earlier enforced policy already denied: the engine stops there. */
  reached: boolean;
  selector: { matched: boolean; mismatches: string[] };
  rules: FirewallRuleTrace[];
  defaultAction: FirewallAction;
  /** The first matching enforced rule; undefined when the default decides (or not selected). */
  decidingRule?: string;
  outcome: PolicyOutcome;
}

/**
 * decides: the first matching enforced rule; shadow-deny: a matching shadow deny rule before it
 * (recorded, evaluation goes on); shadow-match: a matching shadow allow rule (records nothing);
 * no-match; after-decision: a rule after the deciding one; not-evaluated: the policy's selector
 * does not match. The engine looks at neither of the last two; their match is shown for information.
 */
export type RuleRole = 'decides' | 'shadow-deny' | 'shadow-match' | 'no-match' | 'after-decision' | 'not-evaluated';

export interface FirewallRuleTrace {
  name: string;
  action: FirewallAction;
  shadow: boolean;
  matched: boolean;
  /** Why the rule does not match, one entry per field that fails. */
  mismatches: string[];
  role: RuleRole;
}

export interface RateLimitExplanation {
  /** False when the firewall denied: the pipeline then asks no limit. */
  reached: boolean;
  /** Every rate limit of every policy, in evaluation order. */
  limits: LimitTrace[];
  /** The rate-limit engine's verdict over the limits that apply (undefined: none applies). */
  verdict?: Verdict;
}

export interface LimitTrace {
  /** policy/rule */
  id: string;
  policy: string;
  name: string;
  applies: boolean;
  mismatches: string[];
  limit: number;
  per: string;
  algorithm: RateLimitAlgorithm;
  burst?: number;
  consistency: Consistency;
  shadow: boolean;
  /** The `by` keys and this request's value of each (the bucket). */
  key: { by: string; value: string }[];
  /** Only for limits that apply. */
  bucket?: BucketPeek;
}

export interface BucketPeek {
  consulted: boolean;
  /** Tokens available before this request (consulted only). */
  available?: number;
  /** Whether the bucket would grant this request a token (assumed when not consulted). */
  wouldGrant: boolean;
  retryAfterMs?: number;
  resetMs?: number;
  summary: string;
}

export interface NatExplanation {
  /** False when the request is denied: only allowed requests are translated. */
  reached: boolean;
  /** Every NAT rule of every policy, in evaluation order. */
  rules: NatRuleTrace[];
  decision?: NatChoice;
}

export interface NatRuleTrace {
  id: string;
  policy: string;
  name: string;
  matched: boolean;
  /** The first matching rule: the one that acts. */
  first: boolean;
  mismatches: string[];
}

export interface NatChoice extends NatDecision {
  affinity: string;
  pool: string[];
  /** Backends known to be drained (when the drained list was consulted). */
  drained: string[];
  /** table: the flow's existing mapping; rendezvous: a new flow's deterministic choice; round-robin: no flow key. */
  how: 'table' | 'rendezvous' | 'round-robin';
  summary: string;
}

// --- explain -----------------------------------------------------------------------------------------

export function explain(snapshot: PolicySnapshot, req: RequestAttributes, opts: ExplainOptions = {}): Explanation {
  const now = opts.now ?? Date.now();
  const state = opts.state ?? {};
  const notes: string[] = [];

  // The verdict: the live pipeline itself, NAT included (as on the ext_proc path).
  const liveLimits = new ExplainRateLimits(state);
  const liveNat = new ExplainNatTable(state);
  const guard = opts.sentHeaders === undefined ? undefined : headerGuard(snapshot, opts.sentHeaders);
  let verdict: Verdict;
  try {
    const asked = guard ? { ...req, headers: new GuardedHeaders(req.headers, guard) } : req;
    verdict = settled(decide(snapshot, asked, { rateLimits: liveLimits, nat: liveNat }, now, { nat: true }), 'pipeline');
  } catch (e) {
    if (!(e instanceof UnsentHeaderRead)) throw e;
    // What the replica answers such a sidecar; the traces below show what the rules would do with the header.
    verdict = unsentHeaderVerdict(e);
    notes.push(`rule ${e.policy}/${e.rule} reads header ${e.read.name}, which a sidecar rendered with this --authz-headers does not send: the request is refused (403 headers_not_sent); add ${e.read.name} to the list`);
  }
  // Advertised headers would show invented numbers when a bucket was not consulted.
  if (verdict.responseHeaders && liveLimits.unconsulted) verdict = withoutResponseHeaders(verdict);

  const firewall = explainFirewall(snapshot, req, notes);
  const rateLimits = explainRateLimits(snapshot, req, state, now, firewall.verdict.allow);
  const nat = explainNat(snapshot, req, state, now, verdict.allow);

  if (req.source.ip === undefined) notes.push('the request has no source address: `from` rules never match it and a sourceIp key is empty');
  if (req.protocol === 'http' && !req.host) notes.push('the request has no host: `hosts` matches never match it');
  if (nat.decision) notes.push('NAT acts only on the ext_proc path (plain HTTP on the outbound listener, or --inbound-filter ext_proc); ext_authz gets the same allow/deny without it');
  if (rateLimits.limits.some((l) => l.bucket && !l.bucket.consulted)) {
    notes.push('rate-limit state was not consulted: a limit that is used up would deny where this says it grants');
  }
  return { request: summarise(req), verdict, firewall, rateLimits, nat, notes };
}

/** The shared state an explanation of this request could peek at: what to read from etcd. */
export interface StateToConsult {
  /** strict and leased limits that apply (local limits live in each replica's memory). */
  buckets: { ref: string; rule: CompiledRateLimit; key: string }[];
  /** NAT flows whose mapping the engine looks up. */
  flows: { ref: string; rule: CompiledNatRule; flow: string }[];
}

export function stateToConsult(snapshot: PolicySnapshot, req: RequestAttributes, now = Date.now()): StateToConsult {
  const limits = new ExplainRateLimits({});
  settled(decideRateLimit(snapshot, req, limits, now), 'rate limits');
  const table = new ExplainNatTable({});
  settled(decideNat(snapshot, req, table, now), 'NAT');
  return {
    buckets: limits.asks
      .filter((a) => a.req.rule.consistency !== 'local')
      .map((a) => ({ ref: limitRef(a.req.rule.id, a.req.key), rule: a.req.rule, key: a.req.key })),
    flows: table.lookups.map((l) => ({ ref: flowRef(l.rule.id, l.flow), rule: l.rule, flow: l.flow })),
  };
}

// --- firewall ----------------------------------------------------------------------------------------

function explainFirewall(snapshot: PolicySnapshot, req: RequestAttributes, notes: string[]): FirewallExplanation {
  const verdict = decideFirewall(snapshot, req);
  const policies: FirewallPolicyTrace[] = [];
  let denied = false;
  for (const policy of snapshot.policies) {
    const firewall = policy.firewall;
    if (firewall === undefined) continue;
    const specs = policy.document.spec.firewall?.rules ?? [];
    const selected = policy.selector(req);
    const trace: FirewallPolicyTrace = {
      policy: policy.name,
      shadow: policy.shadow,
      reached: !denied,
      selector: { matched: selected, mismatches: selected ? [] : why(policy.selector, trafficChecks(policy.document.spec.selector), req, 'selector ') },
      rules: [],
      defaultAction: firewall.defaultAction,
      outcome: 'not-selected',
    };
    let decided = false;
    firewall.rules.forEach((rule, i) => {
      const matched = rule.matches(req);
      const mismatches = matched ? [] : why(rule.matches, ruleChecks(specs[i]), req);
      let role: RuleRole;
      if (!selected) role = 'not-evaluated';
      else if (decided) role = 'after-decision';
      else if (!matched) role = 'no-match';
      else if (!rule.shadow) role = 'decides';
      else role = rule.action === 'deny' ? 'shadow-deny' : 'shadow-match';
      if (role === 'decides') {
        decided = true;
        trace.decidingRule = rule.name;
      }
      trace.rules.push({ name: rule.name, action: rule.action, shadow: rule.shadow, matched, mismatches, role });
    });
    if (selected) {
      const decidingRule = firewall.rules.find((r) => r.name === trace.decidingRule);
      const action = decidingRule?.action ?? firewall.defaultAction;
      trace.outcome = action === 'allow' ? 'allow' : policy.shadow ? 'shadow-deny' : 'deny';
      if (trace.outcome === 'deny' && trace.reached) {
        denied = true;
        const rule = trace.decidingRule ?? 'default';
        if (verdict.allow || verdict.policy !== policy.name || verdict.rule !== rule) {
          notes.push(`internal: the trace says ${policy.name}/${rule} denies but the firewall engine says otherwise; the verdict shown is the engine's`);
        }
      }
    }
    policies.push(trace);
  }
  if (!denied && !verdict.allow) notes.push('internal: the firewall engine denies but the trace found no deny; the verdict shown is the engine\'s');
  return { policies, verdict };
}

// --- rate limits -------------------------------------------------------------------------------------

function explainRateLimits(
  snapshot: PolicySnapshot,
  req: RequestAttributes,
  state: ExplainState,
  now: number,
  reached: boolean,
): RateLimitExplanation {
  // The engine says which limits apply and with which key, exactly as it would live.
  const port = new ExplainRateLimits(state);
  const verdict = settled(decideRateLimit(snapshot, req, port, now), 'rate limits');
  const asked = new Map(port.asks.map((a) => [a.req.rule, a]));
  const limits: LimitTrace[] = [];
  for (const policy of snapshot.policies) {
    const specs = policy.document.spec.rateLimits ?? [];
    policy.rateLimits.forEach((rule, i) => {
      const spec = specs[i];
      const ask = asked.get(rule);
      const lacks = spec === undefined ? [] : keysTcpLacks(spec.by, req);
      const trace: LimitTrace = {
        id: rule.id,
        policy: rule.policy,
        name: rule.name,
        applies: ask !== undefined,
        mismatches:
          ask !== undefined
            ? []
            : policy.selector(req) && lacks.length > 0
              ? [`by: this TCP connection has no ${lacks.join(', ')}, so the limit does not apply to it`]
              : matchWhy(policy, rule.matches, spec?.match, req),
        limit: rule.limit,
        per: spec?.per ?? `${rule.perMs}ms`,
        algorithm: rule.algorithm,
        consistency: rule.consistency,
        shadow: rule.shadow,
        key: rule.keyParts.map((part, k) => ({ by: spec?.by[k] ?? `#${k}`, value: part(req) })),
      };
      if (rule.burst !== undefined) trace.burst = rule.burst;
      if (ask) trace.bucket = ask.peek;
      limits.push(trace);
    });
  }
  const explanation: RateLimitExplanation = { reached, limits };
  if (verdict) explanation.verdict = port.unconsulted && verdict.responseHeaders ? withoutResponseHeaders(verdict) : verdict;
  return explanation;
}

/** A rate-limit port that consumes nothing: grants from peeked state, or assumes a token when none was read. */
class ExplainRateLimits implements RateLimitPort {
  readonly asks: { req: RateLimitRequest; peek: BucketPeek }[] = [];
  unconsulted = false;

  constructor(private readonly state: ExplainState) {}

  consume(req: RateLimitRequest): RateLimitGrant {
    const rule = req.rule;
    const ref = limitRef(rule.id, req.key);
    const buckets = this.state.buckets;
    if (rule.consistency === 'local' || buckets === undefined || !buckets.has(ref)) {
      this.unconsulted = true;
      const where = rule.consistency === 'local' ? 'local consistency: each replica counts in its own memory' : 'state not consulted';
      this.asks.push({ req, peek: { consulted: false, wouldGrant: true, summary: `would consume 1 token of limit ${rule.id} (${where})` } });
      return { allowed: true, limit: rule.limit, remaining: Math.max(0, rule.limit - 1), resetMs: 0, retryAfterMs: 0 };
    }
    const params: LimitParams = { algorithm: rule.algorithm, limit: rule.limit, perMs: rule.perMs, burst: rule.burst };
    const t = peek(params, buckets.get(ref) ?? undefined, req.now);
    const available = t.remaining;
    const allowed = available >= 1;
    const leased = rule.consistency === 'leased' ? '; replicas may still hold leased tokens of it' : '';
    const summary = allowed
      ? `shared bucket has ${available} token${available === 1 ? '' : 's'} left: would consume 1 token of limit ${rule.id}`
      : `shared bucket has no token left: limit ${rule.id} would deny (retry after ${Math.max(1, Math.ceil(t.retryAfterMs / 1000))} s${leased})`;
    this.asks.push({
      req,
      peek: { consulted: true, available, wouldGrant: allowed, retryAfterMs: t.retryAfterMs, resetMs: t.resetMs, summary },
    });
    return {
      allowed,
      limit: rule.limit,
      remaining: allowed ? available - 1 : 0,
      resetMs: t.resetMs,
      retryAfterMs: allowed ? 0 : Math.max(t.retryAfterMs, 1),
    };
  }

  refund(): void {
    // Nothing was taken.
  }
}

// --- NAT ---------------------------------------------------------------------------------------------

function explainNat(snapshot: PolicySnapshot, req: RequestAttributes, state: ExplainState, now: number, reached: boolean): NatExplanation {
  const table = new ExplainNatTable(state);
  const decision = settled(decideNat(snapshot, req, table, now), 'NAT');
  const rules: NatRuleTrace[] = [];
  let acting: CompiledNatRule | undefined;
  for (const policy of snapshot.policies) {
    const specs = policy.document.spec.nat ?? [];
    policy.nat.forEach((rule, i) => {
      const matched = policy.selector(req) && rule.matches(req);
      const first = decision !== undefined && decision.policy === rule.policy && decision.rule === rule.name;
      if (first) acting = rule;
      rules.push({ id: rule.id, policy: rule.policy, name: rule.name, matched, first, mismatches: matched ? [] : matchWhy(policy, rule.matches, specs[i]?.match, req) });
    });
  }
  const explanation: NatExplanation = { reached, rules };
  if (decision && acting) explanation.decision = natChoice(acting, decision, table, state);
  return explanation;
}

function natChoice(rule: CompiledNatRule, decision: NatDecision, table: ExplainNatTable, state: ExplainState): NatChoice {
  const affinity = rule.affinity.kind === 'header' ? `header:${rule.affinity.name}` : rule.affinity.kind;
  const drained = rule.backends.filter((b) => state.drained?.has(b));
  let how: NatChoice['how'];
  let summary: string;
  if (table.roundRobin) {
    how = 'round-robin';
    const why = rule.affinity.kind === 'none' ? 'affinity none' : `the request has no ${rule.affinity.kind === 'header' ? rule.affinity.name + ' header' : 'source address'}`;
    summary = `${why}: round robin over the pool, so the backend depends on the replica's position (shown: the first candidate)`;
  } else if (!table.assigned) {
    how = 'table';
    summary = `flow ${JSON.stringify(decision.flow)} is mapped to ${decision.backend} in the NAT table`;
  } else {
    how = 'rendezvous';
    const known = state.natTableConsulted ? 'the NAT table has no mapping for it' : 'NAT table not consulted; when it has no mapping';
    summary = `flow ${JSON.stringify(decision.flow)}: ${known}, rendezvous hashing picks ${decision.backend}`;
  }
  if (state.drained === undefined) summary += ' (drained backends not consulted)';
  return { ...decision, affinity, pool: [...rule.backends], drained, how, summary };
}

/** A NAT table that writes nothing: known mappings come from state, new flows are recorded, not stored. */
class ExplainNatTable implements NatTablePort {
  readonly lookups: { rule: CompiledNatRule; flow: string }[] = [];
  assigned = false;
  roundRobin = false;

  constructor(private readonly state: ExplainState) {}

  lookup(rule: CompiledNatRule, flow: string): string | undefined {
    this.lookups.push({ rule, flow });
    return this.state.natFlows?.get(flowRef(rule.id, flow));
  }

  assign(_rule: CompiledNatRule, _flow: string, backend: string): string {
    this.assigned = true;
    return backend;
  }

  touch(): void {
    // Reading only.
  }

  isDrained(backend: string): boolean {
    return this.state.drained?.has(backend) ?? false;
  }

  nextIndex(): number {
    this.roundRobin = true;
    return 0;
  }
}

// --- why a matcher does not match ---------------------------------------------------------------------

interface FieldCheck {
  matcher: RequestMatcher;
  describe: (req: RequestAttributes) => string;
}

/**
 * The reasons a compiled matcher is false: each field's own matcher (built by the same function the
 * compiler uses) is evaluated alone. The compiled matcher stays the judge of match/no-match.
 */
function why(compiled: RequestMatcher, checks: FieldCheck[], req: RequestAttributes, prefix = ''): string[] {
  if (compiled(req)) return [];
  const reasons = checks.filter((c) => !c.matcher(req)).map((c) => prefix + c.describe(req));
  return reasons.length > 0 ? reasons : [`${prefix}does not match`];
}

/** Why a rate limit or NAT rule does not apply: its policy's selector, or its own match. */
function matchWhy(policy: CompiledPolicy, matches: RequestMatcher, match: TrafficMatchSpec | undefined, req: RequestAttributes): string[] {
  if (!policy.selector(req)) return why(policy.selector, trafficChecks(policy.document.spec.selector), req, 'selector ');
  return why(matches, trafficChecks(match), req);
}

function trafficChecks(spec: TrafficMatchSpec | undefined): FieldCheck[] {
  if (spec === undefined) return [];
  const checks: FieldCheck[] = [];
  if (spec.ports !== undefined) checks.push(portCheck(spec.ports));
  if (spec.methods !== undefined) checks.push(methodCheck(spec.methods));
  if (spec.hosts !== undefined) checks.push(hostCheck(spec.hosts));
  if (spec.paths !== undefined) checks.push(pathCheck(spec.paths));
  return checks;
}

function ruleChecks(rule: FirewallRuleSpec | undefined): FieldCheck[] {
  if (rule === undefined) return [];
  const checks = trafficChecks(rule);
  if (rule.from !== undefined) {
    const cidrs = rule.from;
    checks.push({ matcher: sourceMatcher(cidrs), describe: (req) => `from: source ${req.source.ip?.text ?? '(none)'} is in none of ${list(cidrs)}` });
  }
  if (rule.to !== undefined) {
    const cidrs = rule.to;
    checks.push({ matcher: destinationMatcher(cidrs), describe: (req) => `to: destination ${req.destination.ip?.text ?? '(none)'} is in none of ${list(cidrs)}` });
  }
  if (rule.principals !== undefined) {
    const patterns = rule.principals;
    checks.push({
      matcher: principalMatcher(patterns),
      describe: (req) =>
        req.source.principal === undefined
          ? 'principals: the caller has no principal'
          : `principals: ${quote(req.source.principal)} matches none of ${list(patterns)}`,
    });
  }
  if (rule.headers !== undefined) {
    for (const header of rule.headers) {
      checks.push({ matcher: headerMatcher([header], rule.action === 'deny'), describe: (req) => `headers: ${headerWhy(header, req)}` });
    }
  }
  return checks;
}

function portCheck(ports: readonly number[]): FieldCheck {
  return { matcher: portMatcher(ports), describe: (req) => `ports: destination port ${req.destination.port ?? '(none)'} is not one of ${list(ports)}` };
}

function methodCheck(methods: readonly string[]): FieldCheck {
  return {
    matcher: methodMatcher(methods),
    describe: (req) => (req.method === undefined ? 'methods: a TCP connection has no method' : `methods: ${req.method} is not one of ${list(methods)}`),
  };
}

function hostCheck(hosts: readonly string[]): FieldCheck {
  return {
    matcher: hostMatcher(hosts),
    describe: (req) => (req.host === undefined ? 'hosts: a TCP connection has no host' : `hosts: ${quote(req.host)} matches none of ${list(hosts)}`),
  };
}

function pathCheck(paths: readonly PathPattern[]): FieldCheck {
  const shown = paths.map((p) => (typeof p === 'string' ? p : `{regex: ${p.regex}}`));
  return {
    matcher: pathMatcher(paths),
    describe: (req) => (req.path === undefined ? 'paths: a TCP connection has no path' : `paths: ${quote(req.path)} matches none of ${list(shown)}`),
  };
}

function headerWhy(spec: HeaderMatchSpec, req: RequestAttributes): string {
  if (req.protocol !== 'http') return 'a TCP connection has no headers';
  const actual = req.headers.get(spec.name);
  if (spec.present === false) return `${spec.name} is present (must be absent)`;
  if (spec.value !== undefined) {
    return actual === undefined ? `${spec.name} is absent (must be ${quote(spec.value)})` : `${spec.name} is ${quote(actual)}, not ${quote(spec.value)}`;
  }
  if (spec.regex !== undefined) {
    return actual === undefined ? `${spec.name} is absent (must match /${spec.regex}/)` : `${spec.name} ${quote(actual)} does not match /${spec.regex}/`;
  }
  return `${spec.name} is absent`;
}

// --- helpers -----------------------------------------------------------------------------------------

const SHOWN_CHARS = 80;

function quote(text: string): string {
  return JSON.stringify(text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}…` : text);
}

function list(items: readonly (string | number)[]): string {
  return `[${items.join(', ')}]`;
}

/** The ports given to the engines answer synchronously, so every decision here is settled. */
function settled<T>(value: T | Promise<T>, what: string): T {
  if (value instanceof Promise) throw new Error(`internal: the ${what} decision did not settle synchronously`);
  return value;
}

function withoutResponseHeaders(v: Verdict): Verdict {
  const { responseHeaders: _unknown, ...rest } = v;
  return rest;
}

function summarise(req: RequestAttributes): RequestSummary {
  const summary: RequestSummary = {
    protocol: req.protocol,
    source: dropUndefined({ ip: req.source.ip?.text, port: req.source.port, principal: req.source.principal }),
    destination: dropUndefined({ ip: req.destination.ip?.text, port: req.destination.port }),
    headers: Object.fromEntries(req.headers),
  };
  if (req.method !== undefined) summary.method = req.method;
  if (req.host !== undefined) summary.host = req.host;
  if (req.path !== undefined) summary.path = req.path;
  return summary;
}

function dropUndefined<T extends object>(value: T): T {
  for (const key of Object.keys(value) as (keyof T)[]) if (value[key] === undefined) delete value[key];
  return value;
}
