// The port the decision engines and adapters read shared state through. Implementations: etcd
// (watch-driven), and in tests a fixed snapshot.
import type { PolicyError, PolicySnapshot } from '../policy/types';

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
