// The ports the decision engines and adapters reach shared state through. Implementations: etcd
// (watch-driven policies; counters and quotas), memory (`local` limits, the fallback), and in
// tests a fixed snapshot.
import type { CompiledNatRule, CompiledRateLimit, PolicyError, PolicySnapshot } from '../policy/types';

export interface RejectedPolicy {
  key: string;
  errors: PolicyError[];
  /** True when an earlier good version of this policy stays in force. */
  keptLastGood: boolean;
}

export interface PolicyStatus {
  /** The first full load has completed; until then decisions fail closed. */
  loaded: boolean;
  generation: number;
  policies: number;
  /** Stored policies this replica refused (corrupt or invalid), by key. */
  rejected: RejectedPolicy[];
  /** The watch on etcd is connected. */
  connected: boolean;
  /**
   * Where the policies in force came from: etcd; the local state file (`--state-dir`, etcd not
   * loaded yet); or none (nothing loaded, or the empty policy of `--on-no-state fail-open`).
   * Absent for a fixed snapshot.
   */
  source?: 'etcd' | 'disk' | 'none';
}

export interface PolicySource {
  /** The snapshot in force; undefined until the first load. Cheap: called per request. */
  snapshot(): PolicySnapshot | undefined;
  status(): PolicyStatus;
  /** Called after every change of snapshot or status. */
  onChange(listener: () => void): void;
  close(): Promise<void>;
}

/** A fixed snapshot: unit tests and offline tools. */
export class StaticPolicySource implements PolicySource {
  constructor(private readonly fixed: PolicySnapshot) {}
  snapshot(): PolicySnapshot { return this.fixed; }
  status(): PolicyStatus {
    return { loaded: true, generation: this.fixed.generation, policies: this.fixed.policies.length, rejected: [], connected: true };
  }
  onChange(): void {}
  async close(): Promise<void> {}
}

// --- rate limits ---------------------------------------------------------------------------------

export interface RateLimitRequest {
  rule: CompiledRateLimit;
  /** The request's key parts, joined; unique within the rule. */
  key: string;
  /** Wall-clock milliseconds; windows are aligned to the epoch so that every replica agrees. */
  now: number;
}

export interface RateLimitGrant {
  allowed: boolean;
  /** The limit as configured (what ratelimit-limit advertises). */
  limit: number;
  remaining: number;
  resetMs: number;
  retryAfterMs: number;
}

export interface RateLimitPort {
  /** Takes one token if one is available. Synchronous when no shared state needs to be asked. */
  consume(req: RateLimitRequest): RateLimitGrant | Promise<RateLimitGrant>;
  /** Gives back the token of an allowed consume, because another limit denied the request. */
  refund(req: RateLimitRequest): void;
}

// --- NAT ------------------------------------------------------------------------------------------

export interface NatTablePort {
  /** The backend this flow is mapped to, as far as this replica knows; no I/O. */
  lookup(rule: CompiledNatRule, flow: string): string | undefined;
  /**
   * Maps the flow to `backend` unless the shared table already holds a mapping other than
   * `replacing`; resolves to the mapping in force, so replicas that race agree.
   */
  assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, now: number): string | Promise<string>;
  /** The flow carried a request now: keep its mapping alive (it expires after the rule's idle timeout). */
  touch(rule: CompiledNatRule, flow: string, now: number): void;
  /** Taken out for new flows by `middlebox nat drain`. */
  isDrained(backend: string): boolean;
  /** Next position of a rule's round robin (affinity none). */
  nextIndex(ruleId: string): number;
}
