// The NAT path's cost: saturation throughput and latency of requests that Envoy hands to the
// middlebox over ext_proc for NAT (outbound listener → ORIGINAL_DST), beside the same Envoy routing
// straight to the same backend with no filter. Both run on one machine in alternating rounds, so
// the ratio is what the numbers are about, not the absolute requests per second.
//
//   node dist/bench/nat-cost.js [--quick]        (make bench-nat)
import { loadTest, type LoadTestSummary } from 'loadtest';
import { renderBootstrapYaml } from '../src/envoy/bootstrap';
import { EnvoyProcess } from '../src/lab/envoy';
import { freePort, waitFor } from '../src/lab/ports';
import { SidecarLab } from '../src/lab/sidecar';
import { startHttpUpstream, type Upstream } from '../src/lab/upstream';
import { httpRequest } from '../src/lab/client';
import { parsePolicies } from '../src/policy/parse';
import { log, quickFlag, runMetadata, writeResults } from './common';

interface Round {
  setup: string;
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

const CONCURRENCY = 32;

async function saturate(url: string, host: string, seconds: number): Promise<Omit<Round, 'setup'>> {
  const r: LoadTestSummary = await loadTest({ url, concurrency: CONCURRENCY, maxSeconds: seconds, agentKeepAlive: true, headers: { host }, quiet: true });
  const p = (k: string) => (typeof r.percentiles[k] === 'number' ? (r.percentiles[k] as number) : NaN);
  if (r.totalErrors > 0) log(`  errors by status: ${JSON.stringify(r.errorCodes)}`);
  return { rps: r.effectiveRps, p50: p('50'), p99: p('99'), errors: r.totalErrors };
}

async function main(): Promise<number> {
  const quick = quickFlag(process.argv.slice(2), 'nat-cost');
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
      for (const s of setups) {
        log(`round ${round}/${rounds}: ${s.setup}, ${CONCURRENCY} connections for ${seconds} s`);
        const r = { setup: s.setup, ...(await saturate(s.url, s.host, seconds)) };
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
    const md = [
      '# NAT path cost',
      '',
      `\`${meta.command}\` — ${meta.date} — ${meta.machine} — ${meta.versions}`,
      '',
      `Closed loop, ${CONCURRENCY} keep-alive connections, ${seconds} s per round, ${rounds} alternating round(s); medians. One middlebox replica, one backend.`,
      '',
      '| setup | requests/s | p50 ms | p99 ms | errors |',
      '|---|---|---|---|---|',
      ...summary.map((s) => `| ${s.setup} | ${s.rps} | ${s.p50} | ${s.p99} | ${s.errors} |`),
      '',
      `**NAT through the middlebox ÷ Envoy routing directly: ${ratio.toFixed(2)} of the throughput.**`,
      '',
    ].join('\n');
    process.stdout.write(`\n${md}`);
    writeResults(quick ? 'nat-cost-quick' : 'nat-cost', { ...meta, concurrency: CONCURRENCY, seconds, rounds, rounds_: results, summary, ratio }, md);
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
