// What Envoy itself spends on an ext_authz call, and whether any of its settings changes that:
// Envoy with no filter beside Envoy asking a server that answers every call without deciding (the
// latency bench's HTTP floor), with the production bootstrap and with variations of it. Saturation
// (h2load, closed loop) and the CPU time of Envoy and of the server per request, every variation
// side by side in one run, rounds in alternating order. No middlebox and no etcd: this measures the
// line that any ext_authz server meets on this machine, which the latency bench's throughput target
// is read against.
//
//   node dist/bench/envoy-authz-cost.js [--quick]        (make bench-envoy-authz; needs h2load: make deps-bench)
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { CLUSTERS, renderBootstrap, type BootstrapOptions } from '../src/envoy/bootstrap';
import { EnvoyProcess } from '../src/lab/envoy';
import { freePort } from '../src/lab/ports';
import { LabChild } from '../src/lab/processes';
import { startHttpUpstream } from '../src/lab/upstream';
import { codeIdentity, describeCode, h2load, h2loadExecutable, hardTimeLimit, log, metadataLines, quickFlag, runMetadata, versionOf, writeResults } from './common';
import { processCpuSeconds } from './timeline';

type Doc = Record<string, unknown>;

interface Servers {
  grpc: string;
  http: string;
  http2: string;
}

interface Variation {
  id: string;
  label: string;
  /** The "no filter" row this one is read against (same Envoy options). */
  baseline?: string;
  /** Envoy command-line options. */
  envoyArgs?: string[];
  config(base: BootstrapOptions, servers: Servers): Doc;
}

const noFilter = (base: BootstrapOptions): Doc => renderBootstrap({ ...base, extAuthz: false }) as Doc;
const floor = (base: BootstrapOptions, servers: Servers): Doc =>
  renderBootstrap({ ...base, middlebox: [servers.grpc], middleboxHttp: [servers.http], inboundFilter: 'ext_authz', authzHeaders: [] }) as Doc;

/** The ext_authz filter's typed_config in a rendered bootstrap. */
function authzConfig(doc: Doc): Doc {
  const found = find(doc, (o) => o.name === 'envoy.filters.http.ext_authz');
  if (!found) throw new Error('rendered bootstrap has no ext_authz filter');
  return found.typed_config as Doc;
}

function httpCluster(doc: Doc): Doc {
  const clusters = (doc.static_resources as { clusters: Doc[] }).clusters;
  const c = clusters.find((x) => x.name === CLUSTERS.middleboxHttp);
  if (!c) throw new Error(`rendered bootstrap has no ${CLUSTERS.middleboxHttp} cluster`);
  return c;
}

function find(o: unknown, pred: (o: Doc) => boolean): Doc | undefined {
  if (!o || typeof o !== 'object') return undefined;
  if (!Array.isArray(o) && pred(o as Doc)) return o as Doc;
  for (const v of Object.values(o)) {
    const r = find(v, pred);
    if (r) return r;
  }
  return undefined;
}

const REJECT_ALL_STATS = { stats_matcher: { reject_all: true } };

