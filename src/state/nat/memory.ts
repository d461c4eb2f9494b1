// A NAT table held in one replica's memory: unit tests, and the shape the etcd table caches.
import type { CompiledNatRule } from '../../policy/types';
import type { NatTablePort } from '../port';

export class MemoryNatTable implements NatTablePort {
  protected readonly flows = new Map<string, { backend: string; touchedAt: number }>();
  protected readonly drained = new Set<string>();
  private readonly counters = new Map<string, number>();

  lookup(rule: CompiledNatRule, flow: string): string | undefined {
    return this.flows.get(flowId(rule, flow))?.backend;
  }

  assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, now: number): string | Promise<string> {
    const id = flowId(rule, flow);
    const current = this.flows.get(id);
    if (current && current.backend !== replacing) return current.backend;
    this.flows.set(id, { backend, touchedAt: now });
    return backend;
  }

  touch(rule: CompiledNatRule, flow: string, now: number): void {
    const entry = this.flows.get(flowId(rule, flow));
    if (entry) entry.touchedAt = now;
  }

  isDrained(backend: string): boolean {
    return this.drained.has(backend);
  }

  drain(backend: string): void {
    this.drained.add(backend);
  }

  nextIndex(ruleId: string): number {
    const n = this.counters.get(ruleId) ?? 0;
    this.counters.set(ruleId, (n + 1) % Number.MAX_SAFE_INTEGER);
    return n;
  }
}

export function flowId(rule: CompiledNatRule, flow: string): string {
  return `${rule.id}\u0000${flow}`;
}
