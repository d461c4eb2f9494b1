// Latency and throughput per configuration, side by side in one run: the app alone, Envoy with no
// filter, Envoy's own RBAC + local_ratelimit, and Envoy asking the middlebox (ext_authz, or
// ext_authz + ext_proc) in each consistency mode, over TCP and over a unix socket.
//
//   node dist/bench/latency.js [--quick] [--only ID,...]   (make bench-latency; the load comes from h2load: make deps-bench)
//
// Real processes on loopback: one app (src/lab/upstream.ts) for the whole run, and for each
// configuration a fresh etcd, a fresh Envoy (bootstrap from src/envoy/bootstrap.ts) and, where
// asked, a fresh `middlebox serve` replica. Every configuration is measured the same way:
// a closed-loop warm-up, then fixed request rates (latency percentiles), then saturation (closed
// loop, fixed connections). A full run measures every configuration twice, the second round in
// reverse order, and pools both rounds' responses: a machine that drifts during the run (it does,
// here) then favours no configuration for where it stands in the list. Results: bench/results/latency.{json,md,svg} (latency.quick.* with
// --quick). bench/README.md says how to read them and why h2load.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { renderBootstrap, type BootstrapOptions } from '../src/envoy/bootstrap';
import { httpRequest } from '../src/lab/client';
import { EnvoyProcess } from '../src/lab/envoy';
import { EtcdProcess } from '../src/lab/etcd';
import { MiddleboxProcess, sumMetric } from '../src/lab/middlebox';
import { freePort, waitFor } from '../src/lab/ports';
import { LabChild, makeTempDir, removeTempDir } from '../src/lab/processes';
import { startHttpUpstream, type Upstream, type UpstreamEcho } from '../src/lab/upstream';
import { headersReadBy } from '../src/policy/headers';
import { parsePolicies } from '../src/policy/parse';
import type { Consistency, PolicyDocument } from '../src/policy/types';
import { connectEtcd } from '../src/state/etcd/client';
import { putPolicies } from '../src/state/etcd/policies';
import { lookaheadOffsetMs } from '../src/state/etcd/ratelimit';
import { renderSvg, type VegaLiteSpec } from './chart';
import { nearestRankMs, sliceStats, type SliceStats } from './slice';
import { type CodeIdentity, codeIdentity, describeCode, h2loadExecutable, type H2loadRow, hardTimeLimit, log, quickFlag, h2loadRps, readH2loadLog, readWarnings, resultsDir, metadataLines, runMetadata, versionOf, writeResults } from './common';
import { processCpuSeconds } from './timeline';

// ---- parameters -----------------------------------------------------------------------------------

interface Params {
  quick: boolean;
  /** Rounds over the configurations, every other one in reverse order; responses pooled over them. */
  rounds: number;
  /** --only: the configurations measured (by id), beside the baseline; undefined: all. */
  only?: string[];
  /** Fixed request rates (req/s), each measured on its own. */
  rates: number[];
  /** The rate at which the issue's added-p99 target is read. */
  targetRate: number;
  /** Connections of a fixed-rate run; each sends rate ÷ connections req/s, HTTP/1.1 keep-alive. */
  fixedConnections: number;
  /** Requests of a fixed-rate run that start in its first fixedWarmS are left out (new connections). */
  fixedWarmS: number;
  fixedS: number;
  /** Closed loop: each connection sends its next request as soon as the answer is in. */
  saturationConnections: number;
  saturationWarmS: number;
  saturationS: number;
  /** Closed-loop warm-up of every configuration before it is measured (JIT, pools, leased blocks). */
  warmupS: number;
  /** The policy's rate limit and Envoy's local_ratelimit bucket, per second: never reached here. */
  rateLimit: number;
  /** The whole bench is killed after this (children included). */
  hardLimitMs: number;
}

const USAGE = 'usage: node dist/bench/latency.js [--quick] [--rounds N] [--only ID[,ID...]]';

function params(argv: string[]): Params {
  const rest = [...argv];
  const quick = rest.includes('--quick');
  let rounds = quick ? 1 : 2;
  const r = rest.indexOf('--rounds');
  if (r >= 0) {
    rounds = Number(rest[r + 1]);
    if (!Number.isInteger(rounds) || rounds < 1 || rounds > 4) {
      process.stderr.write(`--rounds: a whole number from 1 to 4, not ${JSON.stringify(rest[r + 1] ?? '')}\n${USAGE}\n`);
      process.exit(2);
    }
    rest.splice(r, 2);
  }
  let only: string[] | undefined;
  const at = rest.indexOf('--only');
  if (at >= 0) {
    only = (rest[at + 1] ?? '').split(',').filter(Boolean);
    const known = new Set(setups(rounds).map((s) => s.id));
    const unknown = only.filter((id) => !known.has(id));
    if (only.length === 0 || unknown.length > 0) {
      process.stderr.write(`--only: ${only.length === 0 ? 'no configuration named' : `unknown configuration ${unknown.join(', ')}`}; one of:\n  ${[...known].join('\n  ')}\n${USAGE}\n`);
      process.exit(2);
    }
    rest.splice(at, 2);
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(
      `${USAGE}\n  --quick    a few seconds per point, one round: checks the bench, not a result\n` +
        `  --rounds   rounds over the configurations, every other one in reverse order (default 2; 1 with --quick)\n` +
        `  --only     measure these configurations only, after the baseline (Envoy, no filter), in this order in the first round; results go to latency.only.*\n`,
    );
    process.exit(0);
  }
  quickFlag(rest, 'latency');
  return {
    quick,
    rounds,
    only,
    rates: [500, 1000],
    targetRate: 1000,
    fixedConnections: 50,
    fixedWarmS: quick ? 0.5 : 1,
    fixedS: quick ? 3 : 6,
    saturationConnections: 32,
    saturationWarmS: 1,
    saturationS: quick ? 3 : 6,
    warmupS: quick ? 1 : 2,
    rateLimit: 100_000,
    hardLimitMs: quick ? 8 * 60_000 : 35 * 60_000,
  };
}

/** What every measured request asks for (allowed by the policy), and what the firewall must refuse. */
const ALLOWED_PATH = '/products/42';
const DENIED_PATH = '/admin/users';

// The targets of the benchmarks issue.
const TARGET_SATURATION_RATIO = 0.5;
const TARGET_ADDED_P99_MS = 1;

// ---- configurations -------------------------------------------------------------------------------

type Filters = 'ext_authz' | 'ext_authz + ext_proc';
type Transport = 'tcp' | 'unix';

interface Setup {
  id: string;
  label: string;
  kind: 'app' | 'envoy' | 'envoy-rbac' | 'null-authz' | 'middlebox';
  consistency?: Consistency;
  filters?: Filters;
  transport?: Transport;
  /** How Envoy's HTTP ext_authz filter asks: gRPC Check (default) or plain HTTP (http_service). */
  authzProtocol?: AuthzProtocol;
  /**
   * Which request headers the ext_authz filter sends: only those the policy reads (`--authz-headers`
   * with what `middlebox policy headers` prints; the default here, as the README recommends), or
   * every header (the bootstrap's default without the flag).
   */
  authzHeaders?: 'policy' | 'all';
  /**
   * Rate-limit buckets the load spreads over: 1 (default), one bucket per source IP; N > 1, the
   * limit is also by path and the load cycles through N paths, so that a leased replica holds N
   * pools and takes N blocks ahead of every window instead of one.
   */
  keys?: number;
}

type AuthzProtocol = 'grpc' | 'http';

const BASELINE_ID = 'envoy';
/** Buckets in the many-bucket rows: at 1,000 req/s, 10 requests a second each. */
const MANY_KEYS = 100;
const NULL_AUTHZ_ID = 'ext-authz-floor';

