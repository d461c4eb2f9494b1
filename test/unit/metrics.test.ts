// The metrics module and the admin HTTP server, without etcd or Envoy: fake sources in, the
// exposition text out (parsed, never compared as a blob).
import assert from 'node:assert/strict';
import http from 'node:http';
import { adminGet, parseMetrics, sumMetric, type MetricSample } from '../../src/lab/middlebox';
import type { Verdict } from '../../src/middlebox/types';
import { parseAdminListen, startAdminServer, type AdminServer, type Readiness } from '../../src/observability/admin';
import { silentLogger } from '../../src/observability/logger';
import { DECISION_REASONS, MiddleboxMetrics, type BreakerStateName } from '../../src/observability/metrics';
import { MeteredBreaker } from '../../src/observability/metered-breaker';
import { DEFAULT_BREAKER } from '../../src/state/resilient/breaker';

const allow: Verdict = { allow: true, reason: 'allowed' };
const firewallDeny: Verdict = { allow: false, status: 403, middlebox: 'firewall', policy: 'p', rule: 'r', reason: 'firewall_rule_deny' };
const limited: Verdict = { allow: false, status: 429, middlebox: 'ratelimit', policy: 'p', rule: 'r', reason: 'rate_limited' };

async function scrape(m: MiddleboxMetrics): Promise<MetricSample[]> {
  return parseMetrics(await m.render());
}

class FakeBreaker {
  state: BreakerStateName = 'closed';
  readonly stats = { fallbacks: 0 };
  private readonly listeners: Array<(s: BreakerStateName) => void> = [];
  onTransition(l: (s: BreakerStateName) => void): void {
    this.listeners.push(l);
  }
  go(s: BreakerStateName): void {
    this.state = s;
    for (const l of this.listeners) l(s);
  }
}

class FakePolicies {
  current = { loaded: false, generation: 0, policies: 0, rejected: [] as unknown[], source: 'none' as 'etcd' | 'disk' | 'none' };
  private readonly listeners: Array<() => void> = [];
  status() {
    return this.current;
  }
  onChange(l: () => void): void {
    this.listeners.push(l);
  }
  publish(change: Partial<FakePolicies['current']>): void {
    this.current = { ...this.current, ...change, generation: this.current.generation + 1 };
    for (const l of this.listeners) l();
  }
}

