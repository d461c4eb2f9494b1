// The NAT table in etcd. A flow's mapping is `<prefix>/nat/flows/<policy>/<rule>/<hash of flow>`
// = {flow, backend, rule}, bound to a shared lease of the rule's idle timeout and rewritten when
// a third of it has passed since the last write, so a flow in use keeps its backend and an idle
// one expires. `<prefix>/nat/drained/<backend>` takes a backend out for new flows. Every replica
// loads the table and follows a watch, so a lookup never waits for etcd; only a new flow's first
// request does (one create-if-absent transaction, which makes racing replicas agree).
import { createHash } from 'node:crypto';
import type { Etcd3, IKeyValue } from 'etcd3';
import type { Logger } from '../../observability/logger';
import type { CompiledNatRule } from '../../policy/types';
import { flowId } from '../nat/memory';
import type { NatTablePort } from '../port';
import { withDeadline } from './client';
import { PrefixFollower } from './follow';
import { SharedLeases } from './leases';

export interface StoredFlow {
  flow: string;
  backend: string;
  /** policy/rule */
  rule: string;
}

interface CachedFlow {
  backend: string;
  mod: string;
  writtenAt: number;
}

const flowsPrefix = (prefix: string) => `${prefix}/nat/flows/`;
const drainedPrefix = (prefix: string) => `${prefix}/nat/drained/`;

export function flowKey(prefix: string, rule: { policy: string; name: string }, flow: string): string {
  const digest = createHash('sha256').update(flow).digest('base64url').slice(0, 22);
  return `${flowsPrefix(prefix)}${rule.policy}/${rule.name}/${digest}`;
}

export interface EtcdNatTableOptions {
  client: Etcd3;
  prefix: string;
  logger: Logger;
}

export class EtcdNatTable implements NatTablePort {
  private readonly flows = new Map<string, CachedFlow>();
  /** etcd key → flow id, because a watch's delete event carries only the key. */
  private readonly idsByKey = new Map<string, string>();
  private readonly drained = new Set<string>();
  private readonly counters = new Map<string, number>();
  private readonly leases: SharedLeases;
  private readonly follower: PrefixFollower;
  private loaded = false;

  private constructor(private readonly opts: EtcdNatTableOptions) {
    this.leases = new SharedLeases(opts.client);
    this.follower = new PrefixFollower(opts.client, `${opts.prefix}/nat/`, opts.logger, 'NAT table');
  }

  static open(opts: EtcdNatTableOptions): EtcdNatTable {
    const table = new EtcdNatTable(opts);
    void table.loadUntilDone();
    return table;
  }

  get size(): number {
    return this.flows.size;
  }

  get isLoaded(): boolean {
    return this.loaded;
  }

  lookup(rule: CompiledNatRule, flow: string): string | undefined {
    return this.flows.get(flowId(rule, flow))?.backend;
  }

