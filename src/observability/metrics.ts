// Prometheus metrics of one replica (prom-client), served on the admin port's /metrics.
//
// Two kinds of sources. What happens per request is recorded where it happens: the gRPC adapters
// report every decision (`decided`), and the etcd operations that go through the breaker are timed
// (`timeEtcd`). Everything else is read when Prometheus scrapes, from the stats and getters the
// state layer already keeps (`collect()` callbacks), and from the breaker's transition events, so
// the state code neither knows nor pays for metrics.
//
// Label values come from fixed sets in the code: a reason outside DECISION_REASONS counts as
// "other", a middlebox outside MIDDLEBOXES as "none". No path, host, address or policy name is ever
// a label value, so the number of series stays bounded whatever the traffic.
import { performance } from 'node:perf_hooks';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Verdict } from '../middlebox/types';

/** The Envoy API that carried a decision. */
export type DecisionApi = 'ext_authz' | 'ext_proc';
export const DECISION_APIS: readonly DecisionApi[] = ['ext_authz', 'ext_proc'];

/**
 * Every reason a verdict can carry, by the middlebox that gives it ("none": allowed, or refused
 * before any middlebox ran). Keep in step with the engines (middlebox/) and the adapters (grpc/).
 */
export const DECISION_REASONS = {
  allowed: 'none',
  firewall_rule_deny: 'firewall',
  firewall_default_deny: 'firewall',
  rate_limited: 'ratelimit',
  policy_not_loaded: 'none',
  state_unavailable: 'none',
  missing_attributes: 'none',
  invalid_source_address: 'none',
  invalid_destination_address: 'none',
  headers_too_large: 'none',
  headers_not_sent: 'none',
} as const;
export type DecisionReason = keyof typeof DECISION_REASONS | 'other';
export const MIDDLEBOXES = ['firewall', 'ratelimit', 'nat', 'none'] as const;

/** The etcd operations that go through the breaker. */
export const ETCD_OPERATIONS = [
  /** A rate-limit compare-and-swap transaction (strict and leased limits, write-backs). */
  'cas',
  /** A lease grant for rate-limit bucket keys (one per lifetime class, rarely). */
  'lease_grant',
  /** A NAT flow's create-if-absent (or replace) transaction, with its lease when one is needed. */
  'nat_assign',
  /** The breaker's half-open read. */
  'probe',
] as const;
export type EtcdOperation = (typeof ETCD_OPERATIONS)[number] | 'other';

/**
 * How an etcd operation failed: `timeout` the breaker's deadline passed; `short_circuited` the breaker
 * was open (the operation was not sent, or was turned away when the breaker opened); `error` etcd
 * answered with an error or could not be reached.
 */
export type EtcdFailure = 'timeout' | 'short_circuited' | 'error';
const ETCD_FAILURES: readonly EtcdFailure[] = ['timeout', 'short_circuited', 'error'];

/** Sub-millisecond (a firewall decision) to Envoy's 250 ms deadline. */
export const DECISION_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];
/** A loopback round trip to etcd up to the call deadlines (the breaker's 100 ms, etcd's own seconds). */
export const ETCD_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export const BREAKER_STATES = { closed: 0, 'half-open': 1, open: 2 } as const;
export type BreakerStateName = keyof typeof BREAKER_STATES;

/** What the gRPC adapters record: one call per decision. */
export interface DecisionMetrics {
  decided(api: DecisionApi, verdict: Verdict, seconds: number): void;
}

// What the collectors read. Structural, so that this module needs nothing from state/.

export interface BreakerSource {
  readonly state: BreakerStateName;
  readonly stats: { readonly fallbacks: number };
  onTransition(listener: (state: BreakerStateName) => void): void;
}

type PolicyStatus = { loaded: boolean; generation: number; policies: number; rejected: readonly unknown[]; source?: 'etcd' | 'disk' | 'none' };

export interface PolicyStatusSource {
  status(): PolicyStatus;
  onChange(listener: () => void): void;
}

export interface RateLimitSources {
  /** The etcd store: counters of its etcd work, buckets tracked, leased tokens held. */
  shared: {
    readonly stats: { readonly writes: number; readonly conflicts: number; readonly cachedDenials: number; readonly leasedWaits: number };
    readonly size: number;
    heldTokens?(now?: number): number;
  };
  /** The store that falls back to local counting. */
  resilient?: { readonly owedBuckets: number; readonly reconciled: number };
  /** The per-limit key cap: requests whose key was past it, by the limit's consistency. */
  keys?: { readonly overflows: Readonly<Record<RateLimitConsistency, number>> };
}