function setups(rounds = 1): Setup[] {
  const list: Setup[] = [
    { id: 'app', label: 'app direct (no proxy)', kind: 'app' },
    { id: BASELINE_ID, label: 'Envoy, no filter', kind: 'envoy' },
    { id: 'envoy-rbac-ratelimit', label: 'Envoy RBAC + local_ratelimit', kind: 'envoy-rbac' },
    // The floor of any ext_authz server here: Envoy's side of the call and a gRPC stream in Node.
    { id: NULL_AUTHZ_ID, label: 'ext_authz to a server answering OK unread (floor)', kind: 'null-authz' },
    // The same over HTTP/1.1 (http_service): a bare Node HTTP server answering 200.
    { id: 'ext-authz-http-floor', label: 'ext_authz over HTTP to a server answering 200 unread (floor)', kind: 'null-authz', authzProtocol: 'http' },
  ];
  // Every consistency mode with each filter set (gRPC to the replica).
  const middlebox: Array<[Consistency, Filters]> = [
    ['local', 'ext_authz'],
    ['leased', 'ext_authz'],
    ['strict', 'ext_authz'],
    ['local', 'ext_authz + ext_proc'],
    ['leased', 'ext_authz + ext_proc'],
    ['strict', 'ext_authz + ext_proc'],
  ];
  for (const [consistency, filters] of middlebox) {
    for (const transport of ['tcp', 'unix'] as const) {
      list.push({
        id: `middlebox-${consistency}-${filters === 'ext_authz' ? 'authz' : 'authz-proc'}-${transport}`,
        label: `middlebox ${consistency}, ${filters}, ${transport === 'tcp' ? 'TCP' : 'unix socket'}`,
        kind: 'middlebox',
        consistency,
        filters,
        transport,
      });
    }
  }
  // ext_authz over HTTP (serve --http-authz-listen, bootstrap middleboxHttp): the modes the targets name.
  for (const consistency of ['local', 'leased'] as const) {
    for (const transport of ['tcp', 'unix'] as const) {
      list.push({
        id: `middlebox-${consistency}-authz-http-${transport}`,
        label: `middlebox ${consistency}, ext_authz over HTTP, ${transport === 'tcp' ? 'TCP' : 'unix socket'}`,
        kind: 'middlebox',
        consistency,
        filters: 'ext_authz',
        transport,
        authzProtocol: 'http',
      });
    }
  }
  // What sending only the policy's headers saves: middlebox-local-authz-http-tcp with every header sent.
  list.push({
    id: 'middlebox-local-authz-http-allheaders-tcp',
    label: 'middlebox local, ext_authz over HTTP, TCP, every header sent',
    kind: 'middlebox',
    consistency: 'local',
    filters: 'ext_authz',
    transport: 'tcp',
    authzProtocol: 'http',
    authzHeaders: 'all',
  });
  // Many buckets instead of one: a leased replica then takes a block per bucket and window.
  for (const consistency of ['local', 'leased'] as const) {
    list.push({
      id: `middlebox-${consistency}-authz-http-keys-tcp`,
      label: `middlebox ${consistency}, ext_authz over HTTP, TCP, ${MANY_KEYS} buckets`,
      kind: 'middlebox',
      consistency,
      filters: 'ext_authz',
      transport: 'tcp',
      authzProtocol: 'http',
      keys: MANY_KEYS,
    });
  }
  // The baseline once more at the end: how far the machine drifted during the run. (Two rounds
  // measure the baseline first and last anyway.)
  if (rounds === 1) list.push({ id: 'envoy-again', label: 'Envoy, no filter (again, at the end)', kind: 'envoy' });
  return list;
}

/** The bench policy's rate-limit window (`per: 1s` below). */
const POLICY_WINDOW_MS = 1000;
/**
 * The slice of each window, just after the point where a leased replica takes the next window's
 * first block from etcd (look-ahead), whose requests are reported apart: where that etcd call
 * shows in the response times.
 */
const LOOKAHEAD_SLICE = { fromMs: lookaheadOffsetMs(POLICY_WINDOW_MS), toMs: lookaheadOffsetMs(POLICY_WINDOW_MS) + 10 };

/** One firewall rule and one rate limit that the load never reaches: what every request costs. */
function policyDocs(consistency: Consistency, limit: number, keys = 1): PolicyDocument[] {
  const text = [
    'apiVersion: middlebox.io/v1alpha1',
    'kind: Policy',
    'metadata: { name: latency }',
    'spec:',
    '  firewall:',
    '    default: allow',
    '    rules:',
    '      - { name: no-admin, action: deny, paths: ["/admin/*"] }',
    '  rateLimits:',
    `    - { name: per-client, limit: ${limit}, per: 1s, by: [${keys > 1 ? 'sourceIp, path' : 'sourceIp'}], consistency: ${consistency} }`,
    '',
  ].join('\n');
  const parsed = parsePolicies(text, 'latency-policy.yaml');
  if (parsed.errors.length > 0 || parsed.documents.length !== 1) {
    throw new Error(`bench policy does not validate: ${JSON.stringify(parsed.errors)}`);
  }
  return parsed.documents;
}

// ---- Envoy configurations beyond the renderer's options ---------------------------------------------

type Filter = { name: string; typed_config?: Record<string, unknown> };

/** The inbound HTTP listener's filter chain in a rendered bootstrap, to be edited in place. */
function inboundHttpFilters(bootstrap: object): Filter[] {
  const listeners = (bootstrap as { static_resources?: { listeners?: Array<Record<string, unknown>> } }).static_resources?.listeners ?? [];
  const listener = listeners.find((l) => l.name === 'inbound_http') as
    | { filter_chains: Array<{ filters: Array<{ typed_config: { http_filters?: Filter[] } }> }> }
    | undefined;
  const filters = listener?.filter_chains[0]?.filters[0]?.typed_config.http_filters;
  if (!filters) throw new Error('rendered bootstrap has no inbound_http listener with http_filters');
  return filters;
}

/**
 * Envoy's RBAC filter with the policy's firewall rule: deny /admin and everything below it (the
 * middlebox's "/admin/*"), by path without query, for every caller; 403 as the middlebox answers.
 */
function rbacFilter(): Filter {
  return {
    name: 'envoy.filters.http.rbac',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC',
      rules: {
        action: 'DENY',
        policies: {
          'no-admin': {
            permissions: [
              {
                or_rules: {
                  rules: [{ url_path: { path: { exact: '/admin' } } }, { url_path: { path: { prefix: '/admin/' } } }],
                },
              },
            ],
            principals: [{ any: true }],
          },
        },
      },
    },
  };
}

function envoyBootstrap(s: Setup, base: BootstrapOptions, middlebox: string | undefined, middleboxHttp: string | undefined, rateLimit: number): string {
  let doc: object;
  const authz = {
    ...(middleboxHttp ? { middleboxHttp: [middleboxHttp] } : {}),
    ...(s.authzHeaders === 'all' ? {} : { authzHeaders: headersReadBy(policyDocs('local', rateLimit, s.keys)).map((h) => h.name) }),
  };
  if (s.kind === 'null-authz') {
    doc = renderBootstrap({ ...base, middlebox: [middlebox!], inboundFilter: 'ext_authz', ...authz });
  } else if (s.kind === 'middlebox') {
    // Both filters: ext_authz decides, then ext_proc (the same pipeline, which may rewrite the request).
    doc = renderBootstrap({ ...base, middlebox: [middlebox!], inboundFilter: s.filters === 'ext_authz + ext_proc' ? 'ext_authz+ext_proc' : 'ext_authz', ...authz });
  } else if (s.kind === 'envoy-rbac') {
    doc = renderBootstrap({ ...base, extAuthz: false, localRateLimit: { maxTokens: rateLimit, tokensPerFill: rateLimit, fillIntervalMs: 1000 } });
    // The firewall before the rate limit, as in the middlebox: a denied request takes no token.
    inboundHttpFilters(doc).unshift(rbacFilter());
  } else {
    doc = renderBootstrap({ ...base, extAuthz: false });
  }
  return stringify(doc, { aliasDuplicateObjects: false, lineWidth: 0 });
}

// ---- running a configuration ------------------------------------------------------------------------

interface Context {
  p: Params;
  app: Upstream;
  tmp: string;
  h2load: string;
}

interface Target {
  port: number;
  /** The process answering ext_authz (replica or floor server), for its CPU time. */
  authzPid?: number;
  envoy?: EnvoyProcess;
  replica?: MiddleboxProcess;
  replicaLog?: string;
  stop(): Promise<void>;
}

