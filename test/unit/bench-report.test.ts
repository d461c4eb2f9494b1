// The benchmark report's target checks (bench/report.ts) against small results fixtures: each target
// met, missed, or not measured when its results file or row is absent.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildReport, checkTargets, type LatencyJson, type RatelimitJson } from '../../bench/report';

function latency(opts: { leasedSat: number; localP99: number; leasedP99: number; baseSat?: number; baseP99?: number }): LatencyJson {
  const fixed = (p99: number) => [
    { rate: 500, p50Ms: 0.5, p99Ms: p99 },
    { rate: 1000, p50Ms: 0.5, p99Ms: p99 },
  ];
  const mb = (consistency: string, transport: string, sat: number, p99: number) => ({
    id: `middlebox-${consistency}-authz-${transport}`,
    label: `middlebox ${consistency}, ext_authz, ${transport === 'tcp' ? 'TCP' : 'unix socket'}`,
    kind: 'middlebox',
    consistency,
    filters: 'ext_authz',
    transport,
    fixed: fixed(p99),
    saturation: { rps: sat },
  });
  return {
    params: { targetRate: 1000, rates: [500, 1000] },
    results: [
      { id: 'envoy', label: 'Envoy, no filter', kind: 'envoy', fixed: fixed(opts.baseP99 ?? 1), saturation: { rps: opts.baseSat ?? 10_000 } },
      mb('local', 'tcp', 5000, opts.localP99),
      mb('local', 'unix', 5000, opts.localP99),
      mb('leased', 'tcp', opts.leasedSat, opts.leasedP99),
      mb('leased', 'unix', opts.leasedSat, opts.leasedP99),
      // Not a target row: ext_authz + ext_proc.
      { ...mb('leased', 'tcp', 1, 999), id: 'x', filters: 'ext_authz + ext_proc' },
    ],
  };
}

function ratelimit(rows: Array<{ consistency: string; mean: number; max?: number; granted?: number; writes: number }>): RatelimitJson {
  return {
    params: { limit: 300, loadFactor: 1.5, windows: 6 },
    results: [
      ...rows.map((r, i) => ({
        setup: 'middlebox',
        consistency: r.consistency,
        replicas: i + 1,
        offeredRps: 450,
        admittedPerLimit: { mean: r.mean, max: r.max ?? r.mean, min: r.mean },
        etcd: r.consistency === 'local' ? undefined : { grantedPerLimitMax: r.granted ?? Math.min(1, r.max ?? r.mean), steadyWritesPerAdmitted: r.writes },
      })),
      { setup: 'envoy-local-ratelimit', replicas: 2, offeredRps: 450, admittedPerLimit: { mean: 2, max: 2, min: 2 } },
    ],
  };
}

const byTarget = (checks: ReturnType<typeof checkTargets>, prefix: string) => checks.filter((c) => c.target.startsWith(prefix));

