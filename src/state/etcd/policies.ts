// Policies in etcd: `<prefix>/policies/<name>` holds one policy document as JSON. Every replica
// loads them all, then follows a watch from the revision it loaded, so a change reaches every
// replica as soon as etcd delivers it. A stored policy that does not parse or validate is refused
// and the last good version of it stays in force.
import type { Etcd3, IKeyValue } from 'etcd3';
import type { Logger } from '../../observability/logger';
import { compileSnapshot } from '../../policy/compile';
import { parsePolicies } from '../../policy/parse';
import type { PolicyDocument, PolicyError, PolicySnapshot } from '../../policy/types';
import type { PolicySource, PolicyStatus, RejectedPolicy } from '../port';
import { withDeadline } from './client';
import { PrefixFollower } from './follow';

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
}

export class EtcdPolicyStore implements PolicySource {
  private readonly documents = new Map<string, PolicyDocument>();
  private readonly rejected = new Map<string, RejectedPolicy>();
  private current: PolicySnapshot | undefined;
  private generation = 0;
  private connected = false;
  private readonly follower: PrefixFollower;
  private readonly listeners: Array<() => void> = [];

  private constructor(private readonly opts: EtcdPolicyStoreOptions) {
    this.follower = new PrefixFollower(opts.client, policiesPrefix(opts.prefix), opts.logger, 'policies');
  }

  /** Starts loading in the background; decisions fail closed until the first load completes. */
  static open(opts: EtcdPolicyStoreOptions): EtcdPolicyStore {
    const store = new EtcdPolicyStore(opts);
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
    await this.follower.close();
  }

  private async loadUntilDone(): Promise<void> {
    const { prefix, logger } = this.opts;
    await this.follower.start(
      {
        loaded: (kvs, revision) => {
          for (const kv of kvs) this.accept(kv);
          this.publish();
          logger.info({ policies: this.documents.size, revision }, 'policies loaded from etcd');
        },
        put: (kv) => {
          this.accept(kv);
          this.publish();
        },
        delete: (kv) => {
          const key = kv.key.toString();
          this.documents.delete(nameOf(key, prefix));
          this.rejected.delete(key);
          logger.info({ policy: nameOf(key, prefix) }, 'policy deleted');
          this.publish();
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
  private accept(kv: IKeyValue): void {
    const key = kv.key.toString();
    const name = nameOf(key, this.opts.prefix);
    const { document, errors } = readStored(key, name, kv.value.toString());
    if (document) {
      this.documents.set(name, document);
      this.rejected.delete(key);
      this.opts.logger.info({ policy: name, revision: kv.mod_revision }, 'policy applied');
      return;
    }
    const keptLastGood = this.documents.has(name);
    this.rejected.set(key, { key, errors, keptLastGood });
    this.opts.logger.error(
      { policy: name, key, revision: kv.mod_revision, errors: errors.map((e) => e.message), keptLastGood },
      keptLastGood ? 'stored policy rejected; the last good version stays in force' : 'stored policy rejected; it has no earlier good version',
    );
  }

  private publish(): void {
    this.generation += 1;
    this.current = compileSnapshot([...this.documents.values()], this.generation);
    this.notify();
  }

  private notify(): void {
    for (const l of this.listeners) l();
  }
}

function nameOf(key: string, prefix: string): string {
  return key.slice(policiesPrefix(prefix).length);
}

/** A stored value must be exactly one valid policy whose name matches its key. */
export function readStored(key: string, name: string, text: string): { document?: PolicyDocument; errors: PolicyError[] } {
  const file = `etcd:${key}`;
  const { documents, errors } = parsePolicies(text, file);
  if (errors.length) return { errors };
  if (documents.length !== 1) return { errors: [{ file, message: `expected exactly one policy document, found ${documents.length}` }] };
  const document = documents[0]!;
  if (document.metadata.name !== name) {
    return { errors: [{ file, message: `metadata.name ${JSON.stringify(document.metadata.name)} does not match the key's name ${JSON.stringify(name)}` }] };
  }
  return { document, errors: [] };
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
