// Replica membership: each replica keeps `<prefix>/replicas/<id>` alive on an etcd lease and
// watches the others', so every replica knows how many share the limits. A replica that dies stops
// counting when its lease expires (ttl seconds); one that shuts down cleanly revokes it at once.
// While etcd is unreachable the last count is kept.
import os from 'node:os';
import type { Etcd3, Lease, Watcher } from 'etcd3';
import type { Logger } from '../../observability/logger';

export interface MembershipOptions {
  client: Etcd3;
  prefix: string;
  logger: Logger;
  id?: string;
  /** Lease time-to-live in seconds. */
  ttlS?: number;
}

export const DEFAULT_MEMBER_TTL_S = 10;

export function defaultReplicaId(): string {
  return `${os.hostname()}-${process.pid}`;
}

export class EtcdMembership {
  private readonly members = new Set<string>();
  private lease: Lease | undefined;
  private watcher: Watcher | undefined;
  private closed = false;
  readonly id: string;

  private constructor(private readonly opts: MembershipOptions) {
    this.id = opts.id ?? defaultReplicaId();
    this.members.add(this.id);
  }

  /** Joins in the background (retrying while etcd is away); counts itself from the start. */
  static join(opts: MembershipOptions): EtcdMembership {
    const m = new EtcdMembership(opts);
    void m.joinUntilDone();
    return m;
  }

  /** Live replicas, this one included; never less than 1. */
  count(): number {
    return Math.max(1, this.members.size);
  }

  async leave(): Promise<void> {
    this.closed = true;
    await this.watcher?.cancel().catch(() => undefined);
    await this.lease?.revoke().catch(() => undefined);
  }

  private get keyPrefix(): string {
    return `${this.opts.prefix}/replicas/`;
  }

  private async joinUntilDone(): Promise<void> {
    let backoff = 200;
    while (!this.closed) {
      try {
        await this.register();
        await this.follow();
        return;
      } catch (e) {
        this.opts.logger.warn({ err: (e as Error).message, retryInMs: backoff }, 'cannot join replica membership in etcd; retrying');
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  private async register(): Promise<void> {
    const { client, logger } = this.opts;
    const lease = client.lease(this.opts.ttlS ?? DEFAULT_MEMBER_TTL_S);
    lease.on('lost', (err) => {
      logger.warn({ err: err.message }, 'replica membership lease lost; joining again');
      if (!this.closed) void this.joinUntilDone();
    });
    await lease.put(`${this.keyPrefix}${this.id}`).value(JSON.stringify({ id: this.id, since: new Date().toISOString() }));
    this.lease = lease;
  }

  private async follow(): Promise<void> {
    const { client, logger } = this.opts;
    if (this.watcher) return;
    const res = await client.getAll().prefix(this.keyPrefix).exec();
    this.members.clear();
    for (const kv of res.kvs) this.members.add(kv.key.toString().slice(this.keyPrefix.length));
    this.members.add(this.id);
    this.watcher = await client.watch().prefix(this.keyPrefix).startRevision(String(BigInt(res.header.revision) + 1n)).create();
    this.watcher
      .on('put', (kv) => this.members.add(kv.key.toString().slice(this.keyPrefix.length)))
      .on('delete', (kv) => {
        const id = kv.key.toString().slice(this.keyPrefix.length);
        if (id !== this.id) this.members.delete(id);
      });
    logger.info({ id: this.id, replicas: this.count() }, 'joined replica membership');
  }
}