async function startTarget(s: Setup, ctx: Context, etcd: EtcdProcess): Promise<Target> {
  if (s.kind === 'app') return { port: ctx.app.port, stop: async () => undefined };
  let replica: MiddleboxProcess | undefined;
  let replicaLog: string | undefined;
  let floor: LabChild | undefined;
  let authzAddress: string | undefined;
  let httpAuthzAddress: string | undefined;
  const overHttp = s.authzProtocol === 'http';
  if (s.kind === 'null-authz') {
    authzAddress = `127.0.0.1:${await freePort()}`;
    if (overHttp) httpAuthzAddress = `127.0.0.1:${await freePort()}`;
    const server = LabChild.spawn({
      name: 'null ext_authz server',
      command: process.execPath,
      args: [path.join(__dirname, 'null-authz.js'), authzAddress, ...(httpAuthzAddress ? ['--http', httpAuthzAddress] : [])],
      logFile: path.join(ctx.tmp, `${s.id}.server.log`),
    });
    floor = server;
    await server.waitReady(async () => server.output().includes('listening'), 10_000, 'the null ext_authz server to listen');
  }
  if (s.kind === 'middlebox') {
    // The policy is in etcd before the replica starts, so it is in force once the replica is SERVING.
    const prefix = `/latency/${s.id}`;
    const client = connectEtcd({ endpoints: [etcd.endpoint] });
    try {
      await putPolicies(client, prefix, policyDocs(s.consistency!, ctx.p.rateLimit, s.keys));
    } finally {
      client.close();
    }
    replicaLog = path.join(ctx.tmp, `${s.id}.middlebox.log`);
    const listen = s.transport === 'unix' ? `unix:${path.join(ctx.tmp, `${s.id}.sock`)}` : `127.0.0.1:${await freePort()}`;
    // The product's defaults (etcd operation timeout, log level): what a deployment would run.
    const httpAuthzListen = !overHttp ? undefined : s.transport === 'unix' ? `unix:${path.join(ctx.tmp, `${s.id}.http.sock`)}` : 'auto';
    replica = await MiddleboxProcess.start({ etcd: etcd.endpoint, prefix, listen, logFile: replicaLog, logLevel: 'info', httpAuthzListen });
    authzAddress = replica.address;
    httpAuthzAddress = replica.httpAuthzAddress;
  }
  try {
    const port = await freePort();
    const adminPort = await freePort();
    // The production bootstrap otherwise: ext_authz deadline 250 ms, fail closed.
    const base: BootstrapOptions = { adminPort, inboundHttp: { address: '127.0.0.1', port, appAddress: '127.0.0.1', appPort: ctx.app.port } };
    const config = envoyBootstrap(s, base, authzAddress, httpAuthzAddress, ctx.p.rateLimit);
    fs.writeFileSync(path.join(ctx.tmp, `${s.id}.envoy.yaml`), config);
    const envoy = await EnvoyProcess.start({ config, adminPort, logFile: path.join(ctx.tmp, `${s.id}.envoy.log`) });
    const target: Target = {
      port,
      authzPid: replica?.pid ?? floor?.pid,
      envoy,
      replica,
      replicaLog,
      stop: async () => {
        await envoy.stop().catch(() => undefined);
        await replica?.stop(3000).catch(() => undefined);
        await floor?.stop(3000).catch(() => undefined);
      },
    };
    if (authzAddress) {
      const cluster = httpAuthzAddress ? 'middlebox_http' : 'middlebox';
      await waitFor(async () => (await envoy.clusterHealthy(cluster)) === 1, {
        timeoutMs: 15_000,
        what: `Envoy to see the middlebox replica healthy (cluster ${cluster})`,
      });
    }
    return target;
  } catch (e) {
    await replica?.stop(3000).catch(() => undefined);
    await floor?.stop(3000).catch(() => undefined);
    throw e;
  }
}

/**
 * Before measuring: the allowed path answers 200 from the app, and where a firewall is in the path it
 * refuses /admin/*. A refusal with another status than the firewall's 403 does not stop the bench
 * (the allowed path is what is measured); it is returned, to be reported.
 */
/**
 * What h2load asks for: the allowed path, or with `keys` > 1 that many paths below it, which each
 * connection cycles through in turn (the policy then keeps a bucket per path).
 */
function loadUrls(port: number, keys = 1): string[] {
  const base = `http://127.0.0.1:${port}`;
  return keys > 1 ? Array.from({ length: keys }, (_, i) => `${base}${ALLOWED_PATH}/${i}`) : [`${base}${ALLOWED_PATH}`];
}

async function checkTarget(s: Setup, t: Target): Promise<string[]> {
  await waitFor(
    async () => {
      const res = await httpRequest({ port: t.port, path: ALLOWED_PATH, timeoutMs: 2000 });
      // Thrown, so that the timeout message says what came back.
      if (res.status !== 200) throw new Error(`${res.status} ${res.body.slice(0, 200)}`);
      return true;
    },
    { timeoutMs: 15_000, intervalMs: 100, what: `200 on ${ALLOWED_PATH}` },
  );
  const echo = JSON.parse((await httpRequest({ port: t.port, path: ALLOWED_PATH })).body) as UpstreamEcho;
  if (s.kind === 'middlebox' && !echo.headers['x-middlebox-decision']) {
    throw new Error('the app got no x-middlebox-decision header: the middlebox was not asked');
  }
  if (s.kind === 'middlebox' || s.kind === 'envoy-rbac') {
    const denied = await httpRequest({ port: t.port, path: DENIED_PATH });
    if (denied.status === 200) throw new Error(`${DENIED_PATH} answered 200: the firewall rule is not in force`);
    if (denied.status !== 403) {
      return [`${DENIED_PATH} was refused with ${denied.status}, not the firewall's 403 (body: ${JSON.stringify(denied.body.slice(0, 120))})`];
    }
  }
  return [];
}

// ---- h2load -----------------------------------------------------------------------------------------


interface H2loadOutput {
  stdout: string;
  rows: H2loadRow[];
}

let runNumber = 0;

/** Runs h2load with a per-request log; killed if it is still running well past its expected length. */
/** `onExit` runs as soon as h2load has exited, before its log is read (CPU times taken there leave the parsing out). */
async function runH2load(ctx: Context, args: string[], expectS: number, what: string, onExit?: () => void): Promise<H2loadOutput> {
  const base = path.join(ctx.tmp, `h2load-${++runNumber}`);
  const child = LabChild.spawn({ name: `h2load (${what})`, command: ctx.h2load, args: [...args, `--log-file=${base}.tsv`], logFile: `${base}.out` });
  const started = Date.now();
  const deadlineMs = expectS * 1000 + 20_000;
  const killer = setTimeout(() => {
    log(`  h2load (${what}) still running after ${deadlineMs / 1000} s: killing it`);
    child.signal('SIGKILL');
  }, deadlineMs);
  const ticker = expectS >= 6 ? setInterval(() => log(`    … ${Math.round((Date.now() - started) / 1000)} s of ~${expectS} s`), 5000) : undefined;
  const { code, signal } = await child.exited;
  onExit?.();
  clearTimeout(killer);
  if (ticker) clearInterval(ticker);
  const stdout = fs.existsSync(`${base}.out`) ? fs.readFileSync(`${base}.out`, 'utf8') : '';
  if (code !== 0) {
    throw new Error(`h2load (${what}) exited with code ${code}, signal ${signal}:\n${stdout.split('\n').filter((l) => !l.startsWith('progress')).slice(-15).join('\n')}`);
  }
  const rows = readH2loadLog(`${base}.tsv`);
  fs.rmSync(`${base}.tsv`, { force: true });
  fs.rmSync(`${base}.out`, { force: true });
  return { stdout, rows };
}

// ---- measurements -----------------------------------------------------------------------------------

/** What pooling rounds needs beyond a run's summary; kept out of the results file. */
interface FixedRaw {
  durationsUs: number[];
  /** For each of durationsUs: when the request started, in ms into the rate limit's window. */
  phasesMs: number[];
  /** The requests measured, and etcd's write transactions while they were sent. */
  requests: number;
  etcdWrites: number | null;
  /** Leased requests that waited for an etcd take while they were sent (the replica's counter). */
  leasedWaits: number | null;
}
interface SaturationRaw {
  durationsUs: number[];
  ok: number;
  cpuSeconds: Record<string, number>;
  /** Every response measured, and the leased requests that waited on etcd meanwhile. */
  responses: number;
  leasedWaits: number | null;
}
const fixedRaw = new WeakMap<FixedRateRun, FixedRaw>();
const saturationRaw = new WeakMap<SaturationRun, SaturationRaw>();

interface LatencyStats {
  /** Responses the percentiles are taken over (failed streams counted in statuses only). */
  requests: number;
  p50Ms: number | null;
  p90Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  meanMs: number | null;
  /** Responses by HTTP status; "failed" for streams that got none. */
  statuses: Record<string, number>;
}

interface FixedRateRun extends LatencyStats {
  rate: number;
  connections: number;
  /** Each connection's pace: one request every intervalMs. */
  intervalMs: number;
  /** Requests that started in the measured part, per second of it: did the load keep its rate? */
  sentPerS: number;
  /** Responses slower than intervalMs: the next request on that connection left late (see README). */
  slowerThanInterval: number;
  /** etcd write transactions during the measured seconds (revision at their end − at their start) ÷ the requests measured. */
  etcdWritesPerRequest: number | null;
  /**
   * Leased rows: requests that waited for an etcd take during the measured seconds (the replica's
   * middlebox_ratelimit_leased_waits_total at their end − at their start) ÷ the requests measured;
   * every other request was answered from the replica's pool. Null elsewhere.
   */
  leasedWaitsPerRequest?: number | null;
  /** Responses to requests that started in LOOKAHEAD_SLICE of a window, against the rest. */
  afterLookahead: SliceStats;
}

interface SaturationRun extends LatencyStats {
  connections: number;
  seconds: number;
  /** 200 responses per second of the measured duration (rounded: the ratios use ok200 ÷ seconds). */
  rps: number;
  /** 200 responses in the measured seconds. */
  ok200: number;
  /** h2load's own figure (every response, whatever its status). */
  h2loadRps: number | null;
  /**
   * CPU time per 200 response during the measured seconds, by process (µs): Envoy, the ext_authz
   * server (replica or floor), etcd (middlebox rows) and the bench itself with the app inside it.
   * From /proc; ticks of 10 ms, so about ±1 µs here.
   */
  cpuUsPerRequest: Record<string, number>;
  /**
   * Leased rows: requests that waited for an etcd take during the measured seconds ÷ the responses
   * in them (as for the fixed rates; the jump from the last fixed rate to saturation shows here).
   */
  leasedWaitsPerRequest?: number | null;
}

