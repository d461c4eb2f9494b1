// Replica membership: each replica keeps `<prefix>/replicas/<id>` alive on an etcd lease and
// watches the others', so every replica knows how many share the limits. A replica that dies stops
// counting when its lease expires (ttl seconds); one that shuts down cleanly revokes it at once.
// While etcd is unreachable the last count is kept.
import os from 'node:os';
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from '../../observability/logger';
import { PrefixFollower } from './follow';

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
  private readonly follower: PrefixFollower;
  private closed = false;
  readonly id: string;

  private constructor(private readonly opts: MembershipOptions) {
    this.id = opts.id ?? defaultReplicaId();
    this.members.add(this.id);
    this.follower = new PrefixFollower(opts.client, `${opts.prefix}/replicas/`, opts.logger, 'replica membership');
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
    // The key first: the others stop counting this replica at once, whatever the watch does.
    await this.lease?.revoke().catch(() => undefined);
    await this.follower.close();
  }

  private get keyPrefix(): string {
    return `${this.opts.prefix}/replicas/`;
  }

  private async joinUntilDone(): Promise<void> {
    const idOf = (key: Buffer) => key.toString().slice(this.keyPrefix.length);
    await Promise.all([
      this.registerUntilDone(),
      this.follower.start({
        loaded: (kvs) => {
          this.members.clear();
          for (const kv of kvs) this.members.add(idOf(kv.key));
          this.members.add(this.id);
          this.opts.logger.info({ id: this.id, replicas: this.count() }, 'joined replica membership');
        },
        put: (kv) => this.members.add(idOf(kv.key)),
        // This replica counts itself even while its own key is gone (etcd unreachable, lease lost).
        delete: (kv) => {
          if (idOf(kv.key) !== this.id) this.members.delete(idOf(kv.key));
        },
      }),
    ]);
  }

  private async registerUntilDone(): Promise<void> {
    const { client, logger } = this.opts;
    let backoff = 200;
    while (!this.closed) {
      // Granted and kept alive from here on: one whose registration fails is revoked (or at least
      // no longer kept alive), or each retry would leave one more lease alive for good.
      const lease = client.lease(this.opts.ttlS ?? DEFAULT_MEMBER_TTL_S);
      try {
        lease.on('lost', (err) => {
          // A lease whose registration failed is retried by this loop already; only the one in
          // force, lost later (etcd away longer than its TTL), starts a new registration.
          if (this.lease !== lease) return;
          this.lease = undefined;
          logger.warn({ err: err.message }, 'replica membership lease lost; registering again');
          if (!this.closed) void this.registerUntilDone();
        });
        await lease.put(`${this.keyPrefix}${this.id}`).value(JSON.stringify({ id: this.id, since: new Date().toISOString() }));
        // leave() came while the key was being written: it had no lease to revoke yet.
        if (this.closed) await lease.revoke().catch(() => lease.release());
        else this.lease = lease;
        return;
      } catch (e) {
        void lease.revoke().catch(() => lease.release());
        logger.warn({ err: (e as Error).message, retryInMs: backoff }, 'cannot register in replica membership; retrying');
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }
}
