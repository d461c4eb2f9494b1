// Policies in etcd: `<prefix>/policies/<name>` holds one policy document as JSON. Every replica
// loads them all, then follows a watch from the revision it loaded, so a change reaches every
// replica as soon as etcd delivers it. A stored policy that does not parse or validate is refused
// and the last good version of it stays in force.
//
// With a state dir, every snapshot published from etcd is also written to `<dir>/policies.json`
// (the accepted documents, etcd's revision, the time), and open() starts from that file, so a
// replica started while etcd is unreachable enforces the last good policy at once. etcd wins: once
// it answers, its policies replace the file's (a policy etcd holds in a refused form keeps the
// file's version, as a running replica keeps its last good one). With neither etcd nor a file, the
// `onNoState` choice applies once the first load attempt has had its time: fail-closed (default)
// keeps answering 503; fail-open enforces an empty policy (allow everything) and says so every minute.
import type { Etcd3, IKeyValue } from 'etcd3';
import type { Logger } from '../../observability/logger';
import { compileSnapshot } from '../../policy/compile';
import type { PolicyLimits } from '../../policy/limits';
import { parsePolicies } from '../../policy/parse';
import type { PolicyDocument, PolicyError, PolicySnapshot } from '../../policy/types';
import type { PolicySource, PolicyStatus, RejectedPolicy } from '../port';
import { withDeadline } from './client';
import { PrefixFollower } from './follow';
import { isCorruptSnapshot, readSnapshot, snapshotPath, SnapshotWriter } from '../disk';

export function policiesPrefix(prefix: string): string {
  return `${prefix}/policies/`;
}

export function policyKey(prefix: string, name: string): string {
  return `${policiesPrefix(prefix)}${name}`;
}

export interface EtcdPolicyStoreOptions {
  client: Etcd3;
  prefix: string;
  logger: Logger;
  /** Deadline of the initial load; retried with backoff until it succeeds or the store closes. */
  loadTimeoutMs?: number;
  /** Keep the last good policies in `<stateDir>/policies.json` and start from them. */
  stateDir?: string;
  /** With neither etcd nor a state file (default fail-closed). */
  onNoState?: OnNoState;
  /**
   * Bounds on one policy (bytes, rules per list); a stored policy past them is refused like any
   * invalid one. Default DEFAULT_POLICY_LIMITS.
   */
  limits?: PolicyLimits;
}

/** What decisions do while a replica has neither etcd nor a state file. */
export type OnNoState = 'fail-closed' | 'fail-open';
export const ON_NO_STATE: readonly OnNoState[] = ['fail-closed', 'fail-open'];

/** The state file's name in the state dir (policies.json). */
export const POLICY_STATE = 'policies';
const FAIL_OPEN_REMINDER_MS = 60_000;
const DEFAULT_LOAD_TIMEOUT_MS = 3000;

/** `<stateDir>/policies.json` */
export interface PolicyStateFile {
  version: 1;
  /** etcd's revision the documents were current at. */
  revision: string;
  savedAt: string;
  policies: PolicyDocument[];
}

export class EtcdPolicyStore implements PolicySource {
  private readonly documents = new Map<string, PolicyDocument>();
  private readonly rejected = new Map<string, RejectedPolicy>();
  private current: PolicySnapshot | undefined;
  private generation = 0;
  private connected = false;
  private readonly follower: PrefixFollower;
  private readonly listeners: Array<() => void> = [];
  private source: 'etcd' | 'disk' | 'none' = 'none';
  private revision = '0';
  private readonly writer: SnapshotWriter | undefined;
  private noStateTimer: NodeJS.Timeout | undefined;
  private failOpenReminder: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(private readonly opts: EtcdPolicyStoreOptions) {
    this.follower = new PrefixFollower(opts.client, policiesPrefix(opts.prefix), opts.logger, 'policies');
    if (opts.stateDir) {
      const file = snapshotPath(opts.stateDir, POLICY_STATE);
      this.writer = new SnapshotWriter(opts.stateDir, POLICY_STATE, {
        onError: (err) => opts.logger.warn({ file, err: err.message }, 'could not write the policy state file; the previous one stays'),
        onWritten: () => opts.logger.debug({ file }, 'policy state file written'),
      });
    }
  }

  /**
   * Starts from the state file if there is one, then loads from etcd in the background. Without
   * either, decisions fail closed (or open, by `onNoState`) until the first load completes.
   */
  static open(opts: EtcdPolicyStoreOptions): EtcdPolicyStore {
    const store = new EtcdPolicyStore(opts);
    store.loadFromDisk();
    store.armNoState();
    void store.loadUntilDone();
    return store;
  }

  snapshot(): PolicySnapshot | undefined {
    return this.current;
  }

