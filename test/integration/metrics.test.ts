// The admin port end to end: a real etcd, two real replicas and a real Envoy, real HTTP traffic;
// each metric must move with the traffic that should move it. Scrapes are parsed into samples and
// summed over the replicas (Envoy spreads requests over both), never compared as text.
import assert from 'node:assert/strict';
import { Etcd3 } from 'etcd3';
import { httpRequest, type HttpResult } from '../../src/lab/client';
import { adminGet, MiddleboxProcess, sumMetric, type MetricSample } from '../../src/lab/middlebox';
import { freePort, waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { startHttpUpstream, type Upstream } from '../../src/lab/upstream';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';
import { policyKey } from '../../src/state/etcd/policies';
import { middlebox } from '../harness/cli';

const RL_LIMIT = 5;

describe('metrics and health on the admin port (real etcd, Envoy and two replicas)', function () {
  this.timeout(120_000);
  let lab: SidecarLab;
  let etcd: Etcd3;
  const backends: Upstream[] = [];
  const extra: MiddleboxProcess[] = [];

  function policy(extraRule = ''): PolicyDocument {
    const to = JSON.stringify(backends.map((b) => `127.0.0.1:${b.port}`));
    const text = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: obs }
spec:
  firewall:
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"] }
${extraRule}
  rateLimits:
    - { name: burst, match: { paths: ["/rl/*"] }, limit: ${RL_LIMIT}, per: 1h, by: ["header:x-run"], algorithm: fixed-window, consistency: strict }
    - { name: pooled, match: { paths: ["/lease/*"] }, limit: 100000, per: 1h, algorithm: fixed-window, consistency: leased }
  nat:
    - { name: svc, match: { hosts: ["svc.local"] }, to: ${to}, affinity: sourceIp }
`;
    const { documents, errors } = parsePolicies(text, 'metrics');
    assert.deepEqual(errors, []);
    return documents[0]!;
  }

  before(async () => {
    for (const name of ['m1', 'm2']) backends.push(await startHttpUpstream({ name }));
    lab = await SidecarLab.start({ replicas: 2, outbound: true });
    etcd = new Etcd3({ hosts: lab.etcd.endpoint });
    await lab.applyPolicies([policy()]);
    await waitFor(async () => (await get('/admin/x')).status === 403, { timeoutMs: 5000, what: 'the policy to be in force' });
  });

  after(async () => {
    lab?.etcd.thaw();
    etcd?.close();
    for (const m of extra) await m.kill().catch(() => undefined);
    await lab?.stop();
    for (const b of backends) await b.close().catch(() => undefined);
  });

  const get = (path: string, headers: Record<string, string> = {}) => httpRequest({ port: lab.httpPort, path, headers, timeoutMs: 5000 });
  const scrapeAll = (): Promise<MetricSample[][]> => Promise.all(lab.replicas.map((r) => r.metrics()));
  /** The sum of a metric over every replica. */
  const total = async (name: string, match: Record<string, string> = {}) => (await scrapeAll()).reduce((n, s) => n + sumMetric(s, name, match), 0);
  /** Runs `traffic`, returns how much each named metric moved (summed over the replicas). */
  async function delta<T>(names: Array<[string, Record<string, string>?]>, traffic: () => Promise<T>): Promise<{ moved: number[]; result: T }> {
    const before = await Promise.all(names.map(([n, m]) => total(n, m)));
    const result = await traffic();
    const after = await Promise.all(names.map(([n, m]) => total(n, m)));
    return { moved: after.map((a, i) => a - before[i]!), result };
  }
  const statuses = (rs: HttpResult[]) => rs.map((r) => r.status);
  async function sequential(n: number, send: (i: number) => Promise<HttpResult>): Promise<HttpResult[]> {
    const out: HttpResult[] = [];
    for (let i = 0; i < n; i++) out.push(await send(i));
    return out;
  }

  it('/healthz 200, /readyz 200 and /metrics in the Prometheus text format on every replica', async () => {
    for (const r of lab.replicas) {
      const live = await r.admin('/healthz');
      assert.equal(live.status, 200);
      const ready = await r.admin('/readyz');
      assert.equal(ready.status, 200, ready.body);
      const metrics = await r.admin('/metrics');
      assert.equal(metrics.status, 200);
      assert.match(metrics.contentType, /^text\/plain; version=0\.0\.4/);
      const samples = await r.metrics();
      for (const name of ['nodejs_eventloop_lag_seconds', 'process_resident_memory_bytes', 'middlebox_policy_generation', 'middlebox_etcd_breaker_state']) {
        assert.ok(samples.some((s) => s.name === name), `${name} on ${r.adminAddress}`);
      }
      assert.equal(sumMetric(samples, 'middlebox_policy_last_reload_success'), 1);
      assert.equal(sumMetric(samples, 'middlebox_etcd_breaker_state'), 0);
    }
  });

  it('N allowed requests: decisions{verdict=allow} and the ext_authz latency count go up by N', async () => {
    const N = 20;
    const { moved, result } = await delta(
      [
        ['middlebox_decisions_total', { verdict: 'allow', reason: 'allowed', middlebox: 'none' }],
        ['middlebox_decisions_total', { verdict: 'deny' }],
        ['middlebox_decision_duration_seconds_count', { api: 'ext_authz' }],
      ],
      () => sequential(N, (i) => get(`/products/${i}`)),
    );
    assert.deepEqual(statuses(result), Array(N).fill(200));
    assert.deepEqual(moved, [N, 0, N]);
  });

  it('denied paths: the firewall deny counter', async () => {
    const { moved, result } = await delta(
      [
        ['middlebox_decisions_total', { verdict: 'deny', middlebox: 'firewall', reason: 'firewall_rule_deny' }],
        ['middlebox_decisions_total', { verdict: 'allow' }],
      ],
      () => sequential(4, () => get('/admin/users')),
    );
    assert.deepEqual(statuses(result), [403, 403, 403, 403]);
    assert.deepEqual(moved, [4, 0]);
  });

  it('a rate-limited burst: rate_limited denials, and the etcd compare-and-swaps behind the strict limit', async () => {
    const n = RL_LIMIT + 3;
    const { moved, result } = await delta(
      [
        ['middlebox_decisions_total', { verdict: 'deny', middlebox: 'ratelimit', reason: 'rate_limited' }],
        ['middlebox_decisions_total', { verdict: 'allow' }],
        ['middlebox_etcd_operation_duration_seconds_count', { operation: 'cas' }],
        ['middlebox_ratelimit_etcd_writes_total'],
      ],
      () => sequential(n, () => get('/rl/search', { 'x-run': 'burst-1' })),
    );
    assert.deepEqual(statuses(result), [...Array(RL_LIMIT).fill(200), ...Array(n - RL_LIMIT).fill(429)]);
    assert.equal(moved[0], n - RL_LIMIT);
    assert.equal(moved[1], RL_LIMIT);
    assert.ok(moved[2]! >= 1, `cas operations timed: ${moved[2]}`);
    assert.ok(moved[3]! >= 1 && moved[3]! <= RL_LIMIT, `committed writes: ${moved[3]}`);
  });

  it('leased limits: the tokens a replica holds from etcd show as leased tokens', async () => {
    // The block a replica takes follows its observed rate, so a steady trickle makes it grow.
    const waitsBefore = await total('middlebox_ratelimit_leased_waits_total');
    let sent = 0;
    await waitFor(
      async () => {
        for (let i = 0; i < 5; i++, sent++) assert.equal((await get('/lease/x')).status, 200);
        return (await total('middlebox_ratelimit_leased_tokens')) > 0;
      },
      { timeoutMs: 15_000, intervalMs: 0, what: 'a replica to hold leased tokens' },
    );
    const held = await total('middlebox_ratelimit_leased_tokens');
    assert.ok(held > 0 && held <= 100000, `held ${held} after ${sent} requests`);
    // The first request of the bucket on a replica found no block and waited for etcd's answer.
    const waited = (await total('middlebox_ratelimit_leased_waits_total')) - waitsBefore;
    assert.ok(waited >= 1 && waited <= sent, `${waited} of ${sent} requests waited for an etcd take`);
  });

  it('NAT traffic through ext_proc: the NAT table size and the ext_proc latency count', async () => {
    const { moved, result } = await delta(
      [
        ['middlebox_decision_duration_seconds_count', { api: 'ext_proc' }],
        ['middlebox_decisions_total', { verdict: 'allow' }],
      ],
      () => sequential(3, () => httpRequest({ port: lab.outboundPort!, headers: { host: 'svc.local' }, localAddress: '127.0.0.41' })),
    );
    assert.deepEqual(statuses(result), [200, 200, 200]);
    assert.deepEqual(moved, [3, 3]);
    // The mapping is in etcd; every replica's watch-fed copy of the table has it.
    await waitFor(async () => (await scrapeAll()).every((s) => sumMetric(s, 'middlebox_nat_flows') >= 1), {
      timeoutMs: 5000,
      what: 'every replica to count the NAT flow',
    });
    assert.ok((await total('middlebox_etcd_operation_duration_seconds_count', { operation: 'nat_assign' })) >= 1);
  });

  it('policy changes: generation goes up; a stored policy that does not validate sets last reload success to 0', async () => {
    const generations = async () => (await scrapeAll()).map((s) => sumMetric(s, 'middlebox_policy_generation'));
    const successAt = async () => (await scrapeAll()).map((s) => sumMetric(s, 'middlebox_policy_last_reload_success_timestamp_seconds'));
    const before = await generations();
    const okBefore = await successAt();
    await lab.applyPolicies([policy('      - { name: no-debug, action: deny, paths: ["/debug/*"] }')]);
    await waitFor(async () => (await generations()).every((g, i) => g > before[i]!), { timeoutMs: 5000, what: 'every replica to count a new generation' });
    assert.equal((await get('/debug/x')).status, 403);
    const okAfter = await successAt();
    okAfter.forEach((t, i) => assert.ok(t >= okBefore[i]!, `replica ${i}: success timestamp ${t} < ${okBefore[i]}`));

    // Written around the validation of `policy apply`, as etcdctl could.
    await etcd.put(policyKey(lab.prefix, 'broken')).value('{"apiVersion": "middlebox.io/v1alpha1", "kind": "Policy", "metadata": {"name": "broken"}, "spec": {"firewall": {"default": "maybe"}}}');
    try {
      await waitFor(async () => (await scrapeAll()).every((s) => sumMetric(s, 'middlebox_policy_last_reload_success') === 0), {
        timeoutMs: 5000,
        what: 'every replica to report the refused policy',
      });
      for (const s of await scrapeAll()) assert.equal(sumMetric(s, 'middlebox_policy_rejected'), 1);
      // A refused policy is not a reason to take the replica out of rotation.
      for (const r of lab.replicas) assert.equal((await r.admin('/readyz')).status, 200);
    } finally {
      await etcd.delete().key(policyKey(lab.prefix, 'broken'));
    }
    await waitFor(async () => (await scrapeAll()).every((s) => sumMetric(s, 'middlebox_policy_last_reload_success') === 1), {
      timeoutMs: 5000,
      what: 'every replica to report success again once the bad policy is gone',
    });
  });

  it('etcd frozen: breaker state open, transitions and fallbacks counted, etcd errors; closed again after the thaw', async () => {
    const names: Array<[string, Record<string, string>?]> = [
      ['middlebox_etcd_breaker_transitions_total', { to: 'open' }],
      ['middlebox_etcd_fallbacks_total'],
      ['middlebox_etcd_operation_errors_total'],
      ['middlebox_etcd_breaker_transitions_total', { to: 'closed' }],
    ];
    const before = await Promise.all(names.map(([n, m]) => total(n, m)));
    await lab.etcd.freeze();
    let opened: number[];
    try {
      // A strict limit on a fresh key needs etcd on every request.
      let i = 0;
      await waitFor(
        async () => {
          const answers = await Promise.all([0, 1, 2, 3].map(() => get('/rl/frozen', { 'x-run': `frozen-${i++}` })));
          assert.deepEqual(answers.map((r) => r.status).filter((s) => s !== 200), [], 'no request fails while etcd is frozen');
          // The admin port does not wait on etcd.
          const states = (await scrapeAll()).map((s) => sumMetric(s, 'middlebox_etcd_breaker_state'));
          return states.some((s) => s === 2);
        },
        { timeoutMs: 10_000, intervalMs: 100, what: 'a breaker to report open (2)' },
      );
      opened = await Promise.all(names.map(([n, m]) => total(n, m)));
    } finally {
      lab.etcd.thaw();
    }
    assert.ok(opened[0]! > before[0]!, `transitions to open: ${before[0]} → ${opened[0]}`);
    assert.ok(opened[1]! > before[1]!, `fallbacks: ${before[1]} → ${opened[1]}`);
    assert.ok(opened[2]! > before[2]!, `etcd operation errors: ${before[2]} → ${opened[2]}`);

    await waitFor(
      async () => {
        await get('/rl/thawed', { 'x-run': 'thawed' });
        return (await scrapeAll()).every((s) => sumMetric(s, 'middlebox_etcd_breaker_state') === 0);
      },
      { timeoutMs: 15_000, intervalMs: 200, what: 'every breaker to report closed (0) after the thaw' },
    );
    assert.ok((await total(...names[3]!)) > before[3]!, 'transitions to closed counted');
  });

  it('/readyz turns 503 (draining) on SIGTERM while /healthz stays 200; the admin port closes at exit', async () => {
    const m = await MiddleboxProcess.start({ etcd: lab.etcd.endpoint, prefix: lab.prefix, shutdownDelayMs: 3000 });
    extra.push(m);
    assert.equal((await m.admin('/readyz')).status, 200);
    m.signal('SIGTERM');
    await waitFor(async () => (await m.admin('/readyz')).status === 503, { timeoutMs: 2000, intervalMs: 20, what: '/readyz 503 after SIGTERM' });
    assert.match((await m.admin('/readyz')).body, /draining/);
    assert.equal((await m.admin('/healthz')).status, 200);
    const exit = await Promise.race([m.exited, new Promise((r) => setTimeout(() => r('timeout'), 10_000))]);
    assert.deepEqual(exit, { code: 0, signal: null });
    await assert.rejects(m.admin('/healthz', 500), 'the admin port is closed once the process has exited');
  });

  it('/readyz is 503 (policy not loaded) and /healthz 200 for a replica that cannot reach etcd', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const m = await MiddleboxProcess.start({ etcd: dead, waitFor: false });
    extra.push(m);
    await waitFor(async () => (await m.admin('/healthz')).status === 200, { timeoutMs: 10_000, what: '/healthz on a replica without etcd' });
    await waitFor(async () => /policy_not_loaded/.test((await m.admin('/readyz')).body), { timeoutMs: 10_000, what: '/readyz to say policy_not_loaded' });
    assert.equal((await m.admin('/readyz')).status, 503);
    assert.equal(sumMetric(await m.metrics(), 'middlebox_policy_last_reload_success'), 0);
  });

  it('--admin-listen off runs without the admin port; a bad address is a usage error (flag and env)', async () => {
    const m = await MiddleboxProcess.start({ etcd: lab.etcd.endpoint, prefix: lab.prefix, adminListen: 'off' });
    extra.push(m);
    assert.equal(m.adminAddress, undefined);
    assert.equal(await m.health.check(''), 'SERVING');
    await waitFor(() => /"admin":"off"/.test(m.output()), { timeoutMs: 5000, what: 'the serving log line to say admin off' });

    const flag = await middlebox(['serve', '--etcd', lab.etcd.endpoint, '--admin-listen', 'nowhere'], { timeoutMs: 10_000 });
    assert.equal(flag.code, 2);
    assert.match(flag.stderr, /--admin-listen must be host:port/);
    const env = await middlebox(['serve', '--etcd', lab.etcd.endpoint], { env: { MIDDLEBOX_ADMIN_LISTEN: '9002' }, timeoutMs: 10_000 });
    assert.equal(env.code, 2);
    assert.match(env.stderr, /"9002"/);
    const help = await middlebox(['serve', '--help']);
    assert.match(help.stdout, /--admin-listen ADDR/);

    // An admin port already in use stops the replica with one clear line.
    const busy = lab.replicas[0]!.adminAddress!;
    const clash = await middlebox(['serve', '--etcd', lab.etcd.endpoint, '--listen', `127.0.0.1:${await freePort()}`, '--admin-listen', busy], { timeoutMs: 10_000 });
    assert.equal(clash.code, 1);
    assert.match(clash.stderr, /cannot listen on admin address/);
    assert.equal((await adminGet(busy, '/healthz')).status, 200, 'the replica that holds the port is unharmed');
  });
});