function latencyStats(rows: H2loadRow[]): LatencyStats {
  const statuses: Record<string, number> = {};
  for (const r of rows) {
    const key = r.status < 0 ? 'failed' : String(r.status);
    statuses[key] = (statuses[key] ?? 0) + 1;
  }
  return durationStats(rows.filter((r) => r.status >= 0).map((r) => r.durationUs), statuses);
}

/** Percentiles of response times (µs) with the statuses they came with. */
function durationStats(durationsUs: number[], statuses: Record<string, number>): LatencyStats {
  const d = [...durationsUs].sort((a, b) => a - b);
  const pct = (q: number) => nearestRankMs(d, q);
  return {
    requests: d.length,
    p50Ms: pct(0.5),
    p90Ms: pct(0.9),
    p99Ms: pct(0.99),
    maxMs: d.length ? d[d.length - 1]! / 1000 : null,
    meanMs: d.length ? Math.round(d.reduce((a, b) => a + b, 0) / d.length) / 1000 : null,
    statuses,
  };
}

/**
 * Connections open 1/rate s apart (h2load -r/--rate-period), so that their pacing timers, each one
 * request every connections/rate s, interleave evenly instead of firing together.
 */
function stagger(rate: number): { perPeriod: number; periodMs: number } {
  return rate <= 1000 ? { perPeriod: 1, periodMs: Math.max(1, Math.round(1000 / rate)) } : { perPeriod: Math.round(rate / 1000), periodMs: 1 };
}

const LEASED_WAITS = 'middlebox_ratelimit_leased_waits_total';

/** A replica's count of leased requests that waited for an etcd take; undefined if it cannot be read. */
async function leasedWaits(replica: MiddleboxProcess): Promise<number | undefined> {
  try {
    const samples = await replica.metrics();
    return samples.some((s) => s.name === LEASED_WAITS) ? sumMetric(samples, LEASED_WAITS) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * `replica`: the middlebox replica, whose count of leased requests that waited on etcd is read at the
 * same two moments as etcd's revision (for every middlebox row, so that the two scrapes weigh on
 * local rows as on leased ones); `leased`: whether to report it.
 */
async function fixedRate(ctx: Context, urls: string[], rate: number, etcd: EtcdProcess | undefined, replica?: MiddleboxProcess, leased = false): Promise<FixedRateRun> {
  const { p } = ctx;
  const c = p.fixedConnections;
  // h2load's connections go through the paths in the same order at the same pace, so connections
  // opened together would ask for the same path at the same moment: one bucket at a time would get
  // all the traffic, in bursts. With several paths the connections are opened spread over one
  // pass through them, so that every bucket gets its share all the time, and the requests sent
  // before the last one opened are left out with the warm-up. One millisecond more than an even
  // spread puts each connection's requests 1 ms after the previous one's, as stagger() does: an
  // even spread would be a whole number of request intervals, and every connection would send at
  // the same instants.
  const leadS = urls.length > 1 ? (urls.length * c) / rate : 0;
  const { perPeriod, periodMs } = urls.length > 1 ? { perPeriod: 1, periodMs: Math.round((leadS * 1000) / c) + 1 } : stagger(rate);
  const total = Math.round(rate * (leadS + p.fixedWarmS + p.fixedS));
  const args = ['--h1', '-c', String(c), '-r', String(perPeriod), '--rate-period', `${periodMs}ms`, '--rps', String(rate / c), '-n', String(total), ...urls];
  // etcd's revision as the measured seconds begin and end (from h2load's start; it sends at once).
  // With a leased replica, its count of requests that waited on etcd at the same two moments.
  const revisions: Array<Promise<number | undefined>> = [];
  const waits: Array<Promise<number | undefined>> = [];
  const marks = [leadS + p.fixedWarmS, leadS + p.fixedWarmS + p.fixedS].map((atS, i) =>
    setTimeout(() => {
      revisions[i] = etcd!.revision().catch(() => undefined);
      if (replica) waits[i] = leasedWaits(replica);
    }, atS * 1000),
  );
  if (!etcd) marks.forEach(clearTimeout);
  const { rows } = await runH2load(ctx, args, leadS + p.fixedWarmS + p.fixedS, `${rate} req/s`);
  marks.forEach(clearTimeout);
  // h2load may be done a moment before the last mark: read it now.
  if (etcd) for (const i of [0, 1]) revisions[i] ??= etcd.revision().catch(() => undefined);
  if (replica) for (const i of [0, 1]) waits[i] ??= leasedWaits(replica);
  const [before, after] = await Promise.all([revisions[0], revisions[1]]);
  const [waitsBefore, waitsAfter] = await Promise.all([waits[0], waits[1]]);
  const waited = waitsBefore !== undefined && waitsAfter !== undefined ? waitsAfter - waitsBefore : null;
  if (rows.length === 0) throw new Error(`h2load logged no request at ${rate} req/s`);
  const t0 = Math.min(...rows.map((r) => r.startUs));
  const edge = t0 + (leadS + p.fixedWarmS) * 1e6;
  // Spread-out connections end one after another: only the fixedS s when all of them send count.
  const end = urls.length > 1 ? edge + p.fixedS * 1e6 : Infinity;
  const measured = rows.filter((r) => r.startUs >= edge && r.startUs < end);
  const lastStart = Math.max(...measured.map((r) => r.startUs));
  const spanS = (lastStart - edge) / 1e6 + 1 / rate;
  const intervalMs = (1000 * c) / rate;
  const answered = measured.filter((r) => r.status >= 0);
  const durationsUs = answered.map((r) => r.durationUs);
  const phasesMs = answered.map((r) => Math.floor(r.startUs / 1000) % POLICY_WINDOW_MS);
  const run: FixedRateRun = {
    rate,
    connections: c,
    intervalMs,
    ...latencyStats(measured),
    sentPerS: Math.round(measured.length / spanS),
    slowerThanInterval: measured.filter((r) => r.durationUs > intervalMs * 1000).length,
    etcdWritesPerRequest: before !== undefined && after !== undefined ? round((after - before) / measured.length, 4) : null,
    ...(leased ? { leasedWaitsPerRequest: waited === null ? null : round(waited / measured.length, 4) } : {}),
    afterLookahead: sliceStats(durationsUs, phasesMs, LOOKAHEAD_SLICE),
  };
  fixedRaw.set(run, {
    durationsUs,
    phasesMs,
    requests: measured.length,
    etcdWrites: before !== undefined && after !== undefined ? after - before : null,
    leasedWaits: waited,
  });
  return run;
}

/** `replica` and `leased` as for fixedRate(): the count of leased waits, read as the CPU times are. */
async function saturate(ctx: Context, urls: string[], pids: Record<string, number>, replica?: MiddleboxProcess, leased = false): Promise<SaturationRun> {
  const { p } = ctx;
  const args = ['--h1', '-c', String(p.saturationConnections), '-D', `${p.saturationS * 1000}ms`, '--warm-up-time', `${p.saturationWarmS * 1000}ms`, ...urls];
  const cpu = () => Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, processCpuSeconds(pid)]));
  // CPU is counted over the measured seconds: from the end of h2load's warm-up to its exit.
  let atWarm: Record<string, number | undefined> = {};
  let waitsAtWarm: Promise<number | undefined> = Promise.resolve(undefined);
  const warmTimer = setTimeout(() => {
    atWarm = cpu();
    if (replica) waitsAtWarm = leasedWaits(replica);
  }, p.saturationWarmS * 1000);
  // h2load logs the measured duration only, not its warm-up.
  let atEnd: Record<string, number | undefined> = {};
  const { stdout, rows } = await runH2load(ctx, args, p.saturationWarmS + p.saturationS, 'saturation', () => (atEnd = cpu()));
  clearTimeout(warmTimer);
  const [waitsBefore, waitsAfter] = await Promise.all([waitsAtWarm, replica ? leasedWaits(replica) : undefined]);
  const waited = waitsBefore !== undefined && waitsAfter !== undefined ? waitsAfter - waitsBefore : null;
  const ok = rows.filter((r) => r.status === 200).length;
  const cpuSeconds: Record<string, number> = {};
  for (const [name, end] of Object.entries(atEnd)) {
    const start = atWarm[name];
    if (end !== undefined && start !== undefined) cpuSeconds[name] = end - start;
  }
  const run: SaturationRun = {
    connections: p.saturationConnections,
    seconds: p.saturationS,
    ...latencyStats(rows),
    rps: Math.round(ok / p.saturationS),
    ok200: ok,
    h2loadRps: h2loadRps(stdout),
    cpuUsPerRequest: cpuPerRequest(cpuSeconds, ok),
    ...(leased ? { leasedWaitsPerRequest: waited === null || rows.length === 0 ? null : round(waited / rows.length, 4) } : {}),
  };
  saturationRaw.set(run, { durationsUs: rows.filter((r) => r.status >= 0).map((r) => r.durationUs), ok, cpuSeconds, responses: rows.length, leasedWaits: waited });
  return run;
}

