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
import { BoundedMap } from '../ratelimit/bounded-map';
import type { EtcdBreaker } from './breaker';
import { WriteBack } from './write-back';

interface Pending {
  rule: CompiledNatRule;
  flow: string;
  backend: string;
  /** When the flow was last mapped or used: a mapping idle past its rule's idle time has expired. */
  usedAt: number;
}

/** Most mappings kept pending; the least recently used goes first (its flow is mapped afresh, by the same hashing). */
const MAX_PENDING = 100_000;

export class ResilientNatTable implements NatTablePort {
  /** Mappings made while etcd could not record them. */
  private readonly pending = new BoundedMap<Pending>(MAX_PENDING);
  private readonly writeBack: WriteBack<void>;

  constructor(
    private readonly shared: EtcdNatTable,
    private readonly breaker: EtcdBreaker,
    private readonly logger: Logger,
  ) {
    this.writeBack = new WriteBack(breaker, () => this.reconcileOnce());
    breaker.onTransition((state) => {
      if (state === 'closed') void this.writeBack.run();
    });
  }

  get pendingFlows(): number {
    return this.pending.size;
  }

  lookup(rule: CompiledNatRule, flow: string): string | undefined {
    const p = this.pending.get(flowId(rule, flow));
    // Expired like a mapping in etcd would (idle past the rule's idle time): etcd's, if any, holds.
    if (p && Date.now() - p.usedAt <= rule.idleMs) return p.backend;
    return this.shared.lookup(rule, flow);
  }

  assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, now: number): string | Promise<string> {
    if (this.breaker.isDegraded) return this.remember(rule, flow, backend, now);
    return this.breaker.run(() => this.shared.assign(rule, flow, backend, replacing, now), 'nat_assign').then(
      (inForce) => {
        // etcd has the flow now: what was remembered for it is done with.
        this.pending.delete(flowId(rule, flow));
        return inForce;
      },
      () => this.remember(rule, flow, backend, now),
    );
  }

  touch(rule: CompiledNatRule, flow: string, now: number): void {
    const id = flowId(rule, flow);
    const p = this.pending.get(id);
    // An expired pending mapping (lookup no longer answers with it) is not revived: etcd's holds.
    if (p && now - p.usedAt > rule.idleMs) this.pending.delete(id);
    else if (p) {
      p.usedAt = now;
      return;
    }
    if (!this.breaker.isDegraded) this.shared.touch(rule, flow, now);
  }

  isDrained(backend: string): boolean {
    return this.shared.isDrained(backend);
  }

  nextIndex(ruleId: string): number {
    return this.shared.nextIndex(ruleId);
  }

  private remember(rule: CompiledNatRule, flow: string, backend: string, now: number): string {
    this.breaker.fellBack();
    this.pending.set(flowId(rule, flow), { rule, flow, backend, usedAt: now });
    // A single failure need not open the breaker (nor ever see it close): write it shortly.
    if (!this.breaker.isDegraded) this.writeBack.soon();
    return backend;
  }

  private async reconcileOnce(): Promise<void> {
    let moved = 0;
    let expired = 0;
    for (const p of [...this.pending.values()]) {
      const id = flowId(p.rule, p.flow);
      // Taken away by a successful assign, or replaced since: nothing to write for this one.
      if (this.pending.get(id) !== p) continue;
      const now = Date.now();
      if (now - p.usedAt > p.rule.idleMs) {
        // Idle past its rule's idle time: in etcd it would have expired already.
        this.pending.delete(id);
        expired += 1;
        continue;
      }
      try {
        const inForce = await this.breaker.run(() => this.shared.assign(p.rule, p.flow, p.backend, undefined, now), 'nat_assign');
        if (this.pending.get(id) === p) this.pending.delete(id);
        if (inForce !== p.backend) moved += 1;
      } catch (e) {
        this.logger.warn({ rule: p.rule.id, err: (e as Error).message }, 'could not write a NAT mapping made during the outage to etcd');
        if (!this.breaker.isDegraded) this.writeBack.soon();
        return;
      }
    }
    this.logger.info({ moved, expired }, 'NAT mappings made during the outage written to etcd');
  }
}
