// The NAT path's cost: saturation throughput and latency of requests that Envoy hands to the
// middlebox over ext_proc for NAT (outbound listener → ORIGINAL_DST), beside the same Envoy routing
// straight to the same backend with no filter. Both run on one machine in alternating rounds, so
// the ratio is what the numbers are about, not the absolute requests per second. The load comes
// from h2load, a process of its own: a generator in this process would share its event loop with
// the backend and cap the baseline well below what Envoy can do.
//
//   node dist/bench/nat-cost.js [--quick]        (make bench-nat; needs h2load: make deps-bench)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { renderBootstrapYaml } from '../src/envoy/bootstrap';
import { EnvoyProcess } from '../src/lab/envoy';
import { freePort, waitFor } from '../src/lab/ports';
import { SidecarLab } from '../src/lab/sidecar';
import { startHttpUpstream, type Upstream } from '../src/lab/upstream';
import { httpRequest } from '../src/lab/client';
import { parsePolicies } from '../src/policy/parse';
import { h2load, h2loadExecutable, h2loadRps, log, quickFlag, readH2loadLog, runMetadata, versionOf, writeResults } from './common';
import { percentile } from './timeline';

interface Round {
  setup: string;
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

const CONCURRENCY = 32;
const WARM_S = 1;
let runs = 0;

/**
 * h2load, closed loop, HTTP/1.1 keep-alive, after a warm-up it leaves out: requests per second as
 * h2load counts them, latency percentiles (nearest rank, ms) from its per-request log, and every
 * request that got no answer or one other than 200 as an error.
 */
async function saturate(exe: string, url: string, host: string, seconds: number): Promise<Omit<Round, 'setup'>> {
  const logFile = path.join(os.tmpdir(), `nat-cost-${process.pid}-${++runs}.tsv`);
  try {
    const out = await h2load(
      exe,
      ['--h1', '-c', String(CONCURRENCY), '-D', `${seconds * 1000}ms`, '--warm-up-time', `${WARM_S * 1000}ms`, '-H', `:authority: ${host}`, `--log-file=${logFile}`, url],
      WARM_S + seconds,
    );
    const rps = h2loadRps(out);
    const failed = /requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed/.exec(out);
    if (rps === null || !failed) throw new Error(`h2load's output is not what this bench reads:\n${out.slice(-800)}`);
    const rows = readH2loadLog(logFile).map((r) => ({ status: r.status, ms: r.durationUs / 1000 }));
    // Response times of the 200s: a failed stream (status -1) or another answer is an error, not a time.
    const latencies = rows.filter((r) => r.status === 200).map((r) => r.ms).sort((a, b) => a - b);
    const notOk = rows.filter((r) => r.status !== 200).length;
    if (notOk > 0) {
      const by = new Map<number, number>();
      for (const r of rows) if (r.status !== 200) by.set(r.status, (by.get(r.status) ?? 0) + 1);
      log(`  ${notOk} answers were not 200: ${[...by].map(([st, n]) => `${n}× ${st}`).join(', ')}`);
    }
    const round2 = (x: number | null) => (x === null ? NaN : Math.round(x * 100) / 100);
    // h2load counts a request that got no answer, or a 4xx/5xx one, as failed; a 1xx-3xx answer
    // that is not 200 counts here too.
    const otherOk = rows.filter((r) => r.status !== 200 && r.status > 0 && r.status < 400).length;
    return { rps: Math.round(rps), p50: round2(percentile(latencies, 50)), p99: round2(percentile(latencies, 99)), errors: Number(failed[1]) + otherOk };
  } finally {
    fs.rmSync(logFile, { force: true });
  }
}

async function main(): Promise<number> {
  const quick = quickFlag(process.argv.slice(2), 'nat-cost');
  const exe = h2loadExecutable();
  if (!exe) return 1;
  const seconds = quick ? 3 : 8;
  const rounds = quick ? 1 : 3;
  const backend: Upstream = await startHttpUpstream({ name: 'backend' });
  const lab = await SidecarLab.start({ replicas: 1, outbound: true });
  const directPort = await freePort();
  const adminPort = await freePort();
  // The same Envoy build and listener settings, routing straight to the backend with no filter.
  const direct = await EnvoyProcess.start({
    adminPort,
    config: renderBootstrapYaml({
      adminPort,
      extAuthz: false,
      inboundHttp: { address: '127.0.0.1', port: directPort, appAddress: '127.0.0.1', appPort: backend.port },
    }),
  });
  try {
    const { documents } = parsePolicies(
      `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: bench }\nspec:\n  nat:\n    - { name: vip, match: { hosts: ["vip.local"] }, to: ["127.0.0.1:${backend.port}"], affinity: sourceIp }\n`,
      'bench',
    );
    await lab.applyPolicies(documents);
    await waitFor(async () => (await httpRequest({ port: lab.outboundPort!, headers: { host: 'vip.local' } })).status === 200, {
      timeoutMs: 5000,
      what: 'the NAT policy to be in force',
    });
    const setups = [
      { setup: 'Envoy routing directly (no filter)', url: `http://127.0.0.1:${directPort}/`, host: 'backend.local' },
      { setup: 'Envoy + middlebox ext_proc NAT', url: `http://127.0.0.1:${lab.outboundPort}/`, host: 'vip.local' },
    ];
    const results: Round[] = [];
    for (let round = 1; round <= rounds; round++) {
      // Every other round in reverse order, so that drift during the run favours neither setup.
      for (const s of round % 2 === 1 ? setups : [...setups].reverse()) {
        log(`round ${round}/${rounds}: ${s.setup}, ${CONCURRENCY} connections for ${seconds} s after ${WARM_S} s of warm-up`);
        const r = { setup: s.setup, ...(await saturate(exe, s.url, s.host, seconds)) };
        log(`  ${r.rps} req/s, p50 ${r.p50} ms, p99 ${r.p99} ms, errors ${r.errors}`);
        results.push(r);
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const summary = setups.map((s) => {
      const mine = results.filter((r) => r.setup === s.setup);
      return { setup: s.setup, rps: median(mine.map((r) => r.rps)), p50: median(mine.map((r) => r.p50)), p99: median(mine.map((r) => r.p99)), errors: mine.reduce((a, r) => a + r.errors, 0) };
    });
    const ratio = summary[1]!.rps / summary[0]!.rps;
    const meta = await runMetadata(`node dist/bench/nat-cost.js${quick ? ' --quick' : ''}`);
    const h2loadVersion = await versionOf(exe, ['--version']);
    const md = [
      '# NAT path cost',
      '',
      `\`${meta.command}\` — ${meta.date} — ${meta.machine} — ${meta.versions}`,
      '',
      `h2load ${h2loadVersion}, closed loop, ${CONCURRENCY} keep-alive HTTP/1.1 connections, ${seconds} s per round after ${WARM_S} s of warm-up, ${rounds} round(s), every other one in reverse order; medians; latency by nearest rank from h2load's per-request log. One middlebox replica, one backend.`,
      '',
      '| setup | requests/s | p50 ms | p99 ms | errors |',
      '|---|---|---|---|---|',
      ...summary.map((s) => `| ${s.setup} | ${s.rps} | ${s.p50} | ${s.p99} | ${s.errors} |`),
      '',
      `**NAT through the middlebox ÷ Envoy routing directly: ${ratio.toFixed(2)} of the throughput.**`,
      '',
    ].join('\n');
    process.stdout.write(`\n${md}`);
    writeResults(quick ? 'nat-cost-quick' : 'nat-cost', { ...meta, loadGenerator: `h2load ${h2loadVersion}`, concurrency: CONCURRENCY, seconds, warmUpS: WARM_S, rounds, rounds_: results, summary, ratio }, md);
    return summary.some((s) => s.errors > 0) ? 1 : 0;
  } finally {
    await direct.stop();
    await lab.stop();
    await backend.close();
  }
}

const hard = setTimeout(() => {
  log('bench still running after 5 minutes: giving up');
  process.exit(1);
}, 300_000);
hard.unref();

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