function cpuPerRequest(cpuSeconds: Record<string, number>, ok: number): Record<string, number> {
  const out: Record<string, number> = {};
  if (ok > 0) for (const [name, sec] of Object.entries(cpuSeconds)) out[name] = Math.round((sec * 1e6) / ok);
  return out;
}

function sumStatuses(list: Array<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const st of list) for (const [k, v] of Object.entries(st)) out[k] = (out[k] ?? 0) + v;
  return out;
}

/**
 * One configuration's rounds as one result: percentiles over every response of every round,
 * saturation as all 200s over all measured seconds, CPU over them, counts summed. A round that
 * failed is left out (pooling half of it would bring back the bias the rounds cancel) and named in
 * the findings; only if every round failed is the result a failure, pooled from what they got.
 */
function poolRounds(all: ConfigResult[]): ConfigResult {
  if (all.length === 1) return all[0]!;
  const good = all.filter((r) => !r.error);
  const runs = good.length > 0 ? good : all;
  const first = runs[0]!;
  const rates = [...new Set(runs.flatMap((r) => r.fixed.map((f) => f.rate)))];
  const fixed = rates.map((rate): FixedRateRun => {
    const same = runs.map((r) => fixedAt(r, rate)).filter((x): x is FixedRateRun => x !== undefined);
    const f = same[0]!;
    const raws = same.map((x) => fixedRaw.get(x)!);
    const writes = raws.every((r) => r.etcdWrites !== null) ? raws.reduce((n, r) => n + r.etcdWrites!, 0) : null;
    const requests = raws.reduce((n, r) => n + r.requests, 0);
    const waited = raws.every((r) => r.leasedWaits !== null) ? raws.reduce((n, r) => n + r.leasedWaits!, 0) : null;
    return {
      ...f,
      ...durationStats(raws.flatMap((r) => r.durationsUs), sumStatuses(same.map((x) => x.statuses))),
      sentPerS: Math.round(same.reduce((n, x) => n + x.sentPerS, 0) / same.length),
      slowerThanInterval: same.reduce((n, x) => n + x.slowerThanInterval, 0),
      etcdWritesPerRequest: writes === null || requests === 0 ? null : round(writes / requests, 4),
      ...('leasedWaitsPerRequest' in f ? { leasedWaitsPerRequest: waited === null || requests === 0 ? null : round(waited / requests, 4) } : {}),
      afterLookahead: sliceStats(raws.flatMap((r) => r.durationsUs), raws.flatMap((r) => r.phasesMs), LOOKAHEAD_SLICE),
    };
  });
  const sats = runs.map((r) => r.saturation).filter((x): x is SaturationRun => x !== null);
  let saturation: SaturationRun | null = null;
  if (sats.length > 0) {
    const raws = sats.map((x) => saturationRaw.get(x)!);
    const ok = raws.reduce((n, r) => n + r.ok, 0);
    const seconds = sats.reduce((n, x) => n + x.seconds, 0);
    const names = Object.keys(raws[0]!.cpuSeconds).filter((n) => raws.every((r) => r.cpuSeconds[n] !== undefined));
    const cpu = Object.fromEntries(names.map((n) => [n, raws.reduce((t, r) => t + r.cpuSeconds[n]!, 0)]));
    const h2 = sats.map((x) => x.h2loadRps).filter((x): x is number => x !== null);
    const responses = raws.reduce((n, r) => n + r.responses, 0);
    const waited = raws.every((r) => r.leasedWaits !== null) ? raws.reduce((n, r) => n + r.leasedWaits!, 0) : null;
    saturation = {
      ...sats[0]!,
      seconds,
      ...durationStats(raws.flatMap((r) => r.durationsUs), sumStatuses(sats.map((x) => x.statuses))),
      rps: Math.round(ok / seconds),
      ok200: ok,
      h2loadRps: h2.length ? round(h2.reduce((a, b) => a + b, 0) / h2.length, 1) : null,
      cpuUsPerRequest: cpuPerRequest(cpu, ok),
      ...('leasedWaitsPerRequest' in sats[0]! ? { leasedWaitsPerRequest: waited === null || responses === 0 ? null : round(waited / responses, 4) } : {}),
    };
  }
  const warnings: Record<string, number> = {};
  for (const r of all) for (const [k, v] of Object.entries(r.replicaWarnings)) warnings[k] = (warnings[k] ?? 0) + v;
  const errors = all.map((r, i) => (r.error ? `round ${i + 1}: ${r.error}` : undefined)).filter((e): e is string => e !== undefined);
  const warmups = all.map((r) => r.warmup).filter((w): w is NonNullable<ConfigResult['warmup']> => w !== null);
  const warmRps = warmups.map((w) => w.rps).filter((x): x is number => x !== null);
  const { error: _firstError, ...base } = first;
  return {
    ...base,
    // The busiest machine any round started on, and every round's warm-up answers.
    loadAverageBefore: first.loadAverageBefore.map((_, i) => Math.max(...all.map((r) => r.loadAverageBefore[i] ?? 0))),
    warmup: warmups.length ? { rps: warmRps.length ? round(warmRps.reduce((a, b) => a + b, 0) / warmRps.length, 1) : null, statuses: sumStatuses(warmups.map((w) => w.statuses)) } : null,
    fixed,
    saturation,
    envoyStats: sumStatuses(all.map((r) => r.envoyStats)),
    checkFindings: [...new Set([...all.flatMap((r) => r.checkFindings), ...(good.length > 0 ? errors.map((e) => `${e.split('\n')[0]} (left out)`) : [])])],
    replicaWarnings: warnings,
    durationMs: all.reduce((n, r) => n + r.durationMs, 0),
    ...(good.length === 0 ? { error: errors.join('\n') } : {}),
  };
}

// ---- one configuration ------------------------------------------------------------------------------

interface ConfigResult {
  id: string;
  label: string;
  kind: Setup['kind'];
  consistency?: Consistency;
  filters?: Filters;
  transport?: Transport;
  authzProtocol?: AuthzProtocol;
  loadAverageBefore: number[];
  warmup: { rps: number | null; statuses: Record<string, number> } | null;
  fixed: FixedRateRun[];
  saturation: SaturationRun | null;
  /** Envoy's counters of its filters after the measurements (ext_authz, ext_proc, rbac, local rate limit). */
  envoyStats: Record<string, number>;
  /** What the checks before measuring found wrong without stopping the bench. */
  checkFindings: string[];
  /** The replica's log lines at warn level or above, counted by message (with the first error given). */
  replicaWarnings: Record<string, number>;
  durationMs: number;
  error?: string;
  /** Runs of two or more rounds: each round's p99 at the target rate and saturation, against that round's baseline. */
  rounds?: Array<{ p99Ms: number | null; saturationRps: number | null } & Comparison>;
}

let etcdNumber = 0;

async function measure(s: Setup, ctx: Context): Promise<ConfigResult> {
  const started = Date.now();
  const result: ConfigResult = {
    id: s.id,
    label: s.label,
    kind: s.kind,
    consistency: s.consistency,
    filters: s.filters,
    transport: s.transport,
    authzProtocol: s.authzProtocol,
    loadAverageBefore: os.loadavg().map((x) => round(x, 2)),
    warmup: null,
    fixed: [],
    saturation: null,
    envoyStats: {},
    checkFindings: [],
    replicaWarnings: {},
    durationMs: 0,
  };
  let target: Target | undefined;
  let etcd: EtcdProcess | undefined;
  try {
    // A fresh etcd (its own data directory) for every configuration, the baselines included: what
    // one configuration wrote (strict writes a transaction per request, tens of thousands in a
    // run) must not weigh on the ones after it.
    etcd = await EtcdProcess.start({ logFile: path.join(ctx.tmp, `etcd-${++etcdNumber}.log`) });
    target = await startTarget(s, ctx, etcd);
    result.checkFindings = await checkTarget(s, target);
    const urls = loadUrls(target.port, s.keys);
    const writesOf = s.kind === 'middlebox' ? etcd : undefined;

    const warm = await runH2load(ctx, ['--h1', '-c', String(ctx.p.saturationConnections), '-D', `${ctx.p.warmupS * 1000}ms`, ...urls], ctx.p.warmupS, 'warm-up');
    result.warmup = { rps: h2loadRps(warm.stdout), statuses: latencyStats(warm.rows).statuses };
    log(`  warm-up ${ctx.p.warmupS} s closed loop: ${result.warmup.rps ?? '?'} req/s, ${statusText(result.warmup.statuses)}`);

    for (const rate of ctx.p.rates) {
      const r = await fixedRate(ctx, urls, rate, writesOf, target.replica, s.consistency === 'leased');
      result.fixed.push(r);
      log(
        `  ${rate} req/s: p50 ${ms(r.p50Ms)} / p90 ${ms(r.p90Ms)} / p99 ${ms(r.p99Ms)} ms, max ${ms(r.maxMs)} ms ` +
          `(${r.requests} measured, ${r.sentPerS} sent/s, ${statusText(r.statuses)}${r.etcdWritesPerRequest !== null ? `, ${r.etcdWritesPerRequest} etcd writes/request` : ''}` +
          `${r.leasedWaitsPerRequest != null ? `, ${r.leasedWaitsPerRequest} of them waited on etcd` : ''})`,
      );
    }

    const pids: Record<string, number> = { bench: process.pid };
    if (target.envoy) pids.envoy = target.envoy.pid;
    if (target.authzPid !== undefined) pids.authz = target.authzPid;
    // etcd counts where a replica uses it: strict rows write to it for most requests.
    if (target.replica) pids.etcd = etcd.pid;
    const sat = await saturate(ctx, urls, pids, target.replica, s.consistency === 'leased');
    result.saturation = sat;
    log(
      `  saturation, ${sat.connections} connections: ${sat.rps} req/s, p50 ${ms(sat.p50Ms)} / p99 ${ms(sat.p99Ms)} ms (${statusText(sat.statuses)}` +
        `${sat.leasedWaitsPerRequest != null ? `, ${sat.leasedWaitsPerRequest} of them waited on etcd` : ''})`,
    );

    if (target.envoy) {
      // The filters' counters, and how Envoy saw the replicas: failed health checks and connections
      // (a replica taken out of rotation fails every call closed meanwhile).
      const stats = await target.envoy.stats('ext_authz|ext_proc|rbac|local_rate_limit|middlebox.*(health_check\\.failure|upstream_cx_connect_fail|membership_change)');
      result.envoyStats = Object.fromEntries([...stats].filter(([, v]) => v !== 0).sort(([a], [b]) => a.localeCompare(b)));
    }
  } catch (e) {
    result.error = (e as Error).stack ?? (e as Error).message;
  } finally {
    await target?.stop();
    await etcd?.stop();
    if (target?.replicaLog) result.replicaWarnings = readWarnings(target.replicaLog);
    result.durationMs = Date.now() - started;
  }
  return result;
}