/** A rate limit's consistency: the labels of middlebox_ratelimit_keys_overflow_total. */
export type RateLimitConsistency = 'strict' | 'leased' | 'local';
export const RATE_LIMIT_CONSISTENCIES: readonly RateLimitConsistency[] = ['strict', 'leased', 'local'];

export interface NatSources {
  /** The replica's watch-fed copy of the shared NAT table. */
  table: { readonly size: number; readonly overCap: number };
  /** Mappings made while etcd could not record them. */
  resilient?: { readonly pendingFlows: number };
}

export interface MetricsOptions {
  /** prom-client's process and Node.js metrics (CPU, memory, GC, event-loop lag); default true. */
  processMetrics?: boolean;
}

type ErrorWithCode = Error & { code?: unknown };

export class MiddleboxMetrics implements DecisionMetrics {
  readonly registry = new Registry();
  private readonly decisions: Counter<'middlebox' | 'verdict' | 'reason'>;
  private readonly shadowDenials: Counter<'middlebox'>;
  private readonly decisionSeconds: Histogram<'api'>;
  private readonly etcdSeconds: Histogram<'operation'>;
  private readonly etcdErrors: Counter<'operation' | 'kind'>;
  /**
   * Decisions are counted here, one plain increment per request, and handed to the counter when
   * Prometheus scrapes: prom-client's own inc() hashes the label set on every call.
   */
  private readonly decisionCounts = new Map<string, { labels: { middlebox: string; verdict: string; reason: string }; count: number; flushed: number }>();
  private readonly latencyChildren = new Map<DecisionApi, { observe(v: number): void }>();

