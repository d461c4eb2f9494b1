// Shared leases for keys that must disappear by themselves when idle (rate-limit buckets, NAT
// flows). One lease serves every key of the same lifetime class until it is too close to its end,
// so a write costs no extra lease call and idle keys expire between ttl and twice ttl after their
// last write.
import type { Etcd3 } from 'etcd3';

const MIN_LEASE_TTL_S = 5;

export class SharedLeases {
  private readonly leases = new Map<number, { id: Promise<string>; expiresAt: number }>();

  constructor(
    private readonly client: Etcd3,
    /** Runs a lease grant (the breaker); a lease already granted costs no call. */
    private readonly guard: <T>(op: () => Promise<T>, operation?: 'lease_grant') => Promise<T> = (op) => op(),
  ) {}

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