// ---- comparison and targets -------------------------------------------------------------------------

interface Comparison {
  /** Saturation req/s ÷ the baseline's (Envoy, no filter, measured first in this run). */
  saturationRatio: number | null;
  /** p99 at the target rate minus the baseline's (ms). */
  addedP99Ms: number | null;
}

interface TargetCheck {
  target: string;
  config: string;
  value: number | null;
  met: boolean | null;
}

/** For the JSON: four decimals (the checks use the unrounded values). */
function rounded(c: Comparison | undefined): Comparison {
  const r4 = (x: number | null | undefined) => (x === null || x === undefined ? null : round(x, 4));
  return { saturationRatio: r4(c?.saturationRatio), addedP99Ms: r4(c?.addedP99Ms) };
}

function fixedAt(r: ConfigResult, rate: number): FixedRateRun | undefined {
  return r.fixed.find((f) => f.rate === rate);
}

function compare(p: Params, r: ConfigResult, baseline: ConfigResult | undefined): Comparison {
  const perS = (s: SaturationRun | null | undefined) => (s ? s.ok200 / s.seconds : undefined);
  const sat = perS(r.saturation);
  const baseSat = perS(baseline?.saturation);
  const p99 = fixedAt(r, p.targetRate)?.p99Ms;
  const baseP99 = baseline && fixedAt(baseline, p.targetRate)?.p99Ms;
  // Unrounded: a target is judged on the measured value, not on its display (0.4996 is not 0.5);
  // p99s are whole µs, so their difference is taken in µs, free of floating-point residue.
  return {
    saturationRatio: sat !== undefined && baseSat ? sat / baseSat : null,
    addedP99Ms: p99 !== undefined && p99 !== null && baseP99 !== undefined && baseP99 !== null ? (Math.round(p99 * 1000) - Math.round(baseP99 * 1000)) / 1000 : null,
  };
}

function targets(p: Params, results: ConfigResult[], comparisons: Map<string, Comparison>): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const authzOnly = (consistency: Consistency, transport: Transport, protocol: AuthzProtocol) =>
    results.find((x) => x.kind === 'middlebox' && x.consistency === consistency && x.filters === 'ext_authz' && x.transport === transport && (x.authzProtocol ?? 'grpc') === protocol);
  for (const protocol of ['grpc', 'http'] as const) {
    for (const transport of ['tcp', 'unix'] as const) {
      const r = authzOnly('leased', transport, protocol);
      if (!r) continue;
      const v = comparisons.get(r.id)?.saturationRatio ?? null;
      checks.push({ target: `saturation ≥ ${TARGET_SATURATION_RATIO} × Envoy, no filter`, config: r.label, value: v, met: v === null ? null : v >= TARGET_SATURATION_RATIO });
    }
  }
  for (const protocol of ['grpc', 'http'] as const) {
    for (const consistency of ['local', 'leased'] as const) {
      for (const transport of ['tcp', 'unix'] as const) {
        const r = authzOnly(consistency, transport, protocol);
        if (!r) continue;
        const v = comparisons.get(r.id)?.addedP99Ms ?? null;
        checks.push({ target: `added p99 at ${p.targetRate} req/s ≤ ${TARGET_ADDED_P99_MS} ms`, config: r.label, value: v, met: v === null ? null : v <= TARGET_ADDED_P99_MS });
      }
    }
  }
  return checks;
}

/** What the bench finds unusual in one configuration's numbers. */
function observations(p: Params, r: ConfigResult, baseline: ConfigResult | undefined): string[] {
  const obs: string[] = [];
  if (r.error) obs.push(`FAILED: ${r.error.split('\n')[0]}`);
  obs.push(...r.checkFindings);
  const cpus = os.cpus().length;
  if ((r.loadAverageBefore[0] ?? 0) > cpus) obs.push(`load average ${r.loadAverageBefore[0]} on ${cpus} CPUs before it started: the machine was busy`);
  if (r.warmup && Object.keys(r.warmup.statuses).some((s) => s !== '200')) obs.push(`warm-up answers: ${statusText(r.warmup.statuses)}`);
  for (const f of r.fixed) {
    if (Object.keys(f.statuses).some((s) => s !== '200')) obs.push(`${f.rate} req/s: ${statusText(f.statuses)}`);
    if (f.sentPerS < 0.95 * f.rate) obs.push(`${f.rate} req/s: only ${f.sentPerS} sent per second (the connections were held up)`);
    if (f.slowerThanInterval > 0) {
      obs.push(`${f.rate} req/s: ${f.slowerThanInterval} response(s) slower than a connection's interval (${fmt(f.intervalMs, 0)} ms), so the next request on it left late`);
    }
    const a = f.afterLookahead;
    if (a.tailShare !== null && a.requestShare !== null && a.tailShare >= 0.1 && a.tailShare >= 3 * a.requestShare) {
      obs.push(
        `${f.rate} req/s: ${percent(a.tailShare)} of the slowest 1 % started ${a.fromMs}–${a.toMs} ms into a second (${percent(a.requestShare)} of all requests), ` +
          `the 10 ms after a leased replica's look-ahead etcd call; p99 of the others ${ms(a.p99OutsideMs)} ms`,
      );
    }
  }
  if (r.saturation && Object.keys(r.saturation.statuses).some((s) => s !== '200')) obs.push(`saturation: ${statusText(r.saturation.statuses)}`);
  // A leased replica's blocks follow its observed rate: after the jump from the last fixed rate to
  // a closed loop, requests wait on etcd until they have caught up.
  const satWaits = r.saturation?.leasedWaitsPerRequest;
  if (satWaits != null && satWaits >= 0.001) obs.push(`saturation: ${percent(satWaits)} of the requests waited for an etcd take`);
  const limited = [r.warmup?.statuses, ...r.fixed.map((f) => f.statuses), r.saturation?.statuses].reduce((n, st) => n + (st?.['429'] ?? 0), 0);
  if (limited > 0) obs.push(`${limited} request(s) answered 429 although the load stays far below the limit (${p.rateLimit}/s)`);
  for (const [name, v] of Object.entries(r.envoyStats)) {
    if (/\.(error|streams_failed|failure_mode_allowed|message_timeouts|rate_limited|health_check\.failure|upstream_cx_connect_fail)$/.test(name) && v > 0) obs.push(`Envoy ${name} = ${v}`);
  }
  for (const [msg, n] of Object.entries(r.replicaWarnings)) obs.push(`replica logged "${msg}" ×${n}`);
  const sats = (r.rounds ?? []).map((x) => x.saturationRps).filter((x): x is number => x !== null);
  if (r.id === BASELINE_ID && sats.length > 1 && Math.max(...sats) / Math.min(...sats) > 1.1) {
    obs.push(`saturation ${sats.join(' and ')} req/s in its rounds (near the start and the end of the run): the machine's load changed during the run`);
  }
  if (r.id === 'envoy-again' && baseline?.saturation && r.saturation) {
    const drift = r.saturation.rps / baseline.saturation.rps - 1;
    if (Math.abs(drift) > 0.1) obs.push(`saturation ${fmt(drift * 100, 0)} % from the same setup at the start of the run: the machine's load changed during the run`);
  }
  return obs;
}

// ---- output -----------------------------------------------------------------------------------------

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function fmt(x: number | null | undefined, digits = 2): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(digits);
}

