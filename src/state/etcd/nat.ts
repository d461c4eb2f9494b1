// The NAT table in etcd. A flow's mapping is `<prefix>/nat/flows/<policy>/<rule>/<hash of flow>`
// = {flow, backend, rule}, bound to a shared lease of the rule's idle timeout and rewritten when
// a third of it has passed since the last write, so a flow in use keeps its backend and an idle
// one expires. `<prefix>/nat/drained/<backend>` takes a backend out for new flows. Every replica
// loads the table and follows a watch, so a lookup never waits for etcd; only a new flow's first
// request does (one create-if-absent transaction, which makes racing replicas agree).
//
// With a state dir the table is also kept in `<dir>/nat.json` (written at most once a second) and
// read back at open(), so a replica started while etcd is unreachable keeps the flows it knew;
// etcd's table replaces the file's as soon as it loads.
import { createHash } from 'node:crypto';
import type { Etcd3, IKeyValue } from 'etcd3';
import type { Logger } from '../../observability/logger';
import type { CompiledNatRule } from '../../policy/types';
import { flowId } from '../nat/memory';
import type { NatTablePort } from '../port';
import { withDeadline } from './client';
import { PrefixFollower } from './follow';
import { SharedLeases } from './leases';
import { BoundedMap } from '../ratelimit/bounded-map';
import { isCorruptSnapshot, readSnapshot, snapshotPath, SnapshotWriter } from '../disk';

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
  /** Keep the table in `<stateDir>/nat.json` and start from it. */
  stateDir?: string;
  /** Least time between two writes of the state file (default 1000). */
  persistIntervalMs?: number;
  /** Flows recorded per NAT rule, all replicas together (default DEFAULT_MAX_NAT_FLOWS_PER_RULE). */
  maxFlowsPerRule?: number;
}

/** The state file's name in the state dir (nat.json). */
export const NAT_STATE = 'nat';

/** `<stateDir>/nat.json` */
export interface NatStateFile {
  version: 1;
  savedAt: string;
  /** Mappings in force: rule is "policy/rule". */
  flows: StoredFlow[];
  drained: string[];
}

/** The flows in force, and how many each rule has (for the per-rule cap). Ids are `<rule>\0<flow>`. */
class FlowMap extends Map<string, CachedFlow> {
  private readonly perRule = new Map<string, number>();

  override set(id: string, flow: CachedFlow): this {
    if (!this.has(id)) this.count(id, 1);
    return super.set(id, flow);
  }

  override delete(id: string): boolean {
    if (this.has(id)) this.count(id, -1);
    return super.delete(id);
  }

  override clear(): void {
    this.perRule?.clear();
    super.clear();
  }

  of(ruleId: string): number {
    return this.perRule.get(ruleId) ?? 0;
  }

  private count(id: string, by: number): void {
    const rule = id.slice(0, id.indexOf('\u0000'));
    const n = (this.perRule.get(rule) ?? 0) + by;
    if (n > 0) this.perRule.set(rule, n);
    else this.perRule.delete(rule);
  }
}

/** Default of `serve --max-nat-flows-per-rule`. */
export const DEFAULT_MAX_NAT_FLOWS_PER_RULE = 10_000;

export class EtcdNatTable implements NatTablePort {
  private readonly flows = new FlowMap();
  /** Rules whose cap was reached, logged once each. */
  private readonly capped = new Set<string>();
  /** New flows past the cap, mapped by hashing alone and not recorded (for metrics). */
  overCap = 0;
  /** The flows counted in overCap lately, so that each counts once. */
  private readonly unrecorded = new BoundedMap<true>(DEFAULT_MAX_NAT_FLOWS_PER_RULE);
  /** etcd key → flow id, because a watch's delete event carries only the key. */
  private readonly idsByKey = new Map<string, string>();
  private readonly drained = new Set<string>();
  private readonly counters = new Map<string, number>();
  private readonly leases: SharedLeases;
  private readonly follower: PrefixFollower;
  private loaded = false;
  private fromDisk = false;
  private readonly writer: SnapshotWriter | undefined;

  private constructor(private readonly opts: EtcdNatTableOptions) {
    this.leases = new SharedLeases(opts.client);
    this.follower = new PrefixFollower(opts.client, `${opts.prefix}/nat/`, opts.logger, 'NAT table');
    if (opts.stateDir) {
      const file = snapshotPath(opts.stateDir, NAT_STATE);
      this.writer = new SnapshotWriter(opts.stateDir, NAT_STATE, {
        minIntervalMs: opts.persistIntervalMs ?? 1000,
        onError: (err) => opts.logger.warn({ file, err: err.message }, 'could not write the NAT state file; the previous one stays'),
      });
    }
  }

