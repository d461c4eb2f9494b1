// The NAT table when etcd is slow or gone. Lookups never wait on etcd (they read the watch-fed copy,
// which keeps the last known mappings during an outage). A new flow is mapped through the breaker;
// when etcd cannot record it, the flow gets the backend rendezvous hashing chose, which every replica
// computes alike from the same pool, so replicas still agree without etcd. Those mappings are kept
// here and written to etcd when the breaker closes; where etcd already holds a different mapping for
// the flow (made by a replica that could still reach it), etcd's wins and the flow moves to it.
import type { Logger } from '../../observability/logger';
import type { CompiledNatRule } from '../../policy/types';
import type { EtcdNatTable } from '../etcd/nat';
import { flowId } from '../nat/memory';
import type { NatTablePort } from '../port';
import type { EtcdBreaker } from './breaker';

interface Pending {
  rule: CompiledNatRule;
  flow: string;
  backend: string;
}

export class ResilientNatTable implements NatTablePort {
  /** Mappings made while etcd could not record them. */
  private readonly pending = new Map<string, Pending>();

  constructor(
    private readonly shared: EtcdNatTable,
    private readonly breaker: EtcdBreaker,
    private readonly logger: Logger,
  ) {
    breaker.onTransition((state) => {
      if (state === 'closed') void this.reconcile();
    });
  }

  get pendingFlows(): number {
    return this.pending.size;
  }

  lookup(rule: CompiledNatRule, flow: string): string | undefined {
    return this.pending.get(flowId(rule, flow))?.backend ?? this.shared.lookup(rule, flow);
  }

  assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, now: number): string | Promise<string> {
    if (this.breaker.isDegraded) return this.remember(rule, flow, backend);
    return this.breaker.run(() => this.shared.assign(rule, flow, backend, replacing, now), 'nat_assign').catch(() => this.remember(rule, flow, backend));
  }

  touch(rule: CompiledNatRule, flow: string, now: number): void {
    if (!this.breaker.isDegraded && !this.pending.has(flowId(rule, flow))) this.shared.touch(rule, flow, now);
  }

  isDrained(backend: string): boolean {
    return this.shared.isDrained(backend);
  }

  nextIndex(ruleId: string): number {
    return this.shared.nextIndex(ruleId);
  }

  private remember(rule: CompiledNatRule, flow: string, backend: string): string {
    this.breaker.fellBack();
    this.pending.set(flowId(rule, flow), { rule, flow, backend });
    return backend;
  }

  private async reconcile(): Promise<void> {
    let moved = 0;
    for (const [id, p] of [...this.pending]) {
      try {
        const inForce = await this.breaker.run(() => this.shared.assign(p.rule, p.flow, p.backend, undefined, Date.now()), 'nat_assign');
        this.pending.delete(id);
        if (inForce !== p.backend) moved += 1;
      } catch (e) {
        this.logger.warn({ rule: p.rule.id, err: (e as Error).message }, 'could not write a NAT mapping made during the outage to etcd');
        return;
      }
    }
    this.logger.info({ moved }, 'NAT mappings made during the outage written to etcd');
  }
}