  constructor(opts: MetricsOptions = {}) {
    const registers = [this.registry];
    const counts = this.decisionCounts;
    this.decisions = new Counter({
      name: 'middlebox_decisions_total',
      help: 'Decisions, by the middlebox that denied (none: allowed, or refused before any middlebox ran), verdict and reason.',
      labelNames: ['middlebox', 'verdict', 'reason'],
      registers,
      collect() {
        for (const c of counts.values()) {
          if (c.count > c.flushed) this.inc(c.labels, c.count - c.flushed);
          c.flushed = c.count;
        }
      },
    });
    for (const [reason, middlebox] of Object.entries(DECISION_REASONS)) {
      this.decisions.inc({ middlebox, verdict: reason === 'allowed' ? 'allow' : 'deny', reason }, 0);
    }
    this.shadowDenials = new Counter({
      name: 'middlebox_shadow_denials_total',
      help: 'Denials that a shadow policy or rule would have made (logged, not enforced), by middlebox.',
      labelNames: ['middlebox'],
      registers,
    });
    for (const middlebox of ['firewall', 'ratelimit']) this.shadowDenials.inc({ middlebox }, 0);
    this.decisionSeconds = new Histogram({
      name: 'middlebox_decision_duration_seconds',
      help: 'Time from a decision request arriving to its answer being ready, by Envoy API (ext_authz Check, ext_proc request headers).',
      labelNames: ['api'],
      buckets: DECISION_BUCKETS,
      registers,
    });
    for (const api of DECISION_APIS) this.decisionSeconds.zero({ api });
    this.etcdSeconds = new Histogram({
      name: 'middlebox_etcd_operation_duration_seconds',
      help: 'Per-request etcd operations through the breaker, by operation: time to the answer, the error or the breaker timeout (operations the open breaker turned away are not counted).',
      labelNames: ['operation'],
      buckets: ETCD_BUCKETS,
      registers,
    });
    this.etcdErrors = new Counter({
      name: 'middlebox_etcd_operation_errors_total',
      help: 'Failed per-request etcd operations, by operation and kind (timeout: past the breaker deadline; short_circuited: the breaker was open; error: etcd failed or was unreachable).',
      labelNames: ['operation', 'kind'],
      registers,
    });
    for (const operation of ETCD_OPERATIONS) {
      this.etcdSeconds.zero({ operation });
      for (const kind of ETCD_FAILURES) this.etcdErrors.inc({ operation, kind }, 0);
    }
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text for one scrape. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  decided(api: DecisionApi, verdict: Verdict, seconds: number): void {
    const reason: DecisionReason = Object.hasOwn(DECISION_REASONS, verdict.reason) ? (verdict.reason as DecisionReason) : 'other';
    const middlebox = verdict.allow ? 'none' : MIDDLEBOXES.includes(verdict.middlebox as never) ? verdict.middlebox! : 'none';
    const key = `${verdict.allow ? 'allow' : 'deny'}|${middlebox}|${reason}`;
    const counted = this.decisionCounts.get(key);
    if (counted) counted.count += 1;
    else this.decisionCounts.set(key, { labels: { middlebox, verdict: verdict.allow ? 'allow' : 'deny', reason }, count: 1, flushed: 0 });
    if (verdict.shadowDenials) for (const d of verdict.shadowDenials) this.shadowDenials.inc({ middlebox: d.middlebox });
    let latency = this.latencyChildren.get(api);
    if (!latency) {
      latency = this.decisionSeconds.labels({ api });
      this.latencyChildren.set(api, latency);
    }
    latency.observe(seconds);
  }

  /**
   * Runs one etcd operation (`run`: the breaker's) and records its time and failure. The result
   * and the error pass through untouched.
   */
  timeEtcd<T>(operation: EtcdOperation, run: () => Promise<T>): Promise<T> {
    const started = performance.now();
    return run().then(
      (value) => {
        this.etcdSeconds.observe({ operation }, (performance.now() - started) / 1000);
        return value;
      },
      (err: unknown) => {
        const kind = etcdFailure(err);
        if (kind !== 'short_circuited') this.etcdSeconds.observe({ operation }, (performance.now() - started) / 1000);
        this.etcdErrors.inc({ operation, kind });
        throw err;
      },
    );
  }

  /** Breaker state (gauge), transitions (counter, from its events) and fallbacks (counter). */
  watchBreaker(breaker: BreakerSource): void {
    const registers = [this.registry];
    new Gauge({
      name: 'middlebox_etcd_breaker_state',
      help: 'The etcd circuit breaker: 0 closed (deciding from etcd), 1 half-open (probing), 2 open (deciding from local state).',
      registers,
      collect() {
        this.set(BREAKER_STATES[breaker.state] ?? 0);
      },
    });
    const transitions = new Counter({
      name: 'middlebox_etcd_breaker_transitions_total',
      help: 'Transitions of the etcd circuit breaker, by the state it went to.',
      labelNames: ['to'],
      registers,
    });
    for (const to of Object.keys(BREAKER_STATES)) transitions.inc({ to }, 0);
    breaker.onTransition((to) => transitions.inc({ to }));
    this.mirrorCounter('middlebox_etcd_fallbacks_total', 'Answers given from local state because an etcd operation failed, timed out, or the breaker was open.', () => breaker.stats.fallbacks);
  }

  /** Policy generation and whether the last reload left every stored policy accepted. */
  watchPolicies(policies: PolicyStatusSource): void {
    const registers = [this.registry];
    let lastSuccessAt: number | undefined;
    let seenGeneration = -1;
    // Loaded from etcd or the state file, every stored policy accepted: `--on-no-state fail-open`
    // also counts as loaded (the empty policy), but nothing was.
    const succeeded = (s: PolicyStatus) => s.loaded && s.rejected.length === 0 && s.source !== 'none';
    const observe = () => {
      const s = policies.status();
      if (s.generation === seenGeneration) return;
      seenGeneration = s.generation;
      if (succeeded(s)) lastSuccessAt = Date.now();
    };
    observe();
    policies.onChange(observe);
    new Gauge({
      name: 'middlebox_policy_generation',
      help: 'Generation of the policy snapshot in force; goes up by one with every reload (an etcd change, the state file, fail-open).',
      registers,
      collect() {
        this.set(policies.status().generation);
      },
    });
    new Gauge({
      name: 'middlebox_policy_last_reload_success',
      help: '1 when policies are loaded and every stored policy was accepted; 0 before the first load, while a stored policy is refused (its last good version stays in force), and under --on-no-state fail-open.',
      registers,
      collect() {
        this.set(succeeded(policies.status()) ? 1 : 0);
      },
    });
    new Gauge({
      name: 'middlebox_policy_source',
      help: 'Where the policies in force came from: 1 for the source in force (etcd; disk, the --state-dir file; none, nothing loaded or --on-no-state fail-open), 0 for the others.',
      labelNames: ['source'],
      registers,
      collect() {
        const source = policies.status().source;
        for (const s of ['etcd', 'disk', 'none'] as const) this.set({ source: s }, source === s ? 1 : 0);
      },
    });
    new Gauge({
      name: 'middlebox_policy_last_reload_success_timestamp_seconds',
      help: 'When a reload last left every stored policy accepted (Unix time); 0 if none has yet.',
      registers,
      collect() {
        this.set(lastSuccessAt === undefined ? 0 : lastSuccessAt / 1000);
      },
    });
    new Gauge({
      name: 'middlebox_policies',
      help: 'Policies in force.',
      registers,
      collect() {
        this.set(policies.status().policies);
      },
    });
    new Gauge({
      name: 'middlebox_policy_rejected',
      help: 'Stored policies refused (did not parse or validate); each keeps its last good version if it had one.',
      registers,
      collect() {
        this.set(policies.status().rejected.length);
      },
    });
  }

  watchRateLimits(sources: RateLimitSources): void {
    const { shared, resilient, keys } = sources;
    this.mirrorCounter('middlebox_ratelimit_etcd_writes_total', 'Committed compare-and-swap writes to shared rate-limit buckets.', () => shared.stats.writes);
    this.mirrorCounter('middlebox_ratelimit_etcd_conflicts_total', 'Compare-and-swap attempts that lost to another writer and were retried.', () => shared.stats.conflicts);
    this.mirrorCounter(
      'middlebox_ratelimit_cached_denials_total',
      'Rate-limit denials answered from the last known shared state, with no etcd call.',
      () => shared.stats.cachedDenials,
    );
    this.mirrorCounter(
      'middlebox_ratelimit_leased_waits_total',
      'Requests of leased limits that the replica\'s pool could not answer at once and that waited through an etcd call; every other leased request was answered from the pool, or refused from the last known state, with no etcd call.',
      () => shared.stats.leasedWaits,
    );
    this.gauge('middlebox_ratelimit_buckets', 'Shared (strict and leased) rate-limit buckets this replica tracks.', () => shared.size);
    if (shared.heldTokens) {
      const held = shared.heldTokens.bind(shared);
      this.gauge(
        'middlebox_ratelimit_leased_tokens',
        'Tokens of leased limits that this replica took from etcd and has not spent yet: pools of current windows, and blocks taken ahead for the next window.',
        () => held(),
      );
    }
    if (resilient) {
      this.gauge(
        'middlebox_ratelimit_owed_buckets',
        'Buckets whose tokens, admitted by the local fallback, are not yet written back to etcd.',
        () => resilient.owedBuckets,
      );
      this.mirrorCounter(
        'middlebox_ratelimit_reconciled_tokens_total',
        'Tokens admitted by the local fallback during etcd outages and written back to etcd afterwards.',
        () => resilient.reconciled,
      );
    }
    if (keys) {
      const flushed: Record<RateLimitConsistency, number> = { strict: 0, leased: 0, local: 0 };
      const overflow = new Counter({
        name: 'middlebox_ratelimit_keys_overflow_total',
        help: 'Requests whose rate-limit key was past --max-keys-per-rate-limit distinct keys of their limit on this replica, so counted in the limit\'s shared overflow bucket, by the limit\'s consistency.',
        labelNames: ['consistency'],
        registers: [this.registry],
        collect() {
          for (const consistency of RATE_LIMIT_CONSISTENCIES) {
            const now = keys.overflows[consistency];
            if (now > flushed[consistency]) this.inc({ consistency }, now - flushed[consistency]);
            flushed[consistency] = now;
          }
        },
      });
      for (const consistency of RATE_LIMIT_CONSISTENCIES) overflow.inc({ consistency }, 0);
    }
  }

  watchNat(sources: NatSources): void {
    const { table, resilient } = sources;
    this.gauge('middlebox_nat_flows', "Flow mappings in this replica's copy of the shared NAT table.", () => table.size);
    this.mirrorCounter(
      'middlebox_nat_flows_over_cap_total',
      'New NAT flows of a rule that already had --max-nat-flows-per-rule flows: mapped by hashing alone, not recorded in etcd.',
      () => table.overCap,
    );
    if (resilient) {
      this.gauge('middlebox_nat_pending_flows', 'NAT mappings made while etcd could not record them, not yet written to etcd.', () => resilient.pendingFlows);
    }
  }

  private gauge(name: string, help: string, read: () => number): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(read());
      },
    });
  }

  /** A counter that follows a monotonic count kept elsewhere (a stats object). */
  private mirrorCounter(name: string, help: string, read: () => number): void {
    let last = 0;
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        const now = read();
        if (now > last) this.inc(now - last);
        last = now;
      },
    });
  }
}

/** opossum's codes: ETIMEDOUT past the breaker's timeout, EOPENBREAKER while open. */
export function etcdFailure(err: unknown): EtcdFailure {
  const code = (err as ErrorWithCode | undefined)?.code;
  if (code === 'ETIMEDOUT') return 'timeout';
  if (code === 'EOPENBREAKER') return 'short_circuited';
  return 'error';
}
