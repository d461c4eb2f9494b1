// The keys a replica writes to etcd for NAT flows and rate-limit buckets, on a real etcd.
// - They are bound to shared leases that a replica keeps until they run short. When etcd no longer
//   has such a lease (revoked, or etcd restored from a backup), the next write that uses it fails;
//   the one after must get a new lease, not fail until the old one would have run out (twice the
//   idle time: minutes, with the NAT breaker open all along).
// - A NAT rule records a bounded number of flows: flows keyed by a client-chosen header must not
//   fill etcd.
import assert from 'node:assert/strict';
import type { Etcd3 } from 'etcd3';
import { waitFor } from '../../src/lab/ports';
import { silentLogger } from '../../src/observability/logger';
import { EtcdMembership } from '../../src/state/etcd/membership';
import { EtcdNatTable } from '../../src/state/etcd/nat';
import { EtcdRateLimitStore } from '../../src/state/etcd/ratelimit';
import { snapshot } from '../harness/policy';
import { etcdForSuite } from '../harness/etcd';

const POLICY = snapshot({
  shop: `{ rateLimits: [{ name: exact, limit: 100, per: 1h, algorithm: fixed-window, consistency: strict }],
           nat: [{ name: vip, match: { hosts: ["vip.local"] }, to: ["10.0.0.1:80", "10.0.0.2:80"], affinity: sourceIp }] }`,
}).policies[0]!;

describe('NAT flow, rate-limit and membership keys in etcd: leases, the per-rule flow cap', function () {
  this.timeout(60_000);
  let client: Etcd3;
  etcdForSuite((_, c) => {
    client = c;
  });

  /** Revokes the lease `key` is bound to, as an operator (or a restore from backup) would lose it. */
  async function revokeLeaseOf(key: string): Promise<void> {
    const kv = (await client.get(key).exec()).kvs[0];
    assert.ok(kv && kv.lease !== '0', `${key} is bound to a lease`);
    await client.leaseClient.leaseRevoke({ ID: kv.lease });
  }

  // First in the file: the leases it counts are its own (the etcd is fresh).
  it('membership: each registration etcd refuses leaves no lease kept alive behind it', async () => {
    let refused = 0;
    const logger = silentLogger();
    logger.warn = ((_: unknown, msg?: string) => {
      if (msg === 'cannot register in replica membership; retrying') refused += 1;
    }) as typeof logger.warn;
    // A key past etcd's request size: the lease is granted, the write refused, every time.
    const membership = EtcdMembership.join({ client, prefix: '/lease-members', logger, id: 'x'.repeat(2 * 1024 * 1024), ttlS: 30 });
    try {
      await waitFor(() => refused >= 4, { timeoutMs: 20_000, what: 'four refused registrations' });
      const { leases } = await client.leaseClient.leaseLeases();
      assert.ok(leases.length <= 1, `${leases.length} leases alive after ${refused} refused registrations`);
    } finally {
      await membership.leave();
    }
  });

  it('NAT: one write fails, the next is granted a new lease', async () => {
    const rule = POLICY.nat[0]!;
    const table = EtcdNatTable.open({ client, prefix: '/lease-nat', logger: silentLogger() });
    try {
      await waitFor(() => table.isLoaded, { timeoutMs: 10_000, what: 'the NAT table to load' });
      const now = Date.now();
      assert.equal(await table.assign(rule, '192.0.2.1', '10.0.0.1:80', undefined, now), '10.0.0.1:80');
      const [key] = Object.keys(await client.getAll().prefix('/lease-nat/nat/').strings());
      await revokeLeaseOf(key!);
      await assert.rejects(table.assign(rule, '192.0.2.2', '10.0.0.2:80', undefined, now), /lease not found/);
      assert.equal(await table.assign(rule, '192.0.2.2', '10.0.0.2:80', undefined, now), '10.0.0.2:80');
      assert.equal(Object.keys(await client.getAll().prefix('/lease-nat/nat/').strings()).length, 1, 'the revoked flow expired with its lease; the new one is stored');
    } finally {
      await table.close();
    }
  });

  it('NAT: a rule records at most --max-nat-flows-per-rule flows; further ones keep their hashed backend, unrecorded', async () => {
    const rule = POLICY.nat[0]!;
    const table = EtcdNatTable.open({ client, prefix: '/cap-nat', logger: silentLogger(), maxFlowsPerRule: 2 });
    try {
      await waitFor(() => table.isLoaded, { timeoutMs: 10_000, what: 'the NAT table to load' });
      const now = Date.now();
      for (const [flow, backend] of [['192.0.2.1', '10.0.0.1:80'], ['192.0.2.2', '10.0.0.2:80'], ['192.0.2.3', '10.0.0.1:80']]) {
        assert.equal(await table.assign(rule, flow!, backend!, undefined, now), backend);
      }
      assert.equal(Object.keys(await client.getAll().prefix('/cap-nat/nat/').strings()).length, 2, 'two flows stored');
      assert.equal(table.overCap, 1);
      assert.equal(table.lookup(rule, '192.0.2.3'), undefined, 'the third is not recorded');
      // A flow already recorded may still move (a drained backend's flows do).
      assert.equal(await table.assign(rule, '192.0.2.1', '10.0.0.2:80', '10.0.0.1:80', now), '10.0.0.2:80');
      assert.equal(table.lookup(rule, '192.0.2.1'), '10.0.0.2:80');
    } finally {
      await table.close();
    }
  });

  it('rate limits: one compare-and-swap fails, the next is granted a new lease', async () => {
    const rule = POLICY.rateLimits[0]!;
    const store = new EtcdRateLimitStore({ client, prefix: '/lease-rl', logger: silentLogger(), replicas: () => 1 });
    const now = Date.now();
    assert.equal((await store.consume({ rule, key: 'a', now })).allowed, true);
    const [key] = Object.keys(await client.getAll().prefix('/lease-rl/ratelimit/').strings());
    await revokeLeaseOf(key!);
    await assert.rejects(Promise.resolve(store.consume({ rule, key: 'b', now })), /lease not found/);
    assert.equal((await store.consume({ rule, key: 'b', now })).allowed, true);
  });
});
