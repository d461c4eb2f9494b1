// Shared leases for keys that must disappear by themselves when idle (rate-limit buckets, NAT
// flows). One lease serves every key of the same lifetime class until it is too close to its end,
// so a write costs no extra lease call and idle keys expire between ttl and twice ttl after their
// last write.
import { EtcdLeaseInvalidError, type Etcd3 } from 'etcd3';

/** etcd refused a write for a lease it does not have (anymore). */
function isLeaseGone(e: unknown): boolean {
  return e instanceof EtcdLeaseInvalidError || /requested lease not found/.test((e as Error)?.message ?? '');
}

const MIN_LEASE_TTL_S = 5;

export class SharedLeases {
  private readonly leases = new Map<number, { id: Promise<string>; expiresAt: number }>();

  constructor(
    private readonly client: Etcd3,
    /** Runs a lease grant (the breaker); a lease already granted costs no call. */
    private readonly guard: <T>(op: () => Promise<T>, operation?: 'lease_grant') => Promise<T> = (op) => op(),
  ) {}

  /**
   * Runs `write` with a lease that outlives `ttlMs` from `now`. A write that etcd refuses because it
   * no longer has the lease (revoked, or etcd restored from a backup) drops it, so that the next
   * write is granted a new one instead of failing until this one would have run out.
   */
  async withLease<T>(ttlMs: number, now: number, write: (lease: string) => Promise<T>): Promise<T> {
    const lease = await this.leaseFor(ttlMs, now);
    try {
      return await write(lease);
    } catch (e) {
      this.dropIfGone(lease, e);
      throw e;
    }
  }

  /** After a write with `lease` failed with `e`: if etcd no longer has the lease, the next write gets a new one. */
  dropIfGone(lease: string, e: unknown): void {
    if (!isLeaseGone(e)) return;
    for (const [ttlS, l] of this.leases) {
      void l.id.then(
        (id) => {
          if (id === lease && this.leases.get(ttlS) === l) this.leases.delete(ttlS);
        },
        () => undefined,
      );
    }
  }

  /** A lease that outlives `ttlMs` from `now`. */
  leaseFor(ttlMs: number, now: number): Promise<string> {
    const ttlS = Math.max(MIN_LEASE_TTL_S, Math.ceil(ttlMs / 1000));
    const current = this.leases.get(ttlS);
    if (current && current.expiresAt - now >= ttlMs) return current.id;
    const grantTtl = ttlS * 2;
    const id = this.guard(() => this.client.lease(grantTtl, { autoKeepAlive: false }).grant(), 'lease_grant');
    this.leases.set(ttlS, { id, expiresAt: now + grantTtl * 1000 });
    id.catch(() => this.leases.delete(ttlS));
    return id;
  }
}