  status(): PolicyStatus {
    return {
      loaded: this.current !== undefined,
      generation: this.generation,
      policies: this.documents.size,
      rejected: [...this.rejected.values()],
      connected: this.connected,
      source: this.current ? this.source : 'none',
    };
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  /** Resolves once the first load is done (or rejects after timeoutMs). */
  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.current) {
      if (Date.now() > deadline) throw new Error(`policies not loaded from etcd within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stopNoStateTimers();
    await this.follower.close();
    await this.writer?.close();
  }

  /** The state file, if any, becomes the snapshot in force until etcd answers. */
  private loadFromDisk(): void {
    const { stateDir, logger } = this.opts;
    if (!stateDir) return;
    const file = snapshotPath(stateDir, POLICY_STATE);
    const value = readSnapshot(stateDir, POLICY_STATE);
    if (value === undefined) {
      logger.info({ file }, 'no policy state file yet; it is written once policies load from etcd');
      return;
    }
    const state = isCorruptSnapshot(value) ? { error: value.message } : readPolicyState(value, file, this.opts.limits);
    if ('error' in state) {
      logger.error({ file, err: state.error }, 'policy state file is corrupt or invalid; ignored');
      return;
    }
    for (const d of state.documents) this.documents.set(d.metadata.name, d);
    this.revision = state.revision;
    this.publish('disk');
    logger.warn(
      { file, policies: this.documents.size, revision: state.revision, savedAt: state.savedAt },
      'policies loaded from the state dir; etcd replaces them once it answers',
    );
  }

  /** Neither etcd nor a state file by the first load's deadline: apply the onNoState choice. */
  private armNoState(): void {
    if (this.current) return;
    const { logger } = this.opts;
    const choice = this.opts.onNoState ?? 'fail-closed';
    const waitMs = this.opts.loadTimeoutMs ?? DEFAULT_LOAD_TIMEOUT_MS;
    this.noStateTimer = setTimeout(() => {
      this.noStateTimer = undefined;
      if (this.current || this.closed) return;
      if (choice === 'fail-closed') {
        logger.error({ onNoState: choice }, 'no policy from etcd and no state file: failing closed (503) until etcd answers');
        return;
      }
      this.publish('none');
      const warn = () =>
        logger.warn({ onNoState: choice }, 'no policy from etcd and no state file: failing OPEN, every request is allowed until etcd answers');
      warn();
      this.failOpenReminder = setInterval(warn, FAIL_OPEN_REMINDER_MS);
      this.failOpenReminder.unref();
    }, waitMs);
    this.noStateTimer.unref();
  }

  private stopNoStateTimers(): void {
    if (this.noStateTimer) clearTimeout(this.noStateTimer);
    if (this.failOpenReminder) clearInterval(this.failOpenReminder);
    this.noStateTimer = undefined;
    this.failOpenReminder = undefined;
  }

  private async loadUntilDone(): Promise<void> {
    const { prefix, logger } = this.opts;
    await this.follower.start(
      {
        loaded: (kvs, revision) => {
          this.stopNoStateTimers();
          const before = this.source;
          // etcd's content replaces whatever was in force (the state file, the fail-open empty
          // policy, or an earlier load); a refused policy keeps its last good version.
          const lastGood = new Map(this.documents);
          this.documents.clear();
          this.rejected.clear();
          for (const kv of kvs) this.accept(kv, lastGood);
          this.revision = revision;
          this.publish('etcd');
          logger.info({ policies: this.documents.size, revision, replacing: before }, 'policies loaded from etcd');
        },
        put: (kv) => {
          this.accept(kv);
          this.revision = kv.mod_revision;
          this.publish('etcd');
        },
        delete: (kv) => {
          const key = kv.key.toString();
          this.documents.delete(nameOf(key, prefix));
          this.rejected.delete(key);
          logger.info({ policy: nameOf(key, prefix) }, 'policy deleted');
          this.revision = kv.mod_revision;
          this.publish('etcd');
        },
        connection: (connected) => {
          if (connected && !this.connected && this.current) logger.info('policy watch connected to etcd');
          this.connected = connected;
          this.notify();
        },
      },
      this.opts.loadTimeoutMs,
    );
  }

  /** Takes one stored policy in, or refuses it and keeps the last good version. */
  private accept(kv: IKeyValue, lastGood?: ReadonlyMap<string, PolicyDocument>): void {
    const key = kv.key.toString();
    const name = nameOf(key, this.opts.prefix);
    const { document, errors } = readStored(key, name, kv.value.toString(), undefined, this.opts.limits);
    if (document) {
      this.documents.set(name, document);
      this.rejected.delete(key);
      this.opts.logger.info({ policy: name, revision: kv.mod_revision }, 'policy applied');
      return;
    }
    const last = this.documents.get(name) ?? lastGood?.get(name);
    if (last) this.documents.set(name, last);
    const keptLastGood = last !== undefined;
    this.rejected.set(key, { key, errors, keptLastGood });
    this.opts.logger.error(
      { policy: name, key, revision: kv.mod_revision, errors: errors.map((e) => e.message), keptLastGood },
      keptLastGood ? 'stored policy rejected; the last good version stays in force' : 'stored policy rejected; it has no earlier good version',
    );
  }

  private publish(source: 'etcd' | 'disk' | 'none'): void {
    this.generation += 1;
    this.current = compileSnapshot([...this.documents.values()], this.generation);
    this.source = source;
    if (source === 'etcd') this.persist();
    this.notify();
  }

  /** Only what came from etcd is written: the file is always a snapshot etcd held. */
  private persist(): void {
    if (!this.writer) return;
    const policies = [...this.documents.values()];
    const revision = this.revision;
    this.writer.schedule((): PolicyStateFile => ({ version: 1, revision, savedAt: new Date().toISOString(), policies }));
  }

  private notify(): void {
    for (const l of this.listeners) l();
  }
}

function nameOf(key: string, prefix: string): string {
  return key.slice(policiesPrefix(prefix).length);
}

/** A stored value must be exactly one valid policy, within `limits`, whose name matches its key. */
export function readStored(
  key: string,
  name: string,
  text: string,
  file = `etcd:${key}`,
  limits?: PolicyLimits,
): { document?: PolicyDocument; errors: PolicyError[] } {
  const { documents, errors } = parsePolicies(text, file, limits);
  if (errors.length) return { errors };
  if (documents.length !== 1) return { errors: [{ file, message: `expected exactly one policy document, found ${documents.length}` }] };
  const document = documents[0]!;
  if (document.metadata.name !== name) {
    return { errors: [{ file, message: `metadata.name ${JSON.stringify(document.metadata.name)} does not match the key's name ${JSON.stringify(name)}` }] };
  }
  return { document, errors: [] };
}

/**
 * A state file's content, checked as strictly as etcd's: every document goes through readStored
 * (parse and validate), so an edited file cannot put an invalid policy in force. Any error refuses
 * the whole file, since enforcing part of the last good policy set could allow what it denies.
 */
export function readPolicyState(
  value: unknown,
  file: string,
  limits?: PolicyLimits,
): { documents: PolicyDocument[]; revision: string; savedAt: string } | { error: string } {
  const v = value as Partial<PolicyStateFile> | null;
  if (typeof v !== 'object' || v === null || v.version !== 1 || !Array.isArray(v.policies)) {
    return { error: 'not a version 1 policy state file (expected {version: 1, revision, savedAt, policies: [...]})' };
  }
  const documents: PolicyDocument[] = [];
  const names = new Set<string>();
  for (const [i, item] of v.policies.entries()) {
    const name = (item as Partial<PolicyDocument> | null)?.metadata?.name;
    if (typeof name !== 'string') return { error: `policies[${i}] has no metadata.name` };
    if (names.has(name)) return { error: `policy ${JSON.stringify(name)} appears twice` };
    names.add(name);
    const { document, errors } = readStored(name, name, JSON.stringify(item), `${file}#${name}`, limits);
    if (!document) return { error: `policy ${JSON.stringify(name)} is invalid: ${errors.map((e) => e.message).join('; ')}` };
    documents.push(document);
  }
  return { documents, revision: String(v.revision ?? '0'), savedAt: String(v.savedAt ?? '') };
}

// --- what `middlebox policy apply|get|delete` does ---------------------------------------------

export async function putPolicies(client: Etcd3, prefix: string, docs: PolicyDocument[], timeoutMs = 5000): Promise<void> {
  // One transaction: a file with several policies applies all of them or none. etcd3's builder needs
  // a comparison to start a transaction; "version != -1" holds for every key, present or not.
  await withDeadline('policy apply', timeoutMs, () => {
    const txn = client.if(policyKey(prefix, docs[0]!.metadata.name), 'Version', '!=', -1);
    return txn.then(...docs.map((d) => client.put(policyKey(prefix, d.metadata.name)).value(JSON.stringify(d)))).commit();
  });
}

export async function getPolicies(client: Etcd3, prefix: string, timeoutMs = 5000): Promise<Map<string, string>> {
  const kvs = await withDeadline('policy get', timeoutMs, () => client.getAll().prefix(policiesPrefix(prefix)).strings());
  const out = new Map<string, string>();
  for (const [key, value] of Object.entries(kvs)) out.set(nameOf(key, prefix), value);
  return out;
}

export async function deletePolicy(client: Etcd3, prefix: string, name: string, timeoutMs = 5000): Promise<boolean> {
  const res = await withDeadline('policy delete', timeoutMs, () => client.delete().key(policyKey(prefix, name)).exec());
  return Number(res.deleted) > 0;
}