const VARIATIONS: Variation[] = [
  { id: 'none', label: 'Envoy, no filter', config: noFilter },
  { id: 'floor', label: 'ext_authz over HTTP, production bootstrap', baseline: 'none', config: floor },
  {
    id: 'floor-bare',
    label: 'the same, bare: no retry policy, no header lists or added header, no outlier detection or retry budget',
    baseline: 'none',
    config: (base, servers) => {
      const doc = floor(base, servers);
      const authz = authzConfig(doc);
      const service = authz.http_service as Doc;
      delete service.retry_policy;
      delete service.authorization_request;
      delete service.authorization_response;
      delete authz.allowed_headers;
      const cluster = httpCluster(doc);
      delete cluster.outlier_detection;
      delete cluster.circuit_breakers;
      return doc;
    },
  },
  {
    id: 'floor-h2',
    label: 'the same over HTTP/2 (cleartext) to a node:http2 server',
    baseline: 'none',
    config: (base, servers) => {
      const doc = floor(base, { ...servers, http: servers.http2 });
      const cluster = httpCluster(doc);
      const options = (cluster.typed_extension_protocol_options as Record<string, Doc>)['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']!;
      options.explicit_http_config = { http2_protocol_options: {} };
      ((cluster.health_checks as Doc[])[0]!.http_health_check as Doc).codec_client_type = 'HTTP2';
      return doc;
    },
  },
  { id: 'none-no-stats', label: 'Envoy, no filter, no stats (stats_matcher reject_all)', config: (base) => ({ ...noFilter(base), stats_config: REJECT_ALL_STATS }) },
  {
    id: 'floor-no-stats',
    label: 'ext_authz over HTTP, production bootstrap, no stats',
    baseline: 'none-no-stats',
    config: (base, servers) => ({ ...floor(base, servers), stats_config: REJECT_ALL_STATS }),
  },
  { id: 'none-c1', label: 'Envoy, no filter, one worker thread (--concurrency 1)', envoyArgs: ['--concurrency', '1'], config: noFilter },
  {
    id: 'floor-c1',
    label: 'ext_authz over HTTP, production bootstrap, one worker thread',
    baseline: 'none-c1',
    envoyArgs: ['--concurrency', '1'],
    config: floor,
  },
];

interface Measurement {
  id: string;
  round: number;
  rps: number;
  envoyUsPerRequest: number | null;
  serverUsPerRequest: number | null;
}