/** A share as a percentage, one decimal. */
function percent(x: number | null): string {
  return x === null ? '–' : `${fmt(x * 100, 1)} %`;
}

/** Milliseconds: two decimals below 10 ms, where the targets are. */
function ms(x: number | null | undefined): string {
  if (x === null || x === undefined) return '–';
  return fmt(x, x < 10 ? 2 : x < 100 ? 1 : 0);
}

function statusText(statuses: Record<string, number>): string {
  const entries = Object.entries(statuses);
  if (entries.length === 1 && entries[0]![0] === '200') return 'all 200';
  return entries.map(([k, v]) => `${v}× ${k}`).join(', ') || 'no response';
}

function markdown(
  p: Params,
  results: ConfigResult[],
  comparisons: Map<string, Comparison>,
  checks: TargetCheck[],
  meta: Record<string, string>,
  code: CodeIdentity,
  svgName: string,
): string {
  const lines: string[] = [];
  const baseline = results.find((r) => r.id === BASELINE_ID);
  lines.push(`# Latency and throughput per configuration${p.quick ? ' (quick: checks the bench, not a result)' : ''}`);
  lines.push('');
  lines.push(...metadataLines(meta));
  lines.push(
    `- code: ${describeCode(code)}`,
  );
  lines.push(
    `- load: h2load, HTTP/1.1 keep-alive, GET ${ALLOWED_PATH} (allowed by the policy). Fixed rates: ${p.fixedConnections} connections opened 1/rate s apart, each paced at rate ÷ ${p.fixedConnections}; ` +
      `${p.fixedWarmS} s left out, then ${p.fixedS} s measured (rows with ${MANY_KEYS} buckets: rate limit by source IP and path, ${MANY_KEYS} paths below it, ` +
      `connections opened spread over one pass through them and left out until the last one opened). Saturation: ${p.saturationConnections} connections, closed loop, ${p.saturationWarmS} s warm-up, ${p.saturationS} s measured. ` +
      `Each configuration fresh, warmed up ${p.warmupS} s closed loop first; ` +
      (p.rounds > 1
        ? `measured in ${p.rounds} rounds, every other one in reverse order (so that drift during the run favours no place in the list); percentiles by nearest rank over every measured response of all rounds, saturation over all their seconds`
        : 'percentiles by nearest rank over every measured response'),
  );
  lines.push(
    `- policy: firewall rule no-admin (deny /admin/*, checked to answer 403 before measuring) + rate limit ${p.rateLimit}/s per source IP, never reached; ` +
      `Envoy RBAC + local_ratelimit: the same rule as an RBAC DENY policy, a token bucket of ${p.rateLimit}/s. One middlebox replica; Envoy's production bootstrap (250 ms deadline, fail closed), ` +
      `its ext_authz filter sending only the headers the policy reads (\`--authz-headers\`, as \`middlebox policy headers\` lists them: none here) unless the row says every header`,
  );
  lines.push(`- chart: [${svgName}](${svgName}); every number: the JSON beside this file`);
  lines.push('');
  const rateCols = p.rates.map((r) => `${r} req/s: p50 / p90 / p99 ms`);
  lines.push(`| configuration | ${rateCols.join(' | ')} | added p99 at ${p.targetRate} req/s (ms) | saturation req/s | ÷ Envoy, no filter | saturation p50 / p99 ms | CPU µs per request at saturation: Envoy / ext_authz server / etcd |`);
  lines.push(`|---|${rateCols.map(() => '---').join('|')}|---|---|---|---|---|`);
  for (const r of results) {
    if (r.error && r.fixed.length === 0) {
      lines.push(`| ${r.label} | ${rateCols.map(() => 'failed').join(' | ')} | – | – | – | – | – |`);
      continue;
    }
    const c = comparisons.get(r.id)!;
    const cells = p.rates.map((rate) => {
      const f = fixedAt(r, rate);
      return f ? `${ms(f.p50Ms)} / ${ms(f.p90Ms)} / ${ms(f.p99Ms)}` : '–';
    });
    const added = r.id === BASELINE_ID ? '(baseline)' : c.addedP99Ms === null ? '–' : `${c.addedP99Ms >= 0 ? '+' : ''}${fmt(c.addedP99Ms)}`;
    const ratio = r.id === BASELINE_ID ? '1 (baseline)' : fmt(c.saturationRatio);
    const sat = r.saturation;
    const cpu = sat?.cpuUsPerRequest;
    const cpuCell = cpu?.envoy === undefined ? '–' : `${cpu.envoy} / ${cpu.authz ?? '–'} / ${cpu.etcd ?? '–'}`;
    lines.push(`| ${r.label} | ${cells.join(' | ')} | ${added} | ${sat ? sat.rps : '–'} | ${ratio} | ${sat ? `${ms(sat.p50Ms)} / ${ms(sat.p99Ms)}` : '–'} | ${cpuCell} |`);
  }
  lines.push('');
  lines.push(`Targets (benchmarks issue), against "${baseline?.label ?? 'Envoy, no filter'}" measured ${p.rounds > 1 ? 'in the same rounds' : 'at the start of this run'}:`);
  lines.push('');
  lines.push('| target | configuration | measured | met |');
  lines.push('|---|---|---|---|');
  for (const t of checks) {
    // Three decimals, rounded towards failing, so that a value just short of its target never
    // prints as the target: a ratio down, an added latency up.
    const value = t.target.startsWith('saturation')
      ? `${t.value === null ? '–' : (Math.floor(t.value * 1000 + 1e-9) / 1000).toFixed(3)} ×`
      : t.value === null ? '–' : `${t.value >= 0 ? '+' : ''}${(Math.ceil(t.value * 1000 - 1e-9) / 1000).toFixed(3)} ms`;
    lines.push(`| ${t.target} | ${t.config} | ${value} | ${t.met === null ? '–' : t.met ? '✔' : '✘'} |`);
  }
  if (p.quick) {
    lines.push('');
    lines.push('A quick run measures a few seconds per point: the verdicts above only show that the bench computes them.');
  }
  if (p.rounds > 1) {
    lines.push('');
    lines.push(`Each round on its own, against that round's baseline (how far apart they are is the noise of this machine):`);
    lines.push('');
    const head = Array.from({ length: p.rounds }, (_, i) => `round ${i + 1}${i % 2 ? ' (reversed)' : ''}: p99 at ${p.targetRate} req/s (added) · saturation (÷ baseline)`);
    lines.push(`| configuration | ${head.join(' | ')} |`);
    lines.push(`|---|${head.map(() => '---').join('|')}|`);
    for (const r of results) {
      const cells = (r.rounds ?? []).map((x) => {
        const added = x.addedP99Ms === null || r.id === BASELINE_ID ? '' : ` (${x.addedP99Ms >= 0 ? '+' : ''}${fmt(x.addedP99Ms)})`;
        const ratio = x.saturationRatio === null || r.id === BASELINE_ID ? '' : ` (${fmt(x.saturationRatio)})`;
        return `${ms(x.p99Ms)} ms${added} · ${x.saturationRps ?? '–'} req/s${ratio}`;
      });
      lines.push(`| ${r.label} | ${cells.join(' | ')} |`);
    }
  }
  lines.push('');
  const { fromMs, toMs } = LOOKAHEAD_SLICE;
  lines.push(
    'Details per fixed-rate run: requests measured, sent per second, slowest response, responses slower than one connection\'s interval, statuses, etcd writes per request, ' +
      'for leased rows the requests that waited for an etcd take (the others were answered from the replica\'s pool), ' +
      `and the requests that started ${fromMs}–${toMs} ms into a second, just after a leased replica takes the next window's block from etcd: their share of all responses and of the slowest 1 %, and the p99 of the others:`,
  );
  lines.push('');
  lines.push(`| configuration | rate | measured | sent/s | max ms | slower than interval | statuses | etcd writes/request | waited on etcd (share) | ${fromMs}–${toMs} ms: of all · of slowest 1 % · p99 of the rest |`);
  lines.push('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    for (const f of r.fixed) {
      const a = f.afterLookahead;
      lines.push(
        `| ${r.label} | ${f.rate} | ${f.requests} | ${f.sentPerS} | ${ms(f.maxMs)} | ${f.slowerThanInterval} (${fmt(f.intervalMs, 0)} ms) | ${statusText(f.statuses)} | ${f.etcdWritesPerRequest ?? '–'} | ${f.leasedWaitsPerRequest ?? '–'} | ` +
          `${percent(a.requestShare)} · ${percent(a.tailShare)} · ${ms(a.p99OutsideMs)} ms |`,
      );
    }
  }
  lines.push('');
  lines.push('Observations (found in the numbers by the bench):');
  lines.push('');
  for (const r of results) {
    const obs = observations(p, r, baseline);
    lines.push(`- ${r.label}: ${obs.length ? obs.join('; ') : 'nothing unexpected'}`);
  }
  lines.push('');
  return lines.join('\n');
}

