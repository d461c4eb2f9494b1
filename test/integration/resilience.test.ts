// etcd frozen (SIGSTOP), resumed, killed and restarted from its data dir, under traffic through a
// real Envoy and three replicas: no request fails, the breaker opens fast, limits hold within the
// local bound, the firewall keeps its policy, and counts and NAT mappings reconcile afterwards.
import assert from 'node:assert/strict';
import { Etcd3 } from 'etcd3';
import { httpRequest, type HttpResult } from '../../src/lab/client';
import { sleep, waitFor } from '../../src/lab/ports';
import { LAB_ETCD_TIMEOUT_MS, SidecarLab } from '../../src/lab/sidecar';
import { startHttpUpstream, type Upstream } from '../../src/lab/upstream';
import { parsePolicies } from '../../src/policy/parse';
import { etcdKey } from '../../src/state/etcd/ratelimit';
import { flowKey } from '../../src/state/etcd/nat';
import { jsonLines } from '../harness/log';

const LIMIT = 60;

describe('resilience: etcd frozen, resumed, killed and restarted under traffic', function () {
  this.timeout(180_000);
  let lab: SidecarLab;
  let backends: Upstream[];
  let etcd: Etcd3;

  before(async () => {
    backends = [await startHttpUpstream({ name: 'n1' }), await startHttpUpstream({ name: 'n2' })];
    lab = await SidecarLab.start({ replicas: 3, outbound: true, memberTtlS: 60 });
    const text = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: edge }
spec:
  firewall: { rules: [ { name: no-admin, action: deny, paths: ["/admin/*"] } ] }
  rateLimits:
    - { name: strict, match: { paths: ["/rl/*"] }, limit: ${LIMIT}, per: 1h, by: ["header:x-phase"], algorithm: fixed-window, consistency: strict }
  nat:
    - { name: svc, match: { hosts: ["svc.local"] }, to: ${JSON.stringify(backends.map((b) => `127.0.0.1:${b.port}`))}, affinity: sourceIp }
`;
    const { documents, errors } = parsePolicies(text, 'resilience');
    assert.deepEqual(errors, []);
    await lab.applyPolicies(documents);
    await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/admin/x' })).status === 403, { timeoutMs: 5000, what: 'the policy' });
    await sleep(500); // every replica has seen the others join
    etcd = new Etcd3({ hosts: lab.etcd.endpoint });
  });

  after(async () => {
    etcd?.close();
    lab?.etcd.thaw();
    await lab?.stop();
    for (const b of backends ?? []) await b.close();
  });

  const get = (path: string, headers: Record<string, string> = {}) => httpRequest({ port: lab.httpPort, path, headers, timeoutMs: 5000 });
  const breakerState = (i: number) => lab.replicas[i]!.health.check('middlebox.etcd');

  /** `n` requests, `concurrency` at a time; every answer (a connection error becomes status 0). */
  async function traffic(n: number, path: string, headers: Record<string, string>, concurrency = 6): Promise<HttpResult[]> {
    const out: HttpResult[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < n) {
          next += 1;
          out.push(await get(path, headers).catch((e: Error) => ({ status: 0, headers: {}, body: e.message })));
        }
      }),
    );
    return out;
  }

  const count = (rs: HttpResult[], status: number) => rs.filter((r) => r.status === status).length;

  async function sharedCount(phase: string): Promise<number> {
    const value = await etcd.get(etcdKey(lab.prefix, { policy: 'edge', name: 'strict' } as never, phase)).string();
    return value ? (JSON.parse(value) as { c: number }).c : 0;
  }

  async function outage(phase: string, cause: () => Promise<void> | void, heal: () => Promise<void> | void) {
    const frozenAt = Date.now();
    await cause();
    // Traffic on a fresh bucket while etcd is away: every request is answered, none fails.
    const during = await traffic(3 * LIMIT, '/rl/x', { 'x-phase': phase });
    const failures = during.filter((r) => r.status !== 200 && r.status !== 429);
    assert.deepEqual(failures.map((r) => `${r.status} ${r.body.slice(0, 80)}`), [], 'no request may fail while etcd is away');
    for (let i = 0; i < 3; i++) assert.equal(await breakerState(i), 'NOT_SERVING', `replica ${i} reports etcd degraded`);
    for (let i = 0; i < 3; i++) assert.equal(await lab.replicas[i]!.health.check(''), 'SERVING');
    // Local bound: each of the three replicas admits its share (limit ÷ 3), no more.
    const admitted = count(during, 200);
    assert.ok(admitted <= LIMIT + 3 && admitted >= LIMIT - 3, `admitted ${admitted} during the outage, limit ${LIMIT}`);
    // The firewall keeps its last policy.
    assert.equal((await get('/admin/users')).status, 403);
    // NAT: a new flow gets the same backend from every replica (rendezvous hashing), with no etcd.
    const natFrom = `127.0.${phase === 'frozen' ? 3 : 4}.9`;
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) {
      const r = await httpRequest({ port: lab.outboundPort!, headers: { host: 'svc.local' }, localAddress: natFrom });
      assert.equal(r.status, 200);
      seen.add(JSON.parse(r.body).upstream);
    }
    assert.equal(seen.size, 1, `flow ${natFrom} landed on ${[...seen]}`);

    await heal();
    // Requests after recovery let the half-open probe through; then the breaker closes.
    await waitFor(
      async () => {
        await get('/rl/y', { 'x-phase': `${phase}-probe` });
        return (await Promise.all([0, 1, 2].map(breakerState))).every((s) => s === 'SERVING');
      },
      { timeoutMs: 15_000, intervalMs: 200, what: 'every replica to close its breaker' },
    );
    // Reconciled: the shared window holds what was admitted during the outage, so strict mode,
    // now back, admits only what is left of the limit.
    await waitFor(async () => (await sharedCount(phase)) >= admitted, { timeoutMs: 5000, what: 'local consumption written back' });
    const after = await traffic(LIMIT, '/rl/x', { 'x-phase': phase });
    assert.equal(count(after, 200), Math.max(0, LIMIT - admitted));
    await waitFor(async () => (await etcd.get(flowKey(lab.prefix, { policy: 'edge', name: 'svc' }, natFrom)).string()) !== null, {
      timeoutMs: 5000,
      what: 'the NAT mapping made during the outage to be written to etcd',
    });
    return Date.now() - frozenAt;
  }

  it('etcd frozen (SIGSTOP) then resumed', async () => {
    await outage('frozen', () => lab.etcd.freeze(), () => lab.etcd.thaw());
  });

  it('the breaker opens within twice the operation timeout of the first failed operation', async () => {
    await lab.etcd.freeze();
    try {
      const t0 = Date.now();
      // A burst that needs etcd (a strict limit on a fresh key) reaches every replica at once.
      const burst = traffic(24, '/rl/x', { 'x-phase': 'timing' }, 12);
      const opened = await Promise.all(
        [0, 1, 2].map(async (i) => {
          await waitFor(async () => (await breakerState(i)) === 'NOT_SERVING', { timeoutMs: 3000, intervalMs: 10, what: `replica ${i}'s breaker to open` });
          return Date.now() - t0;
        }),
      );
      const answers = await burst;
      assert.deepEqual(answers.filter((r) => r.status !== 200 && r.status !== 429).map((r) => r.status), []);
      // When each breaker opened, by the replica's own log line (its clock is this one's): polling
      // three replicas' health on two busy cores would add its own delay to the measurement.
      // The whole log file, not the last lines a replica's output() keeps.
      const openedAt = (i: number) =>
        jsonLines(lab.replicaLogFile(i))
          .map((l) => l as { msg?: string; time: number })
          .find((l) => l.msg === 'etcd breaker open: deciding from local state' && l.time >= t0);
      for (const [i, polled] of opened.entries()) {
        await waitFor(() => openedAt(i) !== undefined, { timeoutMs: 3000, what: `replica ${i}'s breaker opening in its log (health said open ${polled} ms after the first request)` });
        const ms = openedAt(i)!.time - t0;
        assert.ok(ms <= 2 * LAB_ETCD_TIMEOUT_MS + 150, `replica ${i}'s breaker opened ${ms} ms after the first request`);
      }
    } finally {
      lab.etcd.thaw();
    }
    await waitFor(
      async () => {
        await get('/rl/y', { 'x-phase': 'timing-probe' });
        return (await Promise.all([0, 1, 2].map(breakerState))).every((s) => s === 'SERVING');
      },
      { timeoutMs: 15_000, intervalMs: 200, what: 'every replica to close its breaker' },
    );
  });

  it('etcd killed, then restarted from its data dir', async () => {
    await outage('killed', () => lab.etcd.kill(), () => lab.etcd.restart());
  });
});