async function measure(v: Variation, round: number, ctx: { h2load: string; appPort: number; servers: Servers; serverPid: number; warmS: number; seconds: number }): Promise<Measurement> {
  const port = await freePort();
  const adminPort = await freePort();
  const base: BootstrapOptions = { adminPort, inboundHttp: { address: '127.0.0.1', port, appAddress: '127.0.0.1', appPort: ctx.appPort } };
  const config = stringify(v.config(base, ctx.servers), { aliasDuplicateObjects: false, lineWidth: 0 });
  const envoy = await EnvoyProcess.start({ config, adminPort, extraArgs: v.envoyArgs });
  try {
    const url = `http://127.0.0.1:${port}/products/42`;
    // Health checks find the server, then a closed-loop warm-up.
    await new Promise((r) => setTimeout(r, 1500));
    await h2load(ctx.h2load, ['--h1', '-c', '32', '-D', `${ctx.warmS * 1000}ms`, url], ctx.warmS);
    const cpu = () => [processCpuSeconds(envoy.pid), processCpuSeconds(ctx.serverPid)];
    const before = cpu();
    const out = await h2load(ctx.h2load, ['--h1', '-c', '32', '-D', `${ctx.seconds * 1000}ms`, url], ctx.seconds);
    const after = cpu();
    const done = /status codes: (\d+) 2xx/.exec(out);
    const ok = done ? Number(done[1]) : 0;
    if (ok === 0) throw new Error(`${v.id}: no 200 answered; h2load said:\n${out.slice(-800)}`);
    const per = (i: number) => (before[i] !== undefined && after[i] !== undefined ? Math.round(((after[i]! - before[i]!) / ok) * 1e6) : null);
    return { id: v.id, round, rps: Math.round(ok / ctx.seconds), envoyUsPerRequest: per(0), serverUsPerRequest: v.id.startsWith('none') ? null : per(1) };
  } finally {
    await envoy.stop().catch(() => undefined);
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const round2 = (x: number) => Math.round(x * 100) / 100;

async function main(): Promise<number> {
  const quick = quickFlag(process.argv.slice(2), 'envoy-authz-cost');
  hardTimeLimit(quick ? 5 * 60_000 : 15 * 60_000);
  const rounds = quick ? 1 : 2;
  const seconds = quick ? 3 : 6;
  const warmS = quick ? 1 : 2;
  const exe = h2loadExecutable();
  if (!exe) return 1;
  const code = codeIdentity();
  const app = await startHttpUpstream({ name: 'app' });
  const servers: Servers = { grpc: `127.0.0.1:${await freePort()}`, http: `127.0.0.1:${await freePort()}`, http2: `127.0.0.1:${await freePort()}` };
  const server = LabChild.spawn({
    name: 'null ext_authz server',
    command: process.execPath,
    args: [path.join(__dirname, 'null-authz.js'), servers.grpc, '--http', servers.http, '--http2', servers.http2],
  });
  const all: Measurement[] = [];
  try {
    await server.waitReady(async () => server.output().includes('listening'), 10_000, 'the null ext_authz server to listen');
    log(`envoy-authz-cost${quick ? ' (quick)' : ''}: ${VARIATIONS.length} variations × ${rounds} round(s), ${seconds} s closed loop each, 32 connections`);
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? VARIATIONS : [...VARIATIONS].reverse();
      for (const v of order) {
        log(`[round ${r + 1}/${rounds}] ${v.label} (load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')})`);
        const m = await measure(v, r + 1, { h2load: exe, appPort: app.port, servers, serverPid: server.pid, warmS, seconds });
        log(`  ${m.rps} req/s; CPU µs per request: Envoy ${m.envoyUsPerRequest ?? '?'}, server ${m.serverUsPerRequest ?? '–'}`);
        all.push(m);
      }
    }
  } finally {
    await server.stop(3000).catch(() => undefined);
    await app.close();
  }

  const rows = VARIATIONS.map((v) => {
    const ms = all.filter((m) => m.id === v.id);
    const rps = mean(ms.map((m) => m.rps));
    // The ratio to the baseline with the same Envoy options, round by round.
    const ratios = v.baseline
      ? ms.map((m) => m.rps / all.find((b) => b.id === v.baseline && b.round === m.round)!.rps)
      : [];
    const cpu = (k: 'envoyUsPerRequest' | 'serverUsPerRequest') => {
      const xs = ms.map((m) => m[k]).filter((x): x is number => x !== null);
      return xs.length ? Math.round(mean(xs)) : null;
    };
    return {
      id: v.id,
      label: v.label,
      baseline: v.baseline ?? null,
      rps: Math.round(rps),
      ratio: ratios.length ? round2(mean(ratios)) : null,
      ratioPerRound: ratios.map(round2),
      envoyUsPerRequest: cpu('envoyUsPerRequest'),
      serverUsPerRequest: cpu('serverUsPerRequest'),
    };
  });
  const meta = await runMetadata(`node dist/bench/envoy-authz-cost.js${quick ? ' --quick' : ''}`);
  const h2loadVersion = await versionOf(exe, ['--version']);
  const md = [
    '# What Envoy spends on an ext_authz call',
    '',
    ...metadataLines(meta),
    `- code: ${describeCode(code)}; h2load ${h2loadVersion}`,
    `- load: h2load, HTTP/1.1 keep-alive, 32 connections, closed loop, ${seconds} s after a ${warmS} s warm-up; ${rounds > 1 ? `${rounds} rounds, every other one in reverse order` : 'one round'}. ` +
      'The ext_authz server answers every call 200 (or OK) without reading it (bench/null-authz.ts), so every figure is Envoy\'s side of the call.',
    '',
    '| variation | req/s | ÷ its no-filter row (per round) | CPU µs per request: Envoy / server |',
    '|---|---|---|---|',
    ...rows.map(
      (r) =>
        `| ${r.label} | ${r.rps} | ${r.ratio === null ? '(baseline)' : `${r.ratio} (${r.ratioPerRound.join(', ')})`} | ${r.envoyUsPerRequest ?? '?'} / ${r.serverUsPerRequest ?? '–'} |`,
    ),
    '',
  ].join('\n');
  writeResults(quick ? 'envoy-authz-cost.quick' : 'envoy-authz-cost', { ...meta, code, h2load: h2loadVersion, rounds, seconds, rows, measurements: all }, md);
  process.stdout.write(`\n${md}`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    log(`failed: ${e.message}`);
    process.exit(1);
  },
);