function chartSpec(p: Params, results: ConfigResult[], comparisons: Map<string, Comparison>): VegaLiteSpec {
  const ok = results.filter((r) => r.fixed.length > 0 || r.saturation);
  const order = ok.map((r) => r.label);
  const height = 20 * order.length;
  const y = { field: 'config', type: 'nominal', sort: order, title: null, axis: { labelLimit: 1000 } };
  const percentiles = ['p50', 'p90', 'p99'];
  const perRate = p.rates.map((rate) => {
    const runs = ok.flatMap((r) => {
      const f = fixedAt(r, rate);
      return f && f.p50Ms !== null && f.p99Ms !== null ? [{ r, f }] : [];
    });
    const points = runs.flatMap(({ r, f }) =>
      [f.p50Ms, f.p90Ms, f.p99Ms].map((v, i) => ({ config: r.label, percentile: percentiles[i], ms: v })),
    );
    const spans = runs.map(({ r, f }) => ({ config: r.label, p50: f.p50Ms, p99: f.p99Ms }));
    const x = { type: 'quantitative', scale: { type: 'log' }, title: 'ms (log scale)' };
    return {
      width: 260,
      height,
      title: `latency at ${rate} req/s`,
      layer: [
        { data: { values: spans }, mark: { type: 'rule', color: '#bbb', strokeWidth: 2 }, encoding: { y, x: { field: 'p50', ...x }, x2: { field: 'p99' } } },
        {
          data: { values: points },
          mark: { type: 'point', filled: true, size: 55 },
          encoding: {
            y,
            x: { field: 'ms', ...x },
            color: { field: 'percentile', type: 'nominal', scale: { domain: percentiles, range: ['#4c78a8', '#f58518', '#e45756'] }, legend: { title: null, orient: 'bottom' } },
          },
        },
      ],
    };
  });
  const baseline = results.find((r) => r.id === BASELINE_ID)?.saturation?.rps;
  const bars = ok.filter((r) => r.saturation).map((r) => ({ config: r.label, rps: r.saturation!.rps, ratio: fmt(comparisons.get(r.id)?.saturationRatio) }));
  const saturation = {
    width: 260,
    height,
    title: `saturation, ${p.saturationConnections} connections`,
    layer: [
      { data: { values: bars }, mark: { type: 'bar', color: '#72b7b2' }, encoding: { y, x: { field: 'rps', type: 'quantitative', title: 'requests/s' } } },
      { data: { values: bars }, mark: { type: 'text', align: 'left', dx: 3, fontSize: 10 }, encoding: { y, x: { field: 'rps', type: 'quantitative' }, text: { field: 'ratio' } } },
      ...(baseline
        ? [
            {
              data: { values: [{ x: TARGET_SATURATION_RATIO * baseline, label: `${TARGET_SATURATION_RATIO} × Envoy, no filter` }] },
              layer: [
                { mark: { type: 'rule', strokeDash: [4, 3], color: '#333' }, encoding: { x: { field: 'x', type: 'quantitative' } } },
                { mark: { type: 'text', align: 'left', dx: 3, dy: -4, fontSize: 10, baseline: 'bottom' }, encoding: { x: { field: 'x', type: 'quantitative' }, y: { value: 0 }, text: { field: 'label' } } },
              ],
            },
          ]
        : []),
    ],
  };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'Latency at fixed rates (p50, p90, p99) and saturation throughput per configuration',
      subtitle: `${p.quick ? 'quick run; ' : ''}h2load over HTTP/1.1 on loopback; labels on the bars: ÷ Envoy, no filter (same run)`,
      anchor: 'start',
      fontSize: 15,
    },
    background: 'white',
    padding: 12,
    hconcat: [
      perRate[0],
      ...perRate.slice(1).map((c) => ({ ...c, layer: c.layer.map((l) => ({ ...l, encoding: { ...l.encoding, y: { ...y, axis: null } } })) })),
      { ...saturation, layer: saturation.layer.map((l) => ('encoding' in l ? { ...l, encoding: { ...l.encoding, y: { ...y, axis: null } } } : l)) },
    ],
    spacing: 16,
    // One legend for the percentiles of both latency panels.
    resolve: { scale: { color: 'shared' } },
    config: { view: { stroke: '#ddd' }, axis: { labelFontSize: 10, titleFontSize: 11 } },
  };
}

// ---- main -------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const p = params(process.argv.slice(2));
  // Whatever happens, the bench ends and leaves nothing running: exit() SIGKILLs every child started
  // through src/lab/processes.ts (etcd, Envoy, replicas, h2load); a signal goes through exit() too.
  hardTimeLimit(p.hardLimitMs);
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(signal, () => {
      log(`${signal}: stopping (children are killed on exit)`);
      process.exit(code);
    });
  }

  const h2load = h2loadExecutable();
  if (!h2load) return 1;
  const h2loadVersion = await versionOf(h2load, ['--version']);
  // --only runs its configurations in the order given (to see whether the order matters), after the baseline.
  const all = setups(p.rounds);
  const list = p.only ? [all.find((s) => s.id === BASELINE_ID)!, ...[...new Set(p.only)].filter((id) => id !== BASELINE_ID).map((id) => all.find((s) => s.id === id)!)] : all;
  log(
    `latency${p.quick ? ' (quick)' : ''}: ${list.length} configurations; fixed rates ${p.rates.join(', ')} req/s (${p.fixedConnections} connections, ` +
      `${p.fixedWarmS} + ${p.fixedS} s), saturation ${p.saturationConnections} connections ${p.saturationS} s; h2load ${h2loadVersion}; ` +
      `whole run limited to ${p.hardLimitMs / 60_000} min`,
  );
  const code = codeIdentity();
  const tmp = makeTempDir('middlebox-latency-');
  const app = await startHttpUpstream({ name: 'app' });
  const perRound: ConfigResult[][] = [];
  try {
    for (let round = 0; round < p.rounds; round++) {
      const order = round % 2 === 0 ? list : [...list].reverse();
      const done: ConfigResult[] = [];
      for (const [i, s] of order.entries()) {
        const where = p.rounds > 1 ? `round ${round + 1}/${p.rounds}, ` : '';
        log(`[${where}${i + 1}/${list.length}] ${s.label} (load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs)`);
        const r = await measure(s, { p, app, tmp, h2load });
        done.push(r);
        if (r.error) log(`  FAILED: ${r.error.split('\n').slice(0, 6).join('\n          ')}`);
      }
      perRound.push(done);
    }
  } finally {
    await app.close();
  }

  const codeAfter = codeIdentity();
  if (codeAfter.distSrcSha256 !== code.distSrcSha256) {
    code.changedDuringRun = true;
    log(`warning: dist/src changed during the run (${code.distSrcSha256} → ${codeAfter.distSrcSha256}): configurations may have run different code`);
  }
  const results = list.map((s) => poolRounds(perRound.map((done) => done.find((r) => r.id === s.id)!)));
  if (p.rounds > 1) {
    // Each round against its own baseline: how far apart the rounds are shows the noise.
    for (const r of results) {
      r.rounds = perRound.map((done) => {
        const own = done.find((x) => x.id === r.id)!;
        const c = compare(p, own, done.find((x) => x.id === BASELINE_ID && !x.error));
        return { p99Ms: fixedAt(own, p.targetRate)?.p99Ms ?? null, saturationRps: own.saturation?.rps ?? null, ...rounded(c) };
      });
    }
  }
  const baseline = results.find((r) => r.id === BASELINE_ID && !r.error);
  const comparisons = new Map(results.map((r) => [r.id, compare(p, r, baseline)]));
  const checks = targets(p, results, comparisons);
  const defaultRounds = p.quick ? 1 : 2;
  const meta = await runMetadata(
    `node dist/bench/latency.js${p.quick ? ' --quick' : ''}${p.rounds !== defaultRounds ? ` --rounds ${p.rounds}` : ''}${p.only ? ` --only ${p.only.join(',')}` : ''}`,
  );
  meta.versions = `${meta.versions}, h2load ${h2loadVersion}`;
  // A partial run never replaces the full results that the report and the README quote.
  const name = `latency${p.only ? '.only' : ''}${p.quick ? '.quick' : ''}`;
  const svgName = `${name}.svg`;
  const md = markdown(p, results, comparisons, checks, meta, code, svgName);
  process.stdout.write(`\n${md}`);
  writeResults(
    name,
    {
      ...meta,
      code,
      params: { ...p, allowedPath: ALLOWED_PATH, deniedPath: DENIED_PATH, loadGenerator: `h2load ${h2loadVersion}` },
      results: results.map((r) => ({ ...r, ...rounded(comparisons.get(r.id)) })),
      targets: checks,
    },
    md,
  );
  let chartFailed = false;
  try {
    fs.writeFileSync(path.join(resultsDir(), svgName), await renderSvg(chartSpec(p, results, comparisons)));
    log(`wrote ${path.relative(process.cwd(), path.join(resultsDir(), svgName))}`);
  } catch (e) {
    chartFailed = true;
    log(`could not render the chart: ${(e as Error).stack ?? (e as Error).message}`);
  }
  removeTempDir(tmp);
  return results.some((r) => r.error) || chartFailed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