describe('bench report: target checks', () => {
  it('meets every target with good numbers', () => {
    const checks = checkTargets({
      latency: latency({ leasedSat: 6000, localP99: 1.8, leasedP99: 2 }),
      ratelimit: ratelimit([
        { consistency: 'strict', mean: 1, writes: 0.7 },
        { consistency: 'leased', mean: 0.97, writes: 0.01 },
        { consistency: 'local', mean: 1.2, writes: 0 },
      ]),
    });
    assert.equal(byTarget(checks, 'saturation').length, 2, 'leased over TCP and over the unix socket');
    assert.equal(byTarget(checks, 'p99 added').length, 4, 'local and leased, TCP and unix');
    assert.equal(byTarget(checks, 'leased:').length, 1, 'one leased row');
    assert.equal(byTarget(checks, 'admitted').length, 2, 'strict and leased, not local nor the Envoy baseline');
    assert.deepEqual(
      checks.filter((c) => c.met !== true).map((c) => `${c.target} / ${c.configuration}: ${c.measured}`),
      [],
    );
    assert.match(byTarget(checks, 'saturation')[0]!.measured, /^0\.600 ×/);
    assert.match(byTarget(checks, 'p99 added')[0]!.measured, /^\+0\.80 ms/);
  });

  it('misses each target on its own threshold', () => {
    const checks = checkTargets({
      latency: latency({ leasedSat: 4999, localP99: 2.01, leasedP99: 1.5 }),
      ratelimit: ratelimit([
        { consistency: 'leased', mean: 0.94, writes: 0.021 },
        { consistency: 'strict', mean: 1, max: 1.1, granted: 1.05, writes: 0.7 },
        { consistency: 'leased', mean: 0.99, max: 1.06, granted: 1, writes: 0.02 },
      ]),
    });
    assert.deepEqual(byTarget(checks, 'saturation').map((c) => c.met), [false, false], '0.4999 < 0.5');
    assert.deepEqual(byTarget(checks, 'p99 added').map((c) => c.met), [false, false, true, true], 'local +1.01 ms misses, leased +0.5 ms meets');
    assert.deepEqual(byTarget(checks, 'leased:').map((c) => c.met), [false, true], '0.021 misses, 0.02 is on the line and meets');
    assert.deepEqual(
      byTarget(checks, 'admitted').map((c) => c.met),
      // mean 0.94 < 0.95; etcd granted 1.05 > 1.000; a client-side window of 1.06 with etcd granting exactly 1.000 meets.
      [false, false, true],
    );
  });

  it('says "not measured" for what has no results', () => {
    const checks = checkTargets({ ratelimit: ratelimit([{ consistency: 'local', mean: 1, writes: 0 }]) });
    assert.ok(checks.length >= 4);
    for (const c of checks) assert.equal(c.met, null, `${c.target}: ${c.measured}`);
    assert.match(byTarget(checks, 'saturation')[0]!.measured, /no latency\.json/);
    const failed = latency({ leasedSat: 9000, localP99: 1, leasedP99: 1 });
    failed.results = failed.results!.map((r) => (r.consistency === 'leased' ? { ...r, error: 'boom', saturation: null, fixed: [] } : r));
    const withFailure = checkTargets({ latency: failed });
    assert.deepEqual(byTarget(withFailure, 'saturation').map((c) => [c.met, c.measured]), [
      [null, 'the run failed'],
      [null, 'the run failed'],
    ]);
  });

  it('renders ✔ and ✘ in REPORT.md and a note for every missing experiment', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-report-'));
    try {
      const results = path.join(dir, 'results');
      fs.mkdirSync(results);
      fs.writeFileSync(path.join(results, 'latency.json'), JSON.stringify({ date: '2026-01-01T00:00:00Z', code: { head: 'abc1234' }, ...latency({ leasedSat: 6000, localP99: 3, leasedP99: 1.5 }) }));
      fs.writeFileSync(path.join(results, 'latency.quick.json'), '{ not even JSON');
      fs.writeFileSync(path.join(results, 'soak.json'), '{}');
      const md = buildReport(results, dir);
      assert.match(md, /\| saturation with the middlebox firewall \+ a leased limit ≥ 0\.5 × Envoy with no filter \| middlebox leased, ext_authz, TCP \| 0\.600 × \(6000 vs 10000 req\/s\) \| ✔ \| latency\.json \|/);
      assert.match(md, /\| middlebox local, ext_authz, TCP \| \+2\.00 ms \(p99 3\.00 vs 1\.00 ms\) \| ✘ \|/);
      assert.match(md, /## Latency and throughput[^\n]*\n\n- run: 2026-01-01T00:00:00Z[^\n]*\n- commit: abc1234/);
      assert.match(md, /\[chart\]\(results\/latency\.svg\)/);
      for (const id of ['ratelimit-accuracy', 'nat-cost', 'fault-timeline', 'scaling']) {
        assert.match(md, new RegExp(`_No results: results/${id}\\.json is missing\\. Run \`make bench-`), id);
      }
      assert.match(md, /## Other results\n\n- \[soak\.json\]\(results\/soak\.json\)/, 'unknown benches are linked, quick runs are not');
      assert.doesNotMatch(md, /latency\.quick/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