describe('metrics', () => {
  it('counts decisions by middlebox, verdict and reason, with every known series present from the start', async () => {
    const m = new MiddleboxMetrics({ processMetrics: false });
    let s = await scrape(m);
    for (const reason of Object.keys(DECISION_REASONS)) {
      assert.equal(s.filter((x) => x.name === 'middlebox_decisions_total' && x.labels.reason === reason).length, 1, reason);
    }
    assert.equal(sumMetric(s, 'middlebox_decisions_total'), 0);

    for (let i = 0; i < 3; i++) m.decided('ext_authz', allow, 0.0002);
    m.decided('ext_authz', firewallDeny, 0.0003);
    m.decided('ext_proc', limited, 0.004);
    m.decided('ext_proc', { allow: true, reason: 'allowed', shadowDenials: [{ middlebox: 'firewall', policy: 'p', rule: 'r', status: 403 }] }, 0.001);
    s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_decisions_total', { verdict: 'allow', reason: 'allowed', middlebox: 'none' }), 4);
    assert.equal(sumMetric(s, 'middlebox_decisions_total', { verdict: 'deny', reason: 'firewall_rule_deny', middlebox: 'firewall' }), 1);
    assert.equal(sumMetric(s, 'middlebox_decisions_total', { verdict: 'deny', reason: 'rate_limited', middlebox: 'ratelimit' }), 1);
    assert.equal(sumMetric(s, 'middlebox_shadow_denials_total', { middlebox: 'firewall' }), 1);
    assert.equal(sumMetric(s, 'middlebox_decision_duration_seconds_count', { api: 'ext_authz' }), 4);
    assert.equal(sumMetric(s, 'middlebox_decision_duration_seconds_count', { api: 'ext_proc' }), 2);
    // 0.0002 and 0.0003 fall under the 0.0005 bucket; the 0.004 s one does not.
    assert.equal(sumMetric(s, 'middlebox_decision_duration_seconds_bucket', { api: 'ext_authz', le: '0.0005' }), 4);
    assert.equal(sumMetric(s, 'middlebox_decision_duration_seconds_bucket', { api: 'ext_proc', le: '0.0025' }), 1);
    assert.equal(sumMetric(s, 'middlebox_decision_duration_seconds_bucket', { api: 'ext_proc', le: '+Inf' }), 2);
  });

  it('keeps label values to fixed sets: an unknown reason is "other", an unknown middlebox "none"', async () => {
    const m = new MiddleboxMetrics({ processMetrics: false });
    m.decided('ext_authz', { allow: false, status: 403, reason: '/admin/../etc/passwd from 10.1.2.3', middlebox: 'evil' as never }, 0.001);
    m.decided('ext_authz', { allow: false, status: 403, reason: 'toString' }, 0.001);
    const s = await scrape(m);
    const reasons = new Set(s.filter((x) => x.name === 'middlebox_decisions_total').map((x) => x.labels.reason));
    assert.ok(![...reasons].some((r) => r?.includes('/') || r === 'toString'), [...reasons].join());
    assert.equal(sumMetric(s, 'middlebox_decisions_total', { reason: 'other', middlebox: 'none', verdict: 'deny' }), 2);
  });

  it('times etcd operations and classifies their failures, passing results and errors through', async () => {
    const m = new MiddleboxMetrics({ processMetrics: false });
    assert.equal(await m.timeEtcd('cas', async () => 'done'), 'done');
    const timeout = Object.assign(new Error('Timed out'), { code: 'ETIMEDOUT' });
    const open = Object.assign(new Error('Breaker is open'), { code: 'EOPENBREAKER' });
    const other = new Error('connection refused');
    await assert.rejects(m.timeEtcd('cas', () => Promise.reject(timeout)), (e) => e === timeout);
    await assert.rejects(m.timeEtcd('nat_assign', () => Promise.reject(open)), (e) => e === open);
    await assert.rejects(m.timeEtcd('lease_grant', () => Promise.reject(other)), (e) => e === other);
    const s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_etcd_operation_duration_seconds_count', { operation: 'cas' }), 2);
    // Turned away by the open breaker: not an etcd round trip, so not timed.
    assert.equal(sumMetric(s, 'middlebox_etcd_operation_duration_seconds_count', { operation: 'nat_assign' }), 0);
    assert.equal(sumMetric(s, 'middlebox_etcd_operation_duration_seconds_count', { operation: 'lease_grant' }), 1);
    assert.equal(sumMetric(s, 'middlebox_etcd_operation_errors_total', { operation: 'cas', kind: 'timeout' }), 1);
    assert.equal(sumMetric(s, 'middlebox_etcd_operation_errors_total', { operation: 'nat_assign', kind: 'short_circuited' }), 1);
    assert.equal(sumMetric(s, 'middlebox_etcd_operation_errors_total', { operation: 'lease_grant', kind: 'error' }), 1);
    assert.equal(sumMetric(s, 'middlebox_etcd_operation_errors_total'), 3);
  });

  it('follows the breaker: state gauge, transitions by to-state, fallbacks', async () => {
    const m = new MiddleboxMetrics({ processMetrics: false });
    const b = new FakeBreaker();
    m.watchBreaker(b);
    let s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_etcd_breaker_state'), 0);
    assert.equal(sumMetric(s, 'middlebox_etcd_breaker_transitions_total', { to: 'open' }), 0);
    b.go('open');
    b.stats.fallbacks = 5;
    s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_etcd_breaker_state'), 2);
    assert.equal(sumMetric(s, 'middlebox_etcd_fallbacks_total'), 5);
    b.go('half-open');
    assert.equal(sumMetric(await scrape(m), 'middlebox_etcd_breaker_state'), 1);
    b.go('closed');
    b.stats.fallbacks = 7;
    s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_etcd_breaker_state'), 0);
    assert.deepEqual(
      ['open', 'half-open', 'closed'].map((to) => sumMetric(s, 'middlebox_etcd_breaker_transitions_total', { to })),
      [1, 1, 1],
    );
    assert.equal(sumMetric(s, 'middlebox_etcd_fallbacks_total'), 7, 'a counter, not re-added on each scrape');
    assert.equal(sumMetric(await scrape(m), 'middlebox_etcd_fallbacks_total'), 7);
  });

  it('reports policy generation and whether the last reload was accepted', async () => {
    const m = new MiddleboxMetrics({ processMetrics: false });
    const p = new FakePolicies();
    m.watchPolicies(p);
    let s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success'), 0, 'nothing loaded yet');
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success_timestamp_seconds'), 0);
    const before = Date.now() / 1000;
    p.publish({ loaded: true, policies: 2, source: 'etcd' });
    s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_policy_generation'), 1);
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success'), 1);
    assert.equal(sumMetric(s, 'middlebox_policies'), 2);
    const okAt = sumMetric(s, 'middlebox_policy_last_reload_success_timestamp_seconds');
    assert.ok(okAt >= before - 1 && okAt <= Date.now() / 1000 + 1, String(okAt));
    p.publish({ rejected: [{ key: 'bad' }] });
    s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_policy_generation'), 2);
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success'), 0);
    assert.equal(sumMetric(s, 'middlebox_policy_rejected'), 1);
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success_timestamp_seconds'), okAt, 'a refused reload is not a success');
  });

  it('does not count --on-no-state fail-open as a successful reload, and says where the policies came from', async () => {
    const m = new MiddleboxMetrics({ processMetrics: false });
    const p = new FakePolicies();
    m.watchPolicies(p);
    // fail-open: the empty policy is in force (loaded), but nothing was loaded.
    p.publish({ loaded: true, policies: 0, source: 'none' });
    let s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success'), 0);
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success_timestamp_seconds'), 0);
    assert.deepEqual(['etcd', 'disk', 'none'].map((source) => sumMetric(s, 'middlebox_policy_source', { source })), [0, 0, 1]);
    p.publish({ loaded: true, policies: 1, source: 'disk' });
    s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_policy_last_reload_success'), 1, 'the state file is a load');
    assert.deepEqual(['etcd', 'disk', 'none'].map((source) => sumMetric(s, 'middlebox_policy_source', { source })), [0, 1, 0]);
  });

  it('reads rate-limit and NAT state through getters at scrape time', async () => {
    const m = new MiddleboxMetrics({ processMetrics: false });
    const shared = { stats: { writes: 3, conflicts: 1, cachedDenials: 0, leasedWaits: 7 }, size: 4, held: 9, heldTokens() { return this.held; } };
    const resilient = { owedBuckets: 0, reconciled: 0 };
    const table = { size: 2, overCap: 6 };
    m.watchRateLimits({ shared, resilient });
    m.watchNat({ table, resilient: { pendingFlows: 1 } });
    let s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_etcd_writes_total'), 3);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_etcd_conflicts_total'), 1);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_buckets'), 4);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_leased_tokens'), 9);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_leased_waits_total'), 7);
    assert.equal(sumMetric(s, 'middlebox_nat_flows'), 2);
    assert.equal(sumMetric(s, 'middlebox_nat_pending_flows'), 1);
    assert.equal(sumMetric(s, 'middlebox_nat_flows_over_cap_total'), 6);
    shared.stats.writes = 10;
    shared.stats.leasedWaits = 8;
    shared.held = 0;
    table.size = 5;
    resilient.reconciled = 6;
    s = await scrape(m);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_etcd_writes_total'), 10);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_leased_tokens'), 0);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_leased_waits_total'), 8);
    assert.equal(sumMetric(s, 'middlebox_nat_flows'), 5);
    assert.equal(sumMetric(s, 'middlebox_ratelimit_reconciled_tokens_total'), 6);
  });

  it('includes the process and Node.js metrics, event-loop lag among them', async () => {
    const m = new MiddleboxMetrics();
    const s = await scrape(m);
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_eventloop_lag_p99_seconds', 'nodejs_heap_size_used_bytes']) {
      assert.ok(s.some((x) => x.name === name), name);
    }
    // Every metric of our own is middlebox_-prefixed, and counters end in _total.
    const text = await m.render();
    for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      if (name!.startsWith('process_') || name!.startsWith('nodejs_')) continue;
      assert.match(name!, /^middlebox_/);
      if (type === 'counter') assert.match(name!, /_total$/);
    }
  });
});