  static open(opts: EtcdNatTableOptions): EtcdNatTable {
    const table = new EtcdNatTable(opts);
    table.loadFromDisk();
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
    const max = this.opts.maxFlowsPerRule ?? DEFAULT_MAX_NAT_FLOWS_PER_RULE;
    if (!known && this.flows.of(rule.id) >= max) {
      // Past the cap, a new flow keeps the backend hashing chose (every replica chooses alike) but
      // is not recorded: flows keyed by a client-chosen header must not fill etcd. Counted once
      // per flow (its every request comes here, as it is never found).
      if (this.unrecorded.get(id) === undefined) {
        this.unrecorded.set(id, true);
        this.overCap += 1;
      }
      if (!this.capped.has(rule.id)) {
        this.capped.add(rule.id);
        this.opts.logger.warn({ rule: rule.id, maxNatFlowsPerRule: max }, 'NAT rule has --max-nat-flows-per-rule flows: new flows are mapped by hashing alone, not recorded');
      }
      return backend;
    }
    const value = JSON.stringify({ flow, backend, rule: rule.id } satisfies StoredFlow);
    // Replace only the mapping we know of; create only where there is none.
    const res = await this.leases.withLease(rule.idleMs, now, (lease) => {
      const txn = replacing !== undefined && known ? client.if(key, 'Mod', '==', known.mod) : client.if(key, 'Create', '==', 0);
      return txn.then(client.put(key).value(value).lease(lease)).else(client.get(key)).commit();
    });
    if (res.succeeded) {
      this.flows.set(id, { backend, mod: String(res.header.revision), writtenAt: now });
      this.idsByKey.set(key, id);
      this.persist();
      return backend;
    }
    const kv = res.responses[0]?.response_range?.kvs?.[0];
    const stored = kv ? parseFlow(kv.value.toString()) : undefined;
    if (!kv || !stored) return backend;
    this.flows.set(id, { backend: stored.backend, mod: String(kv.mod_revision), writtenAt: now });
    this.idsByKey.set(key, id);
    this.persist();
    return stored.backend;
  }

  touch(rule: CompiledNatRule, flow: string, now: number): void {
    const id = flowId(rule, flow);
    const cached = this.flows.get(id);
    if (!cached || now - cached.writtenAt < rule.idleMs / 3) return;
    // Marked now so that the requests meanwhile do not each write too; a failed write is undone, so
    // that the next request tries again rather than a third of the idle time later.
    const before = cached.writtenAt;
    cached.writtenAt = now;
    void this.assign(rule, flow, cached.backend, cached.backend, now).catch((e) => {
      if (cached.writtenAt === now) cached.writtenAt = before;
      this.opts.logger.warn({ rule: rule.id, err: (e as Error).message }, 'could not keep a NAT mapping alive');
    });
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
    await this.writer?.close();
  }

  /** Where the mappings come from: etcd once loaded; before that the state file, if any. */
  get source(): 'etcd' | 'disk' | 'none' {
    return this.loaded ? 'etcd' : this.fromDisk ? 'disk' : 'none';
  }

  /** The state file's mappings serve lookups until etcd's table loads. */
  private loadFromDisk(): void {
    const { stateDir, logger } = this.opts;
    if (!stateDir) return;
    const file = snapshotPath(stateDir, NAT_STATE);
    const value = readSnapshot(stateDir, NAT_STATE);
    if (value === undefined) return;
    const state = isCorruptSnapshot(value) ? { error: value.message } : readNatState(value);
    if ('error' in state) {
      logger.error({ file, err: state.error }, 'NAT state file is corrupt or invalid; ignored');
      return;
    }
    const now = Date.now();
    // Not in etcd as far as we know (mod 0): a touch or replacement goes through etcd's own check.
    for (const f of state.flows) this.flows.set(`${f.rule}\u0000${f.flow}`, { backend: f.backend, mod: '0', writtenAt: now });
    for (const b of state.drained) this.drained.add(b);
    this.fromDisk = true;
    logger.info({ file, flows: this.flows.size, drained: state.drained, savedAt: state.savedAt }, 'NAT table loaded from the state dir; etcd replaces it once it answers');
  }

  private persist(): void {
    this.writer?.schedule(
      (): NatStateFile => ({
        version: 1,
        savedAt: new Date().toISOString(),
        flows: [...this.flows].map(([id, f]) => {
          const at = id.indexOf('\u0000');
          return { rule: id.slice(0, at), flow: id.slice(at + 1), backend: f.backend };
        }),
        drained: [...this.drained],
      }),
    );
  }

  private async loadUntilDone(): Promise<void> {
    await this.follower.start({
      loaded: (kvs) => {
        // etcd's table replaces the state file's (and any earlier load).
        this.flows.clear();
        this.idsByKey.clear();
        this.drained.clear();
        for (const kv of kvs) this.put(kv);
        this.loaded = true;
        this.persist();
        this.opts.logger.info({ flows: this.flows.size, drained: [...this.drained] }, 'NAT table loaded from etcd');
      },
      put: (kv) => {
        this.put(kv);
        this.persist();
      },
      delete: (kv) => {
        this.delete(kv);
        this.persist();
      },
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

/** A state file's content, checked entry by entry; anything unexpected refuses the whole file. */
export function readNatState(value: unknown): { flows: StoredFlow[]; drained: string[]; savedAt: string } | { error: string } {
  const v = value as Partial<NatStateFile> | null;
  if (typeof v !== 'object' || v === null || v.version !== 1 || !Array.isArray(v.flows) || !Array.isArray(v.drained)) {
    return { error: 'not a version 1 NAT state file (expected {version: 1, savedAt, flows: [...], drained: [...]})' };
  }
  const flows: StoredFlow[] = [];
  for (const [i, f] of v.flows.entries()) {
    const stored = parseFlow(JSON.stringify(f ?? null));
    if (!stored || !stored.rule.includes('/')) return { error: `flows[${i}] is not {flow, backend, rule: "policy/rule"}` };
    flows.push({ flow: stored.flow, backend: stored.backend, rule: stored.rule });
  }
  if (!v.drained.every((b) => typeof b === 'string')) return { error: 'drained must list backends as strings' };
  return { flows, drained: v.drained, savedAt: String(v.savedAt ?? '') };
}

function parseFlow(text: string): StoredFlow | undefined {
  try {
    const v = JSON.parse(text) as StoredFlow | null;
    return v !== null && typeof v === 'object' && typeof v.flow === 'string' && typeof v.backend === 'string' && typeof v.rule === 'string' ? v : undefined;
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