  async assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, now: number): Promise<string> {
    const { client } = this.opts;
    const key = flowKey(this.opts.prefix, rule, flow);
    const id = flowId(rule, flow);
    const known = this.flows.get(id);
    const lease = await this.leases.leaseFor(rule.idleMs, now);
    const value = JSON.stringify({ flow, backend, rule: rule.id } satisfies StoredFlow);
    // Replace only the mapping we know of; create only where there is none.
    const txn = replacing !== undefined && known ? client.if(key, 'Mod', '==', known.mod) : client.if(key, 'Create', '==', 0);
    const res = await txn.then(client.put(key).value(value).lease(lease)).else(client.get(key)).commit();
    if (res.succeeded) {
      this.flows.set(id, { backend, mod: String(res.header.revision), writtenAt: now });
      this.idsByKey.set(key, id);
      return backend;
    }
    const kv = res.responses[0]?.response_range?.kvs?.[0];
    const stored = kv ? parseFlow(kv.value.toString()) : undefined;
    if (!kv || !stored) return backend;
    this.flows.set(id, { backend: stored.backend, mod: String(kv.mod_revision), writtenAt: now });
    return stored.backend;
  }

  touch(rule: CompiledNatRule, flow: string, now: number): void {
    const id = flowId(rule, flow);
    const cached = this.flows.get(id);
    if (!cached || now - cached.writtenAt < rule.idleMs / 3) return;
    cached.writtenAt = now;
    void this.assign(rule, flow, cached.backend, cached.backend, now).catch((e) =>
      this.opts.logger.warn({ rule: rule.id, err: (e as Error).message }, 'could not keep a NAT mapping alive'),
    );
  }

  isDrained(backend: string): boolean {
    return this.drained.has(backend);
  }

  nextIndex(ruleId: string): number {
    const n = this.counters.get(ruleId) ?? 0;
    this.counters.set(ruleId, (n + 1) % Number.MAX_SAFE_INTEGER);
    return n;
  }

  async close(): Promise<void> {
    await this.follower.close();
  }

  private async loadUntilDone(): Promise<void> {
    await this.follower.start({
      loaded: (kvs) => {
        for (const kv of kvs) this.put(kv);
        this.loaded = true;
        this.opts.logger.info({ flows: this.flows.size, drained: [...this.drained] }, 'NAT table loaded from etcd');
      },
      put: (kv) => this.put(kv),
      delete: (kv) => this.delete(kv),
    });
  }

  private put(kv: IKeyValue): void {
    const key = kv.key.toString();
    if (key.startsWith(drainedPrefix(this.opts.prefix))) {
      this.drained.add(key.slice(drainedPrefix(this.opts.prefix).length));
      return;
    }
    const stored = parseFlow(kv.value.toString());
    if (!stored) return;
    const id = `${stored.rule}\u0000${stored.flow}`;
    const known = this.flows.get(id);
    this.idsByKey.set(key, id);
    this.flows.set(id, { backend: stored.backend, mod: String(kv.mod_revision), writtenAt: known?.writtenAt ?? Date.now() });
  }

  private delete(kv: IKeyValue): void {
    const key = kv.key.toString();
    if (key.startsWith(drainedPrefix(this.opts.prefix))) {
      this.drained.delete(key.slice(drainedPrefix(this.opts.prefix).length));
      return;
    }
    const id = this.idsByKey.get(key);
    if (id === undefined) return;
    this.idsByKey.delete(key);
    this.flows.delete(id);
  }
}

function parseFlow(text: string): StoredFlow | undefined {
  try {
    const v = JSON.parse(text) as StoredFlow;
    return typeof v.flow === 'string' && typeof v.backend === 'string' && typeof v.rule === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

// --- what `middlebox nat list|drain|undrain` does ----------------------------------------------------

export interface ListedFlow extends StoredFlow {
  key: string;
}

export async function listFlows(client: Etcd3, prefix: string): Promise<{ flows: ListedFlow[]; drained: string[] }> {
  const kvs = await withDeadline('NAT table read', 5000, () => client.getAll().prefix(`${prefix}/nat/`).strings());
  const flows: ListedFlow[] = [];
  const drained: string[] = [];
  for (const [key, value] of Object.entries(kvs)) {
    if (key.startsWith(drainedPrefix(prefix))) drained.push(key.slice(drainedPrefix(prefix).length));
    else {
      const stored = parseFlow(value);
      if (stored) flows.push({ key, ...stored });
    }
  }
  flows.sort((a, b) => a.rule.localeCompare(b.rule) || a.backend.localeCompare(b.backend) || a.flow.localeCompare(b.flow));
  return { flows, drained: drained.sort() };
}

/**
 * Takes a backend out for new flows and moves its sticky flows: their mappings are deleted, so
 * each flow's next request is mapped again over the pool without it.
 */
export async function drainBackend(client: Etcd3, prefix: string, backend: string): Promise<number> {
  await withDeadline('NAT drain', 5000, () => client.put(`${drainedPrefix(prefix)}${backend}`).value(JSON.stringify({ since: new Date().toISOString() })).exec());
  const { flows } = await listFlows(client, prefix);
  const moving = flows.filter((f) => f.backend === backend);
  for (const f of moving) await withDeadline('NAT drain', 5000, () => client.delete().key(f.key).exec());
  return moving.length;
}

export async function undrainBackend(client: Etcd3, prefix: string, backend: string): Promise<boolean> {
  const res = await withDeadline('NAT undrain', 5000, () => client.delete().key(`${drainedPrefix(prefix)}${backend}`).exec());
  return Number(res.deleted) > 0;
}