describe('metrics text parser (lab)', () => {
  it('reads names, escaped label values and special values', () => {
    const s = parseMetrics('# HELP x y\n# TYPE x gauge\nx{a="1",b="q\\"uote\\\\ \\n"} 2.5\ny 3 1700000000000\nz{le="+Inf"} +Inf\n');
    assert.deepEqual(s[0], { name: 'x', labels: { a: '1', b: 'q"uote\\ \n' }, value: 2.5 });
    assert.deepEqual(s[1], { name: 'y', labels: {}, value: 3 });
    assert.equal(s[2]!.value, Infinity);
    assert.throws(() => parseMetrics('x{a=1} 2\n'));
  });
});

describe('admin server', () => {
  let admin: AdminServer;
  let readiness: Readiness = { ready: false, reason: 'starting' };
  const m = new MiddleboxMetrics({ processMetrics: false });

  before(async () => {
    admin = await startAdminServer({ listen: '127.0.0.1:0', metrics: m, readiness: () => readiness, logger: silentLogger() });
  });
  after(async () => {
    await admin?.close();
  });

  it('parses listen addresses', () => {
    assert.deepEqual(parseAdminListen('127.0.0.1:9002'), { host: '127.0.0.1', port: 9002 });
    assert.deepEqual(parseAdminListen('[::1]:9002'), { host: '::1', port: 9002 });
    assert.deepEqual(parseAdminListen('localhost:0'), { host: 'localhost', port: 0 });
    for (const bad of ['9002', 'off', 'host:', ':9002', '1.2.3.4:70000', 'unix:/tmp/x', '::1:9002']) assert.equal(parseAdminListen(bad), undefined, bad);
  });

  it('/healthz is 200 while the process runs', async () => {
    const r = await adminGet(admin.address, '/healthz');
    assert.equal(r.status, 200);
  });

  it('/readyz follows readiness, with the reason when not ready', async () => {
    let r = await adminGet(admin.address, '/readyz');
    assert.equal(r.status, 503);
    assert.match(r.body, /starting/);
    readiness = { ready: true };
    r = await adminGet(admin.address, '/readyz?verbose');
    assert.equal(r.status, 200);
    readiness = { ready: false, reason: 'draining' };
    r = await adminGet(admin.address, '/readyz');
    assert.equal(r.status, 503);
    assert.match(r.body, /draining/);
  });

  it('/metrics serves the exposition with its content type', async () => {
    m.decided('ext_authz', allow, 0.001);
    const r = await adminGet(admin.address, '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.contentType, /^text\/plain; version=0\.0\.4/);
    assert.equal(sumMetric(parseMetrics(r.body), 'middlebox_decisions_total', { verdict: 'allow' }), 1);
  });

  it('answers 404 elsewhere, and refuses a non-GET', async () => {
    assert.equal((await adminGet(admin.address, '/')).status, 404);
    assert.equal((await adminGet(admin.address, '/metrics/x')).status, 404);
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: admin.port, path: '/metrics', method: 'POST', agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(status, 405);
  });

  it('refuses an address it cannot bind, with a clear error', async () => {
    await assert.rejects(
      startAdminServer({ listen: admin.address, metrics: m, readiness: () => readiness, logger: silentLogger() }),
      /cannot listen on admin address/,
    );
  });
});

describe('MeteredBreaker', () => {
  it('counts each etcd operation under the name its caller gives, the probe as probe, an unnamed one as other', async () => {
    const seen: string[] = [];
    const metrics = { timeEtcd: <T>(operation: string, run: () => Promise<T>) => (seen.push(operation), run()) };
    const probe = () => Promise.resolve('read');
    const breaker = new MeteredBreaker(silentLogger(), DEFAULT_BREAKER, probe, metrics as never);
    try {
      await breaker.run(() => Promise.resolve(1), 'nat_assign');
      await breaker.runAs('cas', () => Promise.resolve(2));
      await breaker.run(probe);
      await breaker.run(() => Promise.resolve(3));
      assert.deepEqual(seen, ['nat_assign', 'cas', 'probe', 'other']);
    } finally {
      breaker.shutdown();
    }
  });
});
