// Soak: a bounded run of steady, mixed traffic through Envoy, watching every process for leaks.
//
//   node dist/bench/soak.js [--quick] [--minutes N]        (make bench-soak; h2load: make deps-bench)
//
// Real processes on loopback (SidecarLab): an etcd, two `middlebox serve` replicas and one Envoy with
// the inbound HTTP listener (ext_authz), the TCP listener (network ext_authz) and the outbound
// listener (ext_proc NAT, ORIGINAL_DST) in front of NAT backends in this process. For N minutes (10;
// 1 with --quick) h2load sends steady keep-alive HTTP/1.1 traffic (allowed, denied, shadow-denied and
// rate-limited paths), and this process sends the odd kinds beside it at fixed rates: requests keyed
// by tens of thousands of distinct header values into a rate limit of each consistency mode, NAT'd
// requests, TCP connections, new connections, requests with headers near the size limit, malformed
// requests. The policy is re-applied every minute. Every 5 s each replica's /metrics, and Envoy's and
// etcd's /proc, are sampled. Verdicts (bench/README.md, "Soak"): resident memory after the warm-up
// grows less than 10 % per replica, and no process leaks file descriptors.
// Results: bench/results/soak.{json,md,svg} (soak.quick.* with --quick).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { tcpProbe } from '../src/lab/client';
import { sumMetric, type MetricSample } from '../src/lab/middlebox';
import { sleep, waitFor } from '../src/lab/ports';
import { LabChild } from '../src/lab/processes';
import { SidecarLab, LAB_ETCD_TIMEOUT_MS } from '../src/lab/sidecar';
import { startHttpUpstream, type Upstream } from '../src/lab/upstream';
import { parsePolicies } from '../src/policy/parse';
import type { PolicyDocument } from '../src/policy/types';
import { renderSvg, type VegaLiteSpec } from './chart';
import { type CodeIdentity, codeIdentity, describeCode, h2loadExecutable, hardTimeLimit, log, readWarnings, resultsDir, metadataLines, runMetadata, writeResults } from './common';

// ---- parameters -----------------------------------------------------------------------------------

interface Params {
  quick: boolean;
  minutes: number;
  durationS: number;
  /** Samples before this are the warm-up: JIT, pools, bounded maps filling up. */
  warmupS: number;
  /** The first this-long after the warm-up and the last this-long of the load are compared. */
  windowS: number;
  sampleS: number;
  /** Idle time after the load, sampled too: connections closed, what is left. */
  idleS: number;
  progressS: number;
  reapplyS: number;
  replicas: number;
  /** Each replica's --max-rate-limit-keys: far below the distinct keys of the run, so the caps are reached. */
  maxRateLimitKeys: number;
  /** h2load: keep-alive HTTP/1.1 connections and their total rate (req/s). */
  h2loadConnections: number;
  h2loadRate: number;
  /** Requests per second of each kind sent from this process. */
  rates: Record<Kind, number>;
  /** Share of rate-limited requests that carry a brand-new key (the rest: one of the hot keys). */
  newKeyShare: number;
  hotKeys: number;
  /** Share of sticky NAT requests from a new flow (the rest: a recent one). */
  newFlowShare: number;
  natIdleTimeoutS: number;
  /** Size of the large headers (just under Envoy's 60 KiB request-header limit) and of the oversized ones. */
  largeHeaderBytes: number;
  oversizedHeaderBytes: number;
  requestTimeoutMs: number;
  /** Requests of this process in flight at most; beyond it a request is counted as skipped. */
  maxInFlight: number;
  /** Verdicts. */
  rssGrowthTarget: number;
  fdSlack: number;
  hardLimitMs: number;
}

type Kind =
  | 'ratelimit-strict'
  | 'ratelimit-leased'
  | 'ratelimit-local'
  | 'nat-sticky'
  | 'nat-round-robin'
  | 'nat-redirect'
  | 'tcp-allowed'
  | 'tcp-blocked'
  | 'http-blocked-source'
  | 'http-debug-header'
  | 'http-post'
  | 'large-headers'
  | 'oversized-headers'
  | 'bad-request-line'
  | 'bad-header-name'
  | 'dot-segments'
  | 'escaped-slash';

/** What each kind sends and what it must get back; anything else is an error. */
const KINDS: Record<Kind, { what: string; expect: string[]; group: Group }> = {
  'ratelimit-strict': { what: 'GET /api/strict/…, x-client: a new key or a hot one; strict limit 5 per 10 s per key (fixed window)', expect: ['200', '429'], group: 'rate-limited keys' },
  'ratelimit-leased': { what: 'GET /api/leased/…, the same keys; leased limit 5 per 10 s per key (sliding window)', expect: ['200', '429'], group: 'rate-limited keys' },
  'ratelimit-local': { what: 'GET /api/local/…, the same keys; local limit 5 per 10 s per key (token bucket)', expect: ['200', '429'], group: 'rate-limited keys' },
  'nat-sticky': { what: 'outbound GET users.internal, x-user: a new flow or a recent one (NAT, header affinity)', expect: ['200'], group: 'NAT (outbound)' },
  'nat-round-robin': { what: 'outbound GET rr.internal (NAT, no affinity)', expect: ['200'], group: 'NAT (outbound)' },
  'nat-redirect': { what: 'outbound GET users.internal/…?redirect: the backend names itself, NAT must translate location back', expect: ['302'], group: 'NAT (outbound)' },
  'tcp-allowed': { what: 'TCP connection from 127.0.0.1, a line echoed', expect: ['echoed'], group: 'TCP connections' },
  'tcp-blocked': { what: 'TCP connection from 127.0.0.66 (blocked-client rule)', expect: ['closed'], group: 'TCP connections' },
  'http-blocked-source': { what: 'GET /products/1 from 127.0.0.66', expect: ['403'], group: 'other' },
  'http-debug-header': { what: 'GET /products/1 with x-debug (no-debug rule)', expect: ['403'], group: 'other' },
  'http-post': { what: 'POST /orders with a 2 KiB body', expect: ['200'], group: 'other' },
  'large-headers': { what: 'GET /products/1 with request headers just under Envoy\'s 60 KiB limit', expect: ['200'], group: 'large or bad input' },
  'oversized-headers': { what: 'GET /products/1 with request headers over Envoy\'s 60 KiB limit', expect: ['431'], group: 'large or bad input' },
  'bad-request-line': { what: 'raw socket: a request line that is not HTTP', expect: ['400'], group: 'large or bad input' },
  'bad-header-name': { what: 'raw socket: a header name with a space in it', expect: ['400'], group: 'large or bad input' },
  'dot-segments': { what: 'raw socket: GET /public/../admin/x (normalised to /admin/x, denied)', expect: ['403'], group: 'large or bad input' },
  'escaped-slash': { what: 'raw socket: GET /%2Fadmin/x (escaped slash: Envoy redirects)', expect: ['307'], group: 'large or bad input' },
};
const KIND_NAMES = Object.keys(KINDS) as Kind[];

type Group = 'h2load (keep-alive)' | 'rate-limited keys' | 'NAT (outbound)' | 'TCP connections' | 'other' | 'large or bad input';
const GROUPS: Group[] = ['h2load (keep-alive)', 'rate-limited keys', 'NAT (outbound)', 'TCP connections', 'other', 'large or bad input'];

/** h2load cycles through these paths on each connection (14 allowed, 2 denied, 2 shadow-denied, 2 globally limited). */
const H2LOAD_PATHS = [
  '/products/1', '/products/2', '/admin/users', '/products/3', '/products/4', '/beta/new', '/products/5', '/search?q=a', '/products/6', '/products/7',
  '/products/8', '/admin/settings', '/products/9', '/products/10', '/beta/old', '/products/11', '/search?q=b', '/products/12', '/products/13', '/products/14',
];
const H2LOAD_EXPECT = ['200', '403', '429'];

const USAGE = 'usage: node dist/bench/soak.js [--quick] [--minutes N]';

function params(argv: string[]): Params {
  let quick = false;
  let minutes: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (a === '--minutes' || a.startsWith('--minutes=')) {
      const v = a === '--minutes' ? argv[++i] : a.slice('--minutes='.length);
      minutes = Number(v);
      if (v === undefined || !Number.isFinite(minutes) || minutes < 0.5 || minutes > 600) {
        process.stderr.write(`--minutes needs a number from 0.5 to 600, got ${JSON.stringify(v)}\n${USAGE}\n`);
        process.exit(2);
      }
    } else {
      process.stderr.write(`unknown argument ${a}\n${USAGE}\n`);
      process.exit(2);
    }
  }
  minutes ??= quick ? 1 : 10;
  const durationS = Math.round(minutes * 60);
  const warmupS = quick ? Math.min(20, Math.round(durationS / 3)) : Math.min(120, Math.round(durationS / 5));
  const windowS = Math.max(5, Math.min(quick ? 15 : 60, Math.floor((durationS - warmupS) / 2)));
  return {
    quick,
    minutes,
    durationS,
    warmupS,
    windowS,
    sampleS: 5,
    idleS: quick ? 5 : 10,
    progressS: quick ? 10 : 30,
    // Every minute; every 15 s in the quick run, so that its minute sees re-applies at all.
    reapplyS: quick ? 15 : 60,
    replicas: 2,
    maxRateLimitKeys: 500,
    h2loadConnections: 10,
    h2loadRate: 220,
    rates: {
      'ratelimit-strict': 100 / 3,
      'ratelimit-leased': 100 / 3,
      'ratelimit-local': 100 / 3,
      'nat-sticky': 24,
      'nat-round-robin': 12,
      'nat-redirect': 4,
      'tcp-allowed': 8,
      'tcp-blocked': 2,
      'http-blocked-source': 1,
      'http-debug-header': 1,
      'http-post': 4,
      'large-headers': 3,
      'oversized-headers': 1,
      'bad-request-line': 1,
      'bad-header-name': 1,
      'dot-segments': 1,
      'escaped-slash': 1,
    },
    // 100 req/s × 0.83 ≈ 83 new keys a second: 50,000 distinct keys in 10 minutes.
    newKeyShare: 0.83,
    hotKeys: 5,
    newFlowShare: 0.5,
    natIdleTimeoutS: quick ? 10 : 30,
    largeHeaderBytes: 57 * 1024,
    oversizedHeaderBytes: 72 * 1024,
    requestTimeoutMs: 5000,
    maxInFlight: 256,
    rssGrowthTarget: 0.1,
    fdSlack: 5,
    hardLimitMs: (minutes + 5) * 60_000,
  };
}

// ---- the policy -----------------------------------------------------------------------------------

function policyDocs(generation: number, backends: Upstream[], natIdleTimeoutS: number): PolicyDocument[] {
  const pool = JSON.stringify(backends.map((b) => `127.0.0.1:${b.port}`));
  const text = [
    'apiVersion: middlebox.io/v1alpha1',
    'kind: Policy',
    'metadata: { name: soak }',
    'spec:',
    '  firewall:',
    '    default: allow',
    '    rules:',
    '      - { name: no-admin, action: deny, paths: ["/admin/*"] }',
    '      - { name: blocked-client, action: deny, from: ["127.0.0.66/32"] }',
    '      - { name: no-debug, action: deny, headers: [{ name: x-debug }] }',
    '      - { name: beta-trial, action: deny, shadow: true, paths: [{ regex: "^/beta(/|$)" }] }',
    // What changes on every re-apply, so that every replica builds a new snapshot.
    `      - { name: reapply-${generation}, action: deny, paths: ["/never/${generation}"] }`,
    '  rateLimits:',
    '    - { name: search-global, match: { paths: ["/search"] }, limit: 15, per: 1s, algorithm: fixed-window, consistency: leased }',
    '    - { name: strict-per-client, match: { paths: ["/api/strict/*"] }, limit: 5, per: 10s, by: ["header:x-client"], algorithm: fixed-window, consistency: strict, headers: true }',
    '    - { name: leased-per-client, match: { paths: ["/api/leased/*"] }, limit: 5, per: 10s, by: ["header:x-client"], algorithm: sliding-window, consistency: leased, headers: true }',
    '    - { name: local-per-client, match: { paths: ["/api/local/*"] }, limit: 5, per: 10s, by: ["header:x-client"], algorithm: token-bucket, burst: 5, consistency: local, headers: true }',
    '  nat:',
    `    - { name: users, match: { hosts: ["users.internal"] }, to: ${pool}, affinity: "header:x-user", idleTimeout: ${natIdleTimeoutS}s }`,
    `    - { name: spread, match: { hosts: ["rr.internal"] }, to: ${pool}, affinity: none }`,
    '',
  ].join('\n');
  const parsed = parsePolicies(text, 'soak-policy.yaml');
  if (parsed.errors.length > 0 || parsed.documents.length !== 1) throw new Error(`soak policy does not validate: ${JSON.stringify(parsed.errors)}`);
  return parsed.documents;
}

// ---- measurements ---------------------------------------------------------------------------------

interface ProcSample {
  /** Resident memory and open file descriptors, from /proc/<pid>/status and /proc/<pid>/fd (null: unreadable). */
  rssBytes: number | null;
  fds: number | null;
}

interface ReplicaSample {
  /** From the replica's /metrics (null: the scrape failed). */
  rssBytes: number | null;
  heapUsedBytes: number | null;
  /** V8's committed heap and the memory of objects outside it (buffers): where RSS goes besides heap used. */
  heapTotalBytes: number | null;
  externalBytes: number | null;
  /** Heap used per V8 space (old, new, code, large_object, …), and garbage collections so far by kind (minor, major, …): in the JSON, to tell retained objects from a slow GC cycle. */
  heapSpacesUsed: Record<string, number>;
  gcCounts: Record<string, number>;
  fds: number | null;
  lagP99S: number | null;
  buckets: number | null;
  natFlows: number | null;
  generation: number | null;
  decisions: number | null;
  /** The same process seen from /proc: a check on the scrape. */
  proc: ProcSample;
  scrapeError?: string;
}

interface Sample {
  /** Seconds since the load started. */
  t: number;
  phase: 'load' | 'idle';
  loadAverage1m: number;
  replicas: ReplicaSample[];
  envoy: ProcSample & {
    stats: Record<string, number>;
    /** Connections open now, from Envoy's stats: every listener's downstream ones (admin included) and every cluster's upstream ones. */
    connections: number | null;
    /** fds − connections: what a leak would add to, as the rest follows the connections in flight. */
    unheldFds: number | null;
  };
  etcd: ProcSample & { revision: number | null };
  /** This process: the app, the NAT backends and the load of the odd kinds. */
  bench: ProcSample;
}

function readProc(pid: number): ProcSample {
  let rssBytes: number | null = null;
  let fds: number | null = null;
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (m) rssBytes = Number(m[1]) * 1024;
  } catch {
    // gone, or not Linux
  }
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    // gone, or not ours
  }
  return { rssBytes, fds };
}

const metricOrNull = (samples: MetricSample[], name: string): number | null => (samples.some((s) => s.name === name) ? sumMetric(samples, name) : null);

async function sampleReplica(lab: SidecarLab, i: number): Promise<ReplicaSample> {
  const r = lab.replicas[i]!;
  const proc = readProc(r.pid);
  try {
    const m = await r.metrics(2000);
    return {
      rssBytes: metricOrNull(m, 'process_resident_memory_bytes'),
      heapUsedBytes: metricOrNull(m, 'nodejs_heap_size_used_bytes'),
      heapTotalBytes: metricOrNull(m, 'nodejs_heap_size_total_bytes'),
      externalBytes: metricOrNull(m, 'nodejs_external_memory_bytes'),
      heapSpacesUsed: Object.fromEntries(m.filter((x) => x.name === 'nodejs_heap_space_size_used_bytes').map((x) => [x.labels.space ?? '?', x.value])),
      gcCounts: Object.fromEntries(m.filter((x) => x.name === 'nodejs_gc_duration_seconds_count').map((x) => [x.labels.kind ?? '?', x.value])),
      fds: metricOrNull(m, 'process_open_fds'),
      lagP99S: metricOrNull(m, 'nodejs_eventloop_lag_p99_seconds'),
      buckets: metricOrNull(m, 'middlebox_ratelimit_buckets'),
      natFlows: metricOrNull(m, 'middlebox_nat_flows'),
      generation: metricOrNull(m, 'middlebox_policy_generation'),
      decisions: metricOrNull(m, 'middlebox_decisions_total'),
      proc,
    };
  } catch (e) {
    return { rssBytes: null, heapUsedBytes: null, heapTotalBytes: null, externalBytes: null, heapSpacesUsed: {}, gcCounts: {}, fds: null, lagP99S: null, buckets: null, natFlows: null, generation: null, decisions: null, proc, scrapeError: (e as Error).message };
  }
}

const ENVOY_STATS =
  '^(http\\.(inbound|outbound)_http\\.downstream_(rq_total|cx_total|cx_active)|tcp\\.inbound_tcp\\.downstream_cx_total|server\\.memory_(allocated|heap_size)|cluster\\.middlebox\\.upstream_cx_total|listener\\..*\\.downstream_cx_active|cluster\\..*\\.upstream_cx_active|cluster\\..*\\.(upstream_rq_5xx|upstream_cx_destroy_remote_with_active_rq)|.*ext_authz.*\\.(error|failure_mode_allowed)|.*ext_proc\\.(streams_failed|failure_mode_allowed))$';

/** Envoy counters that say why a request failed; their growth over the run is listed under Observations. */
const ENVOY_FAILURE_COUNTER = /(upstream_rq_5xx|upstream_cx_destroy_remote_with_active_rq|\.error|failure_mode_allowed|streams_failed)$/;

/** Envoy's open connections in its stats: per listener (not its per-thread copies) and per cluster. */
function envoyConnections(stats: Record<string, number>): number | null {
  let n = 0;
  let seen = false;
  for (const [name, v] of Object.entries(stats)) {
    const listener = name.startsWith('listener.') && name.endsWith('.downstream_cx_active') && !/\.(worker_\d+|main_thread)\./.test(name);
    const cluster = name.startsWith('cluster.') && name.endsWith('.upstream_cx_active');
    if (listener || cluster) {
      n += v;
      seen = true;
    }
  }
  return seen ? n : null;
}

/** Envoy's stats and its /proc read right after them, so that fds and connections are of one moment. */
async function sampleEnvoy(lab: SidecarLab): Promise<Sample['envoy']> {
  let stats: Record<string, number> = {};
  try {
    stats = Object.fromEntries([...(await lab.envoy.stats(ENVOY_STATS))].sort(([a], [b]) => a.localeCompare(b)));
  } catch {
    // reported as missing stats
  }
  const proc = readProc(lab.envoy.pid);
  const connections = envoyConnections(stats);
  return { ...proc, stats, connections, unheldFds: proc.fds !== null && connections !== null ? proc.fds - connections : null };
}

async function takeSample(lab: SidecarLab, t: number, phase: Sample['phase']): Promise<Sample> {
  const [replicas, envoy, revision] = await Promise.all([
    Promise.all(lab.replicas.map((_, i) => sampleReplica(lab, i))),
    sampleEnvoy(lab),
    lab.etcd.revision().catch(() => null),
  ]);
  return {
    t: round(t, 2),
    phase,
    loadAverage1m: round(os.loadavg()[0]!, 2),
    replicas,
    envoy,
    etcd: { ...readProc(lab.etcd.pid), revision },
    bench: readProc(process.pid),
  };
}

// ---- load from this process -------------------------------------------------------------------------

interface Outcome {
  kind: Kind;
  /** HTTP status, echoed / closed for TCP, or what went wrong ("timeout", "error: …", "no x-middlebox-nat", …). */
  status: string;
  /** Seconds since the load started, when the outcome was known. */
  at: number;
}

interface SendResult {
  status: number;
  headers: http.IncomingHttpHeaders;
}

/** One HTTP request; the body is read and dropped. */
function send(opts: http.RequestOptions & { body?: string; timeoutMs: number }): Promise<SendResult> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', ...opts, timeout: opts.timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Writes raw bytes on a new connection and reads the status of the first response (or how it ended). */
function rawRequest(port: number, text: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    let received = '';
    let settled = false;
    const finish = (status: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(status);
    };
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write(text));
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('data', (d: Buffer) => {
      received += d.toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(received);
      if (m) finish(m[1]!);
      else if (received.length > 64 || received.includes('\n')) finish(`not HTTP: ${JSON.stringify(received.slice(0, 40))}`);
    });
    socket.on('close', () => finish('closed without an answer'));
    socket.on('error', (e) => finish(`error: ${e.message}`));
  });
}

/** Headers of 3,800-byte values that fill about `bytes` between them (Envoy counts names and values). */
function bigHeaders(bytes: number): Record<string, string> {
  const each = 3800;
  const n = Math.round(bytes / (each + 16));
  const out: Record<string, string> = {};
  for (let i = 0; i < n; i++) out[`x-large-${String(i).padStart(2, '0')}`] = 'v'.repeat(each);
  return out;
}

class Traffic {
  readonly outcomes: Outcome[] = [];
  inFlight = 0;
  skipped = 0;
  distinctKeys = 0;
  distinctFlows = 0;
  private seq = 0;
  private readonly recentUsers: string[] = [];
  private readonly inbound = new http.Agent({ keepAlive: true, maxSockets: 32 });
  private readonly outbound = new http.Agent({ keepAlive: true, maxSockets: 16 });
  private readonly large: Record<string, string>;
  private readonly oversized: Record<string, string>;
  private readonly postBody = 'x'.repeat(2048);
  private stopped = false;
  private loop?: Promise<void>;
  private readonly idle: Array<() => void> = [];

  constructor(
    private readonly p: Params,
    private readonly lab: SidecarLab,
    private readonly t0: number,
  ) {
    this.large = bigHeaders(p.largeHeaderBytes);
    this.oversized = bigHeaders(p.oversizedHeaderBytes);
  }

  /** Sends every kind at its rate from a 20 ms tick, open loop, until stop(). */
  start(): void {
    this.loop = (async () => {
      const acc = Object.fromEntries(KIND_NAMES.map((k) => [k, Math.random()])) as Record<Kind, number>;
      let last = Date.now();
      while (!this.stopped) {
        await sleep(20);
        const now = Date.now();
        const dt = (now - last) / 1000;
        last = now;
        for (const k of KIND_NAMES) {
          acc[k] += this.p.rates[k] * dt;
          while (acc[k] >= 1) {
            acc[k] -= 1;
            if (this.inFlight >= this.p.maxInFlight) this.skipped += 1;
            else this.launch(k);
          }
        }
      }
    })();
  }

  async stop(graceMs: number): Promise<void> {
    this.stopped = true;
    await this.loop;
    if (this.inFlight > 0) await Promise.race([new Promise<void>((r) => this.idle.push(r)), sleep(graceMs)]);
    this.inbound.destroy();
    this.outbound.destroy();
  }

  private launch(kind: Kind): void {
    this.inFlight += 1;
    this.one(kind).then(
      (status) => this.done(kind, status),
      (e: Error) => this.done(kind, e.message === 'timeout' ? 'timeout' : `error: ${(e as NodeJS.ErrnoException).code ?? e.message}`),
    );
  }

  private done(kind: Kind, status: string): void {
    this.outcomes.push({ kind, status, at: (Date.now() - this.t0) / 1000 });
    this.inFlight -= 1;
    if (this.inFlight === 0) for (const f of this.idle.splice(0)) f();
  }

  private async one(kind: Kind): Promise<string> {
    const p = this.p;
    const lab = this.lab;
    const n = ++this.seq;
    // Every other request on a new connection, the rest on the keep-alive pools.
    const inbound = n % 2 === 0 ? this.inbound : false;
    const outbound = n % 3 === 0 ? false : this.outbound;
    const timeoutMs = p.requestTimeoutMs;
    switch (kind) {
      case 'ratelimit-strict':
      case 'ratelimit-leased':
      case 'ratelimit-local': {
        let key: string;
        if (Math.random() < p.newKeyShare) key = `k-${++this.distinctKeys}`;
        else key = `hot-${Math.floor(Math.random() * p.hotKeys)}`;
        const mode = kind.slice('ratelimit-'.length);
        const r = await send({ port: lab.httpPort, path: `/api/${mode}/items/${n % 100}`, headers: { 'x-client': key }, agent: inbound, timeoutMs });
        return String(r.status);
      }
      case 'nat-sticky':
      case 'nat-redirect': {
        let user: string;
        if (kind === 'nat-sticky' && (Math.random() < p.newFlowShare || this.recentUsers.length === 0)) {
          user = `u-${++this.distinctFlows}`;
          this.recentUsers.push(user);
          if (this.recentUsers.length > 200) this.recentUsers.shift();
        } else {
          user = this.recentUsers[Math.floor(Math.random() * this.recentUsers.length)] ?? 'u-0';
        }
        const r = await send({
          port: lab.outboundPort!,
          path: kind === 'nat-redirect' ? '/old?redirect' : `/users/${n % 50}`,
          headers: { host: 'users.internal', 'x-user': user },
          agent: outbound,
          timeoutMs,
        });
        if (r.headers['x-middlebox-nat'] !== 'soak/users') return `${r.status}, no x-middlebox-nat`;
        if (kind === 'nat-redirect' && r.status === 302 && r.headers.location !== 'http://users.internal/next') return `302, location ${r.headers.location}`;
        return String(r.status);
      }
      case 'nat-round-robin': {
        const r = await send({ port: lab.outboundPort!, path: `/rr/${n % 50}`, headers: { host: 'rr.internal' }, agent: outbound, timeoutMs });
        if (r.headers['x-middlebox-nat'] !== 'soak/spread') return `${r.status}, no x-middlebox-nat`;
        return String(r.status);
      }
      case 'tcp-allowed':
      case 'tcp-blocked': {
        const r = await tcpProbe({ port: lab.tcpPort!, localAddress: kind === 'tcp-blocked' ? '127.0.0.66' : '127.0.0.1', timeoutMs });
        if (r.echoed) return 'echoed';
        return r.detail === 'closed by the proxy' || /ECONNRESET/.test(r.detail) ? 'closed' : r.detail;
      }
      case 'http-blocked-source':
        return String((await send({ port: lab.httpPort, path: '/products/1', localAddress: '127.0.0.66', agent: false, timeoutMs })).status);
      case 'http-debug-header':
        return String((await send({ port: lab.httpPort, path: '/products/1', headers: { 'x-debug': '1' }, agent: inbound, timeoutMs })).status);
      case 'http-post':
        return String(
          (await send({ port: lab.httpPort, method: 'POST', path: '/orders', headers: { 'content-type': 'text/plain' }, body: this.postBody, agent: inbound, timeoutMs })).status,
        );
      case 'large-headers':
        return String((await send({ port: lab.httpPort, path: '/products/1', headers: this.large, agent: inbound, timeoutMs })).status);
      case 'oversized-headers':
        // A new connection: Envoy closes it after its 431.
        return String((await send({ port: lab.httpPort, path: '/products/1', headers: this.oversized, agent: false, timeoutMs })).status);
      case 'bad-request-line':
        return rawRequest(lab.httpPort, 'HELLO THERE\r\n\r\n', timeoutMs);
      case 'bad-header-name':
        return rawRequest(lab.httpPort, 'GET /products/1 HTTP/1.1\r\nhost: soak\r\nbad header: x\r\n\r\n', timeoutMs);
      case 'dot-segments':
        return rawRequest(lab.httpPort, 'GET /public/../admin/x HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n', timeoutMs);
      case 'escaped-slash':
        return rawRequest(lab.httpPort, 'GET /%2Fadmin/x HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n', timeoutMs);
    }
  }
}

// ---- h2load -----------------------------------------------------------------------------------------

interface H2loadRun {
  child: LabChild;
  logFile: string;
  outFile: string;
  total: number;
}

function startH2load(p: Params, h2load: string, port: number, dir: string): H2loadRun {
  const uris = path.join(dir, 'h2load-uris.txt');
  fs.writeFileSync(uris, `${H2LOAD_PATHS.map((x) => `http://127.0.0.1:${port}${x}`).join('\n')}\n`);
  const total = Math.round(p.h2loadRate * p.durationS);
  const c = p.h2loadConnections;
  // Connections opened 1/rate s apart, so that their pacing timers interleave (bench/README.md, "The load generator: h2load").
  const periodMs = Math.max(1, Math.round(1000 / p.h2loadRate));
  const logFile = path.join(dir, 'h2load.tsv');
  const outFile = path.join(dir, 'h2load.out');
  const args = ['--h1', '-c', String(c), '-r', '1', '--rate-period', `${periodMs}ms`, '--rps', String(p.h2loadRate / c), '-n', String(total), '-i', uris, `--log-file=${logFile}`];
  const child = LabChild.spawn({ name: 'h2load', command: h2load, args, logFile: outFile });
  return { child, logFile, outFile, total };
}

interface H2loadResult {
  requests: number;
  expectedRequests: number;
  statuses: Record<string, number>;
  /** Requests per sample bucket, by completion time (s since the load started). */
  completedAt: number[];
  exit: string;
  summary: string;
}

function readH2load(run: H2loadRun, t0: number, exit: string): H2loadResult {
  const statuses: Record<string, number> = {};
  const completedAt: number[] = [];
  let text = '';
  try {
    text = fs.readFileSync(run.logFile, 'utf8');
  } catch {
    // no log: reported as no requests
  }
  for (const line of text.split('\n')) {
    const [start, status, duration] = line.split('\t');
    if (duration === undefined) continue;
    const key = Number(status) < 0 ? 'failed' : String(Number(status));
    statuses[key] = (statuses[key] ?? 0) + 1;
    completedAt.push((Number(start) + Number(duration)) / 1000 - t0);
  }
  let out = '';
  try {
    out = fs.readFileSync(run.outFile, 'utf8');
  } catch {
    // nothing printed
  }
  const summary = out
    .split('\n')
    .filter((l) => /^(finished in|requests:|status codes:|traffic:)/.test(l.trim()))
    .map((l) => l.trim())
    .join('; ');
  return { requests: completedAt.length, expectedRequests: run.total, statuses, completedAt: completedAt.map((x) => round(x / 1000, 3)), exit, summary };
}

// ---- analysis ---------------------------------------------------------------------------------------

function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Least-squares slope of y over x. */
function slope(points: Array<[number, number]>): number | null {
  if (points.length < 3) return null;
  const n = points.length;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? null : num / den;
}

type ProcessName = string;

interface Series {
  name: ProcessName;
  role: 'replica' | 'envoy' | 'etcd' | 'bench';
  /** (t, value) of the load phase; null values left out. */
  rss: Array<[number, number]>;
  fds: Array<[number, number]>;
  heapUsed: Array<[number, number]>;
  /** The fd count in the sample after the idle time. */
  idleFds: number | null;
  /** Whether the fd checks are verdicts for this series. */
  fdTarget: boolean;
}

interface Growth {
  /** Median of the first window after the warm-up, of the last window of the load, and the relative change. */
  first: number | null;
  last: number | null;
  growth: number | null;
  samples: [number, number];
}

interface FdCheck {
  baseline: number | null;
  end: number | null;
  last: number | null;
  max: number | null;
  /** After the load, idle. */
  idle: number | null;
  /** Least-squares slope over the samples after the warm-up, fds per minute. */
  slopePerMin: number | null;
  /** The slope × the minutes after the warm-up: how far the trend line rose. */
  trendRise: number | null;
  endOk: boolean | null;
  trendOk: boolean | null;
}

interface ProcessVerdict {
  name: ProcessName;
  role: Series['role'];
  rss: Growth;
  heapUsed: Growth | null;
  fds: FdCheck;
  /** Whether the RSS target applies (replicas) and is met. */
  rssTarget: boolean;
  rssOk: boolean | null;
  fdTarget: boolean;
}

/** The two windows' medians (or another statistic of them) and the relative change. */
function growth(p: Params, points: Array<[number, number]>, stat: (xs: number[]) => number | null = median): Growth {
  const first = points.filter(([t]) => t >= p.warmupS && t < p.warmupS + p.windowS).map(([, v]) => v);
  const last = points.filter(([t]) => t > p.durationS - p.windowS && t <= p.durationS + 1e-6).map(([, v]) => v);
  const a = stat(first);
  const b = stat(last);
  return { first: a, last: b, growth: a !== null && b !== null && a > 0 ? (b - a) / a : null, samples: [first.length, last.length] };
}

function fdCheck(p: Params, points: Array<[number, number]>, idle: number | null): FdCheck {
  const g = growth(p, points);
  const after = points.filter(([t]) => t >= p.warmupS);
  const s = slope(after.map(([t, v]) => [t / 60, v]));
  const spanMin = (p.durationS - p.warmupS) / 60;
  const rise = s === null ? null : s * spanMin;
  return {
    baseline: g.first,
    end: g.last,
    last: after.length ? after[after.length - 1]![1] : null,
    max: after.length ? Math.max(...after.map(([, v]) => v)) : null,
    idle,
    slopePerMin: s === null ? null : round(s, 3),
    trendRise: rise === null ? null : round(rise, 2),
    endOk: g.first === null || g.last === null ? null : g.last <= g.first + p.fdSlack,
    trendOk: rise === null ? null : rise <= p.fdSlack,
  };
}

function seriesOf(samples: Sample[], replicas: number): Series[] {
  const load = samples.filter((s) => s.phase === 'load');
  const pts = (f: (s: Sample) => number | null): Array<[number, number]> =>
    load.flatMap((s) => {
      const v = f(s);
      return v === null ? [] : [[s.t, v] as [number, number]];
    });
  const idle = samples.filter((s) => s.phase === 'idle').pop();
  const out: Series[] = [];
  for (let i = 0; i < replicas; i++) {
    out.push({
      name: `replica ${i + 1}`,
      role: 'replica',
      rss: pts((s) => s.replicas[i]!.rssBytes),
      fds: pts((s) => s.replicas[i]!.fds),
      heapUsed: pts((s) => s.replicas[i]!.heapUsedBytes),
      idleFds: idle?.replicas[i]!.fds ?? null,
      fdTarget: true,
    });
  }
  // Envoy's raw count follows the connections in flight (more when the machine is slow); what is not
  // held by an open connection is what a leak would add to, and that is judged.
  out.push({ name: 'Envoy', role: 'envoy', rss: pts((s) => s.envoy.rssBytes), fds: pts((s) => s.envoy.fds), heapUsed: [], idleFds: idle?.envoy.fds ?? null, fdTarget: false });
  out.push({ name: ENVOY_UNHELD, role: 'envoy', rss: [], fds: pts((s) => s.envoy.unheldFds), heapUsed: [], idleFds: idle?.envoy.unheldFds ?? null, fdTarget: true });
  out.push({ name: 'etcd', role: 'etcd', rss: pts((s) => s.etcd.rssBytes), fds: pts((s) => s.etcd.fds), heapUsed: [], idleFds: idle?.etcd.fds ?? null, fdTarget: true });
  out.push({ name: 'bench (app, backends, load)', role: 'bench', rss: pts((s) => s.bench.rssBytes), fds: pts((s) => s.bench.fds), heapUsed: [], idleFds: idle?.bench.fds ?? null, fdTarget: false });
  return out;
}

const ENVOY_UNHELD = 'Envoy: fds − open connections';

function verdicts(p: Params, samples: Sample[]): ProcessVerdict[] {
  return seriesOf(samples, p.replicas).map((s) => {
    const rss = growth(p, s.rss);
    const rssTarget = s.role === 'replica';
    return {
      name: s.name,
      role: s.role,
      rss,
      heapUsed: s.heapUsed.length ? growth(p, s.heapUsed) : null,
      fds: fdCheck(p, s.fds, s.idleFds),
      rssTarget,
      rssOk: rss.growth === null ? null : rss.growth < p.rssGrowthTarget,
      // The bench's own process and Envoy's raw count are shown, not judged.
      fdTarget: s.fdTarget,
    };
  });
}

interface TrafficRow {
  kind: string;
  group: Group;
  what: string;
  ratePerS: number;
  requests: number;
  statuses: Record<string, number>;
  expected: string[];
  unexpected: number;
}

function trafficRows(p: Params, outcomes: Outcome[], h2: H2loadResult): TrafficRow[] {
  const rows: TrafficRow[] = [];
  rows.push({
    kind: 'h2load',
    group: 'h2load (keep-alive)',
    what: `h2load, ${p.h2loadConnections} keep-alive HTTP/1.1 connections, cycling ${H2LOAD_PATHS.length} paths: 14 allowed, 2 denied (/admin/*), 2 shadow-denied (/beta/*), 2 under a global leased limit of 15/s (/search)`,
    ratePerS: p.h2loadRate,
    requests: h2.requests,
    statuses: h2.statuses,
    expected: H2LOAD_EXPECT,
    unexpected: Object.entries(h2.statuses).filter(([s]) => !H2LOAD_EXPECT.includes(s)).reduce((a, [, n]) => a + n, 0),
  });
  for (const k of KIND_NAMES) {
    const statuses: Record<string, number> = {};
    for (const o of outcomes) if (o.kind === k) statuses[o.status] = (statuses[o.status] ?? 0) + 1;
    const spec = KINDS[k];
    rows.push({
      kind: k,
      group: spec.group,
      what: spec.what,
      ratePerS: round(p.rates[k], 1),
      requests: Object.values(statuses).reduce((a, b) => a + b, 0),
      statuses,
      expected: spec.expect,
      unexpected: Object.entries(statuses).filter(([s]) => !spec.expect.includes(s)).reduce((a, [, n]) => a + n, 0),
    });
  }
  return rows;
}

/** Requests per second per group, per sample interval (by completion time). */
function rateSeries(p: Params, outcomes: Outcome[], h2: H2loadResult): Array<{ t: number; group: Group; perS: number }> {
  const n = Math.ceil(p.durationS / p.sampleS) + 2;
  const counts = new Map<Group, number[]>(GROUPS.map((g) => [g, new Array<number>(n).fill(0)]));
  const add = (g: Group, at: number) => {
    const b = Math.floor(at / p.sampleS);
    if (b >= 0 && b < n) counts.get(g)![b]! += 1;
  };
  for (const at of h2.completedAt) add('h2load (keep-alive)', at);
  for (const o of outcomes) add(KINDS[o.kind].group, o.at);
  const out: Array<{ t: number; group: Group; perS: number }> = [];
  for (const g of GROUPS) {
    counts.get(g)!.forEach((c, b) => {
      const t = (b + 0.5) * p.sampleS;
      if (t <= p.durationS + p.sampleS) out.push({ t: round(t / 60, 4), group: g, perS: round(c / p.sampleS, 1) });
    });
  }
  return out;
}

interface StateSummary {
  replica: string;
  bucketsMax: number | null;
  bucketsEnd: number | null;
  natFlowsMax: number | null;
  natFlowsEnd: number | null;
  natFlowsIdle: number | null;
  generationStart: number | null;
  generationEnd: number | null;
  lagP99MedianMs: number | null;
  lagP99MaxMs: number | null;
  decisions: number | null;
  scrapeFailures: number;
}

function stateSummaries(p: Params, samples: Sample[]): StateSummary[] {
  const out: StateSummary[] = [];
  const load = samples.filter((s) => s.phase === 'load');
  const idle = samples.filter((s) => s.phase === 'idle');
  for (let i = 0; i < p.replicas; i++) {
    const vals = (f: (r: ReplicaSample) => number | null, from: Sample[] = load) => from.map((s) => f(s.replicas[i]!)).filter((v): v is number => v !== null);
    const lastOf = (xs: number[]) => (xs.length ? xs[xs.length - 1]! : null);
    const maxOf = (xs: number[]) => (xs.length ? Math.max(...xs) : null);
    const lag = vals((r) => r.lagP99S).map((v) => v * 1000);
    const gens = vals((r) => r.generation);
    out.push({
      replica: `replica ${i + 1}`,
      bucketsMax: maxOf(vals((r) => r.buckets)),
      bucketsEnd: lastOf(vals((r) => r.buckets)),
      natFlowsMax: maxOf(vals((r) => r.natFlows)),
      natFlowsEnd: lastOf(vals((r) => r.natFlows)),
      natFlowsIdle: lastOf(vals((r) => r.natFlows, idle)),
      generationStart: gens[0] ?? null,
      generationEnd: lastOf(gens),
      lagP99MedianMs: median(lag) === null ? null : round(median(lag)!, 2),
      lagP99MaxMs: maxOf(lag) === null ? null : round(maxOf(lag)!, 2),
      decisions: lastOf(vals((r) => r.decisions, [...load, ...idle])),
      scrapeFailures: samples.filter((s) => s.replicas[i]!.scrapeError !== undefined).length,
    });
  }
  return out;
}

interface MemoryBreakdown {
  replica: string;
  rss: Growth;
  heapTotal: Growth;
  heapUsed: Growth;
  /**
   * The lowest old-space use in each window. Heap used is a sawtooth of young objects over the old
   * space, and the old space is collected every few seconds under this load: its lowest sample in a
   * window is about what survives a full collection, so it grows only if objects are retained.
   */
  oldSpaceFloor: Growth;
  /** Full (major) collections since the replica started, at the end of the load. */
  majorGcs: number | null;
  external: Growth;
}

/** Where a replica's resident memory went: V8's committed heap, what of it is used, and memory outside it. */
function memoryBreakdown(p: Params, samples: Sample[]): MemoryBreakdown[] {
  const load = samples.filter((s) => s.phase === 'load');
  return Array.from({ length: p.replicas }, (_, i) => {
    const pts = (f: (r: ReplicaSample) => number | null): Array<[number, number]> =>
      load.flatMap((s) => {
        const v = f(s.replicas[i]!);
        return v === null ? [] : [[s.t, v] as [number, number]];
      });
    return {
      replica: `replica ${i + 1}`,
      rss: growth(p, pts((r) => r.rssBytes)),
      heapTotal: growth(p, pts((r) => r.heapTotalBytes)),
      heapUsed: growth(p, pts((r) => r.heapUsedBytes)),
      oldSpaceFloor: growth(p, pts((r) => r.heapSpacesUsed.old ?? null), (xs) => (xs.length ? Math.min(...xs) : null)),
      majorGcs: pts((r) => r.gcCounts.major ?? null).pop()?.[1] ?? null,
      external: growth(p, pts((r) => r.externalBytes)),
    };
  });
}

/** How much each of Envoy's failure counters rose from the first sample to the last. */
function envoyFailures(samples: Sample[]): Record<string, number> {
  const first = samples[0]?.envoy.stats ?? {};
  const last = samples[samples.length - 1]?.envoy.stats ?? {};
  const out: Record<string, number> = {};
  for (const [name, v] of Object.entries(last)) {
    // The TCP proxy's upstream connections all end by the echo server closing them: not failures.
    if (!ENVOY_FAILURE_COUNTER.test(name) || name.startsWith('cluster.app_tcp.')) continue;
    const d = v - (first[name] ?? 0);
    if (d > 0) out[name] = d;
  }
  return out;
}

// ---- replica logs -------------------------------------------------------------------------------------


// ---- output -------------------------------------------------------------------------------------------

const MiB = 2 ** 20;

function fmt(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(digits);
}

const mib = (x: number | null) => (x === null ? '–' : (x / MiB).toFixed(1));
const pct = (x: number | null) => (x === null ? '–' : `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`);
const mark = (ok: boolean | null) => (ok === null ? '? (no data)' : ok ? '✔' : '✘');

function statusText(statuses: Record<string, number>): string {
  const e = Object.entries(statuses).sort(([, a], [, b]) => b - a);
  return e.length ? e.map(([k, v]) => `${v}× ${k}`).join(', ') : 'none';
}

interface Report {
  p: Params;
  meta: Record<string, string>;
  code: CodeIdentity;
  verdicts: ProcessVerdict[];
  traffic: TrafficRow[];
  states: StateSummary[];
  memory: MemoryBreakdown[];
  /** Envoy's failure counters (5xx from a cluster, connections reset with a request on them, filter errors): their rise over the run. */
  envoyFailures: Record<string, number>;
  reapplies: Array<{ t: number; generation: number; ok: boolean; error?: string }>;
  distinctKeys: number;
  distinctFlows: number;
  skipped: number;
  etcdRevisions: { start: number | null; end: number | null };
  warnings: Record<string, Record<string, number>>;
  observations: string[];
  passed: boolean;
  logDir: string | null;
  svgName: string;
}

function targetLines(r: Report): Array<{ target: string; process: string; value: string; ok: boolean | null }> {
  const { p } = r;
  const lines: Array<{ target: string; process: string; value: string; ok: boolean | null }> = [];
  for (const v of r.verdicts.filter((x) => x.rssTarget)) {
    lines.push({
      target: `resident memory after the warm-up grows < ${p.rssGrowthTarget * 100} %`,
      process: v.name,
      value: `${pct(v.rss.growth)} (${mib(v.rss.first)} → ${mib(v.rss.last)} MiB)`,
      ok: v.rssOk,
    });
  }
  for (const v of r.verdicts.filter((x) => x.fdTarget)) {
    lines.push({
      target: `open fds at the end ≤ the baseline after the warm-up + ${p.fdSlack}`,
      process: v.name,
      value: `${fmt(v.fds.baseline, 0)} → ${fmt(v.fds.end, 0)}`,
      ok: v.fds.endOk,
    });
    lines.push({
      target: `no upward trend in open fds (trend line rises ≤ ${p.fdSlack} over the run after the warm-up)`,
      process: v.name,
      value: `${fmt(v.fds.slopePerMin, 2)} fds/min (rise ${fmt(v.fds.trendRise, 1)})`,
      ok: v.fds.trendOk,
    });
  }
  return lines;
}

function markdown(r: Report): string {
  const { p, meta, code } = r;
  const lines: string[] = [];
  const postMin = (p.durationS - p.warmupS) / 60;
  lines.push(`# Soak: ${fmt(p.minutes, p.minutes % 1 ? 1 : 0)} minute(s) of mixed traffic through Envoy${p.quick ? ' (quick: checks the bench, not a result)' : ''}`);
  lines.push('');
  lines.push(`**${r.passed ? 'PASS' : 'FAIL'}**: ${r.passed ? 'every target met' : 'see the ✘ lines'} (targets: resident memory of each replica grows < ${p.rssGrowthTarget * 100} % after the warm-up; no process of the lab leaks file descriptors).`);
  lines.push('');
  lines.push(...metadataLines(meta));
  lines.push(
    `- code: ${describeCode(code)}`,
  );
  lines.push(
    `- setup: SidecarLab — one etcd, ${p.replicas} replicas (--max-rate-limit-keys ${p.maxRateLimitKeys}, --etcd-timeout-ms ${LAB_ETCD_TIMEOUT_MS}), one Envoy (inbound HTTP with ext_authz, TCP with network ext_authz, outbound with ext_proc NAT); the app, 3 NAT backends and the load of the odd kinds in the bench's own Node process`,
  );
  lines.push(
    `- timeline: ${p.durationS} s of load; warm-up ${p.warmupS} s; compared: the first ${p.windowS} s after the warm-up (${p.warmupS}–${p.warmupS + p.windowS} s) against the last ${p.windowS} s (${p.durationS - p.windowS}–${p.durationS} s); a sample every ${p.sampleS} s, then ${p.idleS} s idle; the policy re-applied every ${p.reapplyS} s (${r.reapplies.length} times, ${r.reapplies.filter((x) => !x.ok).length} failed)`,
  );
  lines.push(`- chart: [${r.svgName}](${r.svgName}); every sample: the JSON beside this file`);
  lines.push('');
  lines.push('## Targets');
  lines.push('');
  lines.push('| target | process | measured | |');
  lines.push('|---|---|---|---|');
  for (const t of targetLines(r)) lines.push(`| ${t.target} | ${t.process} | ${t.value} | ${mark(t.ok)} |`);
  lines.push('');
  const errors = r.traffic.reduce((a, t) => a + t.unexpected, 0);
  const total = r.traffic.reduce((a, t) => a + t.requests, 0);
  lines.push(`Reported, not targets: errors (answers other than expected, connection failures, timeouts) **${errors} of ${total}** (${fmt((errors / Math.max(1, total)) * 100, 3)} %); requests not sent because ${p.maxInFlight} were in flight: ${r.skipped}.`);
  lines.push('');
  lines.push('## Per process');
  lines.push('');
  lines.push(`Medians of the first window after the warm-up → of the last window of the load. fds: baseline → end (medians), last sample, largest after the warm-up, after ${p.idleS} s idle; slope by least squares over the ${fmt(postMin, 1)} min after the warm-up.`);
  lines.push('');
  lines.push('| process | RSS MiB | RSS growth | heap used MiB | heap used growth | fds baseline → end | fds last / max / idle | fds slope per min |');
  lines.push('|---|---|---|---|---|---|---|---|');
  for (const v of r.verdicts) {
    lines.push(
      `| ${v.name} | ${mib(v.rss.first)} → ${mib(v.rss.last)} | ${pct(v.rss.growth)}${v.rssTarget || v.rss.growth === null ? '' : ' (not a target)'} | ${v.heapUsed ? `${mib(v.heapUsed.first)} → ${mib(v.heapUsed.last)}` : '–'} | ${v.heapUsed ? pct(v.heapUsed.growth) : '–'} | ${fmt(v.fds.baseline, 0)} → ${fmt(v.fds.end, 0)} | ${fmt(v.fds.last, 0)} / ${fmt(v.fds.max, 0)} / ${fmt(v.fds.idle, 0)} | ${fmt(v.fds.slopePerMin, 2)}${v.fdTarget ? '' : ' (not a target)'} |`,
    );
  }
  lines.push('');
  lines.push(
    'Replica memory over the same two windows (MiB): medians of resident, V8\'s committed heap (heap total), heap used and external memory (buffers outside the heap), and the lowest old-space use of each window: about what survives a full garbage collection (the last column says how many there were). Resident memory that grows while heap total and external do not is native memory (gRPC, the allocator); a rising old-space floor is retained objects.',
  );
  lines.push('');
  lines.push('| replica | resident | heap total | heap used | external | old space, lowest | full GCs so far |');
  lines.push('|---|---|---|---|---|---|---|');
  const g = (x: Growth) => `${mib(x.first)} → ${mib(x.last)} (${pct(x.growth)})`;
  for (const m of r.memory) lines.push(`| ${m.replica} | ${g(m.rss)} | ${g(m.heapTotal)} | ${g(m.heapUsed)} | ${g(m.external)} | ${g(m.oldSpaceFloor)} | ${fmt(m.majorGcs, 0)} |`);
  lines.push('');
  lines.push('## Bounded state, per replica');
  lines.push('');
  lines.push(`| replica | rate-limit buckets (strict + leased) max / end (cap ${p.maxRateLimitKeys}) | NAT flows max / end / idle | policy generation start → end | event-loop lag p99 median / max ms | decisions | failed scrapes |`);
  lines.push('|---|---|---|---|---|---|---|');
  for (const s of r.states) {
    lines.push(
      `| ${s.replica} | ${fmt(s.bucketsMax, 0)} / ${fmt(s.bucketsEnd, 0)} | ${fmt(s.natFlowsMax, 0)} / ${fmt(s.natFlowsEnd, 0)} / ${fmt(s.natFlowsIdle, 0)} | ${fmt(s.generationStart, 0)} → ${fmt(s.generationEnd, 0)} | ${fmt(s.lagP99MedianMs, 1)} / ${fmt(s.lagP99MaxMs, 1)} | ${fmt(s.decisions, 0)} | ${s.scrapeFailures} |`,
    );
  }
  lines.push('');
  lines.push(
    `Distinct rate-limit keys sent: ${r.distinctKeys} new + ${p.hotKeys} hot; distinct NAT flows: ${r.distinctFlows} (idle timeout ${p.natIdleTimeoutS} s); etcd revision ${fmt(r.etcdRevisions.start, 0)} → ${fmt(r.etcdRevisions.end, 0)}.`,
  );
  lines.push('');
  lines.push('## Traffic');
  lines.push('');
  lines.push('| kind | what | rate /s | requests | answers | expected | unexpected |');
  lines.push('|---|---|---|---|---|---|---|');
  for (const t of r.traffic) {
    lines.push(`| ${t.kind} | ${t.what} | ${fmt(t.ratePerS, 1)} | ${t.requests} | ${statusText(t.statuses)} | ${t.expected.join(', ')} | ${t.unexpected} |`);
  }
  lines.push('');
  lines.push('## Observations');
  lines.push('');
  if (r.observations.length === 0) lines.push('- nothing unexpected');
  for (const o of r.observations) lines.push(`- ${o}`);
  lines.push('');
  lines.push('How to read this: bench/README.md, "Soak".');
  lines.push('');
  return lines.join('\n');
}

function observations(r: Omit<Report, 'observations' | 'passed'>, samples: Sample[], h2: H2loadResult): string[] {
  const obs: string[] = [];
  const { p } = r;
  for (const t of r.traffic) {
    if (t.unexpected > 0) {
      const bad = Object.entries(t.statuses).filter(([s]) => !t.expected.includes(s));
      obs.push(`${t.kind}: ${t.unexpected} unexpected answer(s): ${statusText(Object.fromEntries(bad))}`);
    }
  }
  const ef = Object.entries(r.envoyFailures);
  if (ef.length > 0) obs.push(`Envoy's failure counters rose during the run: ${ef.map(([k, v]) => `${k} +${v}`).join(', ')}`);
  if (h2.requests < 0.95 * h2.expectedRequests) obs.push(`h2load completed ${h2.requests} of ${h2.expectedRequests} requests (${h2.exit})`);
  if (r.skipped > 0) obs.push(`${r.skipped} request(s) of this process not sent: ${p.maxInFlight} already in flight (the lab was slow to answer)`);
  for (const m of r.memory) {
    const f = m.oldSpaceFloor;
    // A quick run's 15 s windows hold one or two full collections: too few for a floor.
    if (!p.quick && f.growth !== null && f.growth > p.rssGrowthTarget) {
      obs.push(`${m.replica}: the old space's lowest use grew ${pct(f.growth)} after the warm-up (${mib(f.first)} → ${mib(f.last)} MiB): objects are being retained`);
    }
  }
  for (const v of r.verdicts) {
    if (!v.rssTarget && v.rss.growth !== null && v.rss.growth >= p.rssGrowthTarget) obs.push(`${v.name}: resident memory grew ${pct(v.rss.growth)} after the warm-up (not a target)`);
    if (!v.fdTarget && v.fds.trendRise !== null && v.fds.trendRise > p.fdSlack) {
      const why = v.role === 'envoy' ? `it follows the connections in flight; judged: "${ENVOY_UNHELD}"` : 'its own connections in flight';
      obs.push(`${v.name}: open fds trend up by ${fmt(v.fds.trendRise, 1)} over the run (not a target: ${why}; after ${p.idleS} s idle ${fmt(v.fds.idle, 0)})`);
    }
  }
  for (const s of r.states) {
    if (s.bucketsMax !== null && s.bucketsMax > p.maxRateLimitKeys) obs.push(`${s.replica}: ${s.bucketsMax} rate-limit buckets, over the cap of ${p.maxRateLimitKeys}`);
    if (s.scrapeFailures > 0) obs.push(`${s.replica}: ${s.scrapeFailures} scrape(s) of /metrics failed`);
    if (s.lagP99MaxMs !== null && s.lagP99MaxMs > 100) obs.push(`${s.replica}: event-loop lag p99 reached ${fmt(s.lagP99MaxMs, 0)} ms`);
    if (s.generationStart !== null && s.generationEnd !== null && s.generationEnd - s.generationStart < r.reapplies.filter((x) => x.ok).length) {
      obs.push(`${s.replica}: policy generation moved ${s.generationEnd - s.generationStart} for ${r.reapplies.filter((x) => x.ok).length} re-applies`);
    }
  }
  for (const a of r.reapplies.filter((x) => !x.ok)) obs.push(`re-apply at ${fmt(a.t, 0)} s failed: ${a.error}`);
  for (const [who, w] of Object.entries(r.warnings)) for (const [msg, n] of Object.entries(w)) obs.push(`${who} logged "${msg}" ×${n}`);
  const busy = samples.filter((s) => s.loadAverage1m > os.cpus().length);
  if (busy.length > 0) obs.push(`1-minute load average above ${os.cpus().length} (the CPUs) in ${busy.length} of ${samples.length} samples (max ${fmt(Math.max(...busy.map((s) => s.loadAverage1m)), 2)}): the machine was shared or saturated`);
  if (r.code.changedDuringRun) obs.push('dist/src changed during the run (a build ran meanwhile)');
  return obs;
}

// ---- the chart ------------------------------------------------------------------------------------------

const PROCESS_COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c8c8c'];

function chartSpec(r: Report, samples: Sample[], rates: Array<{ t: number; group: Group; perS: number }>): VegaLiteSpec {
  const { p } = r;
  const width = 860;
  const endMin = (p.durationS + p.idleS) / 60;
  const x = { type: 'quantitative', scale: { domain: [0, endMin], nice: false }, title: null };
  const xLast = { ...x, title: 'minutes since the load started' };
  const load = samples;
  const names = [...Array.from({ length: p.replicas }, (_, i) => `replica ${i + 1}`), 'Envoy', 'etcd'];
  const color = (domain: string[], title: string | null = null) => ({
    field: 'process',
    type: 'nominal',
    scale: { domain, range: PROCESS_COLORS.slice(0, domain.length) },
    legend: { title, orient: 'right', labelLimit: 300 },
  });
  const perProcess = (f: (s: Sample, i: number) => number | null, count: number) =>
    load.flatMap((s) =>
      names.slice(0, count).flatMap((name, i) => {
        const v = f(s, i);
        return v === null ? [] : [{ t: round(s.t / 60, 4), process: name, v }];
      }),
    );
  const byProc = (s: Sample, i: number, key: 'rssBytes' | 'fds'): number | null =>
    i < p.replicas ? s.replicas[i]![key] : i === p.replicas ? s.envoy[key] : s.etcd[key];
  const shade = (legend: boolean, xDef: object = x) => ({
    data: {
      values: [
        { from: 0, to: p.warmupS / 60, what: 'warm-up' },
        { from: p.warmupS / 60, to: (p.warmupS + p.windowS) / 60, what: 'first window' },
        { from: (p.durationS - p.windowS) / 60, to: p.durationS / 60, what: 'last window' },
        { from: p.durationS / 60, to: endMin, what: 'idle' },
      ],
    },
    mark: { type: 'rect', opacity: 0.12 },
    encoding: {
      x: { field: 'from', ...xDef },
      x2: { field: 'to' },
      color: {
        field: 'what',
        type: 'nominal',
        scale: { domain: ['warm-up', 'first window', 'last window', 'idle'], range: ['#999', '#2a9d8f', '#2a9d8f', '#e9c46a'] },
        legend: legend ? { title: 'phase', orient: 'right' } : null,
      },
    },
  });
  const panel = (values: object[], yTitle: string, domain: string[], height = 150, phaseLegend = false) => ({
    width,
    height,
    layer: [
      shade(phaseLegend),
      {
        data: { values },
        mark: { type: 'line', strokeWidth: 1.5, point: { size: 10 } },
        encoding: { x: { field: 't', ...x }, y: { field: 'v', type: 'quantitative', title: yTitle, scale: { zero: false } }, color: color(domain) },
      },
    ],
    resolve: { scale: { color: 'independent' } },
  });
  const rss = perProcess((s, i) => {
    const v = byProc(s, i, 'rssBytes');
    return v === null ? null : round(v / MiB, 2);
  }, names.length);
  const heap = perProcess((s, i) => {
    const v = s.replicas[i]!.heapUsedBytes;
    return v === null ? null : round(v / MiB, 2);
  }, p.replicas);
  const fds = [
    ...perProcess((s, i) => byProc(s, i, 'fds'), names.length),
    ...load.flatMap((s) => (s.envoy.unheldFds === null ? [] : [{ t: round(s.t / 60, 4), process: ENVOY_UNHELD, v: s.envoy.unheldFds }])),
  ];
  const bounded = load.flatMap((s) =>
    s.replicas.flatMap((rep, i) => [
      ...(rep.buckets === null ? [] : [{ t: round(s.t / 60, 4), process: `replica ${i + 1}: rate-limit buckets`, v: rep.buckets }]),
      ...(rep.natFlows === null ? [] : [{ t: round(s.t / 60, 4), process: `replica ${i + 1}: NAT flows`, v: rep.natFlows }]),
    ]),
  );
  const boundedDomain = Array.from({ length: p.replicas }, (_, i) => [`replica ${i + 1}: rate-limit buckets`, `replica ${i + 1}: NAT flows`]).flat();
  const reapplies = r.reapplies.map((a) => ({ t: round(a.t / 60, 4) }));
  const ratePanel = {
    width,
    height: 150,
    layer: [
      shade(false, xLast),
      { data: { values: reapplies }, mark: { type: 'rule', color: '#555', strokeDash: [2, 3] }, encoding: { x: { field: 't', ...xLast } } },
      {
        data: { values: rates },
        mark: { type: 'line', interpolate: 'step', strokeWidth: 1.5 },
        encoding: {
          x: { field: 't', ...xLast },
          y: { field: 'perS', type: 'quantitative', title: 'completed requests / s' },
          color: { field: 'group', type: 'nominal', scale: { domain: GROUPS, range: ['#264653', '#e76f51', '#2a9d8f', '#f4a261', '#8ab17d', '#b5179e'] }, legend: { title: 'traffic', orient: 'right', labelLimit: 300 } },
        },
      },
    ],
    resolve: { scale: { color: 'independent' } },
  };
  const rssText = r.verdicts
    .filter((v) => v.rssTarget)
    .map((v) => `${v.name} ${pct(v.rss.growth)}`)
    .join(', ');
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `Soak: ${fmt(p.minutes, p.minutes % 1 ? 1 : 0)} min of mixed traffic through Envoy, ${p.replicas} replicas — ${r.passed ? 'PASS' : 'FAIL'}`,
      subtitle: `RSS growth after the warm-up (target < ${p.rssGrowthTarget * 100} %): ${rssText}. Shaded: warm-up (grey), the two compared windows (green), idle after the load (yellow); dotted lines: policy re-applied`,
      anchor: 'start',
      fontSize: 15,
    },
    background: 'white',
    padding: 12,
    vconcat: [
      panel(rss, 'resident memory, MiB', names, 150, true),
      panel(heap, 'heap used, MiB', names.slice(0, p.replicas), 110),
      panel(fds, 'open file descriptors', [...names, ENVOY_UNHELD]),
      panel(bounded, 'entries', boundedDomain, 110),
      ratePanel,
    ],
    spacing: 14,
    resolve: { scale: { color: 'independent' } },
    config: { view: { stroke: '#ddd' }, axis: { labelFontSize: 10, titleFontSize: 11 }, title: { subtitleFontSize: 11 } },
  };
}

// ---- main ---------------------------------------------------------------------------------------------

/** The app in this process must accept the large headers Envoy passes on (Node's default limit is 16 KiB). */
const NEEDED_HEADER_SIZE = 128 * 1024;

function reexecWithLargerHeaders(): Promise<number> {
  const child = spawn(process.execPath, [...process.execArgv, `--max-http-header-size=${NEEDED_HEADER_SIZE}`, __filename, ...process.argv.slice(2)], { stdio: 'inherit' });
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, () => child.kill(s));
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1))));
}

async function main(): Promise<number> {
  const p = params(process.argv.slice(2));
  if (http.maxHeaderSize < NEEDED_HEADER_SIZE) return reexecWithLargerHeaders();
  const h2loadPath = h2loadExecutable();
  if (!h2loadPath) return 1;
  // Whatever happens, the bench ends: exit() SIGKILLs every lab child (src/lab/processes.ts).
  hardTimeLimit(p.hardLimitMs);
  // Set once the lab's log dir exists: an interrupted run leaves nothing behind.
  let logDirOnExit: string | undefined;
  for (const s of ['SIGINT', 'SIGTERM'] as const) {
    process.once(s, () => {
      log(`${s}: stopping (children are killed on exit)`);
      if (logDirOnExit) fs.rmSync(logDirOnExit, { recursive: true, force: true });
      process.exit(130);
    });
  }

  const totalRate = p.h2loadRate + Object.values(p.rates).reduce((a, b) => a + b, 0);
  log(
    `soak${p.quick ? ' (quick)' : ''}: ${p.durationS} s of ~${Math.round(totalRate)} req/s mixed traffic, warm-up ${p.warmupS} s, windows ${p.windowS} s, ` +
      `sample every ${p.sampleS} s, policy re-applied every ${p.reapplyS} s; hard limit ${p.hardLimitMs / 60_000} min ` +
      `(load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs)`,
  );
  const code = codeIdentity();
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-soak-'));
  logDirOnExit = logDir;
  const backends: Upstream[] = [];
  for (const name of ['users-a', 'users-b', 'users-c']) backends.push(await startHttpUpstream({ name }));
  const lab = await SidecarLab.start({
    replicas: p.replicas,
    tcp: true,
    outbound: true,
    logDir,
    serveArgs: ['--max-rate-limit-keys', String(p.maxRateLimitKeys)],
  });
  log(`lab up: Envoy pid ${lab.envoy.pid}, etcd pid ${lab.etcd.pid}, replicas ${lab.replicas.map((r) => r.pid).join(', ')}; logs in ${logDir}`);

  let generation = 1;
  await lab.applyPolicies(policyDocs(generation, backends, p.natIdleTimeoutS));
  // In force on both replicas: the strict limit's headers and NAT on the outbound listener.
  let streak = 0;
  await waitFor(
    async () => {
      const a = await send({ port: lab.httpPort, path: '/api/strict/check', headers: { 'x-client': 'check' }, agent: false, timeoutMs: 2000 });
      const b = await send({ port: lab.outboundPort!, path: '/check', headers: { host: 'rr.internal' }, agent: false, timeoutMs: 2000 });
      streak = a.headers['ratelimit-limit'] !== undefined && b.headers['x-middlebox-nat'] === 'soak/spread' ? streak + 1 : 0;
      return streak >= 2 * p.replicas;
    },
    { timeoutMs: 15_000, intervalMs: 50, what: 'the soak policy to be in force on every replica' },
  );

  const revisionStart = await lab.etcd.revision().catch(() => null);
  const t0 = Date.now();
  const now = () => (Date.now() - t0) / 1000;
  const h2 = startH2load(p, h2loadPath, lab.httpPort, logDir);
  const traffic = new Traffic(p, lab, t0);
  traffic.start();
  log(`load started: h2load ${p.h2loadRate} req/s on ${p.h2loadConnections} connections + ${Math.round(totalRate - p.h2loadRate)} req/s of ${KIND_NAMES.length} other kinds from this process`);

  const samples: Sample[] = [];
  const reapplies: Report['reapplies'] = [];
  let lastProgress = -Infinity;
  let warmLogged = false;
  const progress = (s: Sample) => {
    const reps = s.replicas.map((r, i) => `r${i + 1} ${mib(r.rssBytes)} MiB/${fmt(r.fds, 0)} fds/${fmt(r.buckets, 0)} buckets/${fmt(r.natFlows, 0)} flows`).join(', ');
    const errs = traffic.outcomes.filter((o) => !KINDS[o.kind].expect.includes(o.status)).length;
    log(
      `  t=${fmt(s.t, 0)} s: ${traffic.outcomes.length} odd-kind answers (${errs} unexpected), inbound ${s.envoy.stats['http.inbound_http.downstream_rq_total'] ?? '?'} requests at Envoy; ` +
        `${reps}; Envoy ${mib(s.envoy.rssBytes)} MiB/${fmt(s.envoy.fds, 0)} fds; etcd ${mib(s.etcd.rssBytes)} MiB/${fmt(s.etcd.fds, 0)} fds; load ${s.loadAverage1m}`,
    );
  };
  // Samples every sampleS from t = 0, re-applies every reapplyS, until the load's duration is over.
  for (let k = 0; k * p.sampleS <= p.durationS; k++) {
    await sleep(Math.max(0, t0 + k * p.sampleS * 1000 - Date.now()));
    const s = await takeSample(lab, now(), 'load');
    samples.push(s);
    if (!warmLogged && s.t >= p.warmupS) {
      warmLogged = true;
      log(`  warm-up over at t=${fmt(s.t, 0)} s: from here on memory and fds are compared`);
    }
    if (s.t - lastProgress >= p.progressS - 0.5 || k * p.sampleS + p.sampleS > p.durationS) {
      lastProgress = s.t;
      progress(s);
    }
    const due = Math.floor(s.t / p.reapplyS);
    if (s.t < p.durationS - 1 && due > reapplies.length && due >= 1) {
      generation += 1;
      const at = now();
      try {
        await lab.applyPolicies(policyDocs(generation, backends, p.natIdleTimeoutS));
        reapplies.push({ t: round(at, 2), generation, ok: true });
        log(`  policy re-applied (rule reapply-${generation})`);
      } catch (e) {
        reapplies.push({ t: round(at, 2), generation, ok: false, error: (e as Error).message });
        log(`  policy re-apply failed: ${(e as Error).message}`);
      }
    }
  }
  log('load over: stopping this process\'s load and waiting for h2load');
  await traffic.stop(p.requestTimeoutMs + 1000);
  const h2Deadline = setTimeout(() => h2.child.signal('SIGKILL'), 20_000);
  const h2Exit = await h2.child.exited;
  clearTimeout(h2Deadline);
  const h2ExitText = h2Exit.code === 0 ? 'exited 0' : `exited with code ${h2Exit.code}, signal ${h2Exit.signal}`;
  log(`h2load ${h2ExitText}; ${p.idleS} s idle`);
  await sleep(p.idleS * 1000);
  samples.push(await takeSample(lab, now(), 'idle'));
  const revisionEnd = await lab.etcd.revision().catch(() => null);

  const h2r = readH2load(h2, t0, h2ExitText);
  const warnings: Record<string, Record<string, number>> = {};
  for (let i = 0; i < p.replicas; i++) {
    const w = readWarnings(path.join(logDir, `middlebox-${i + 1}.log`));
    if (Object.keys(w).length) warnings[`replica ${i + 1}`] = w;
  }
  await lab.stop();
  for (const b of backends) await b.close().catch(() => undefined);

  const codeAfter = codeIdentity();
  if (codeAfter.distSrcSha256 !== code.distSrcSha256) code.changedDuringRun = true;
  const meta = await runMetadata(`node dist/bench/soak.js${p.quick ? ' --quick' : ''}${process.argv.slice(2).some((a) => a.startsWith('--minutes')) ? ` --minutes ${p.minutes}` : ''}`);
  const base = p.quick ? 'soak.quick' : 'soak';
  const svgName = `${base}.svg`;
  const v = verdicts(p, samples);
  const passed = v.every((x) => (!x.rssTarget || x.rssOk === true) && (!x.fdTarget || (x.fds.endOk === true && x.fds.trendOk === true)));
  const partial = {
    p,
    meta,
    code,
    verdicts: v,
    traffic: trafficRows(p, traffic.outcomes, h2r),
    states: stateSummaries(p, samples),
    memory: memoryBreakdown(p, samples),
    envoyFailures: envoyFailures(samples),
    reapplies,
    distinctKeys: traffic.distinctKeys,
    distinctFlows: traffic.distinctFlows,
    skipped: traffic.skipped,
    etcdRevisions: { start: revisionStart, end: revisionEnd },
    warnings,
    logDir: passed ? null : logDir,
    svgName,
  };
  const report: Report = { ...partial, observations: observations(partial, samples, h2r), passed };
  const rates = rateSeries(p, traffic.outcomes, h2r);
  const md = markdown(report);
  process.stdout.write(`\n${md}`);
  const { completedAt: _dropped, ...h2Summary } = h2r;
  const { p: _p, meta: _meta, svgName: _svg, ...rest } = partial;
  writeResults(base, { ...meta, params: p, passed, targets: targetLines(report), ...rest, observations: report.observations, h2load: h2Summary, rates, samples }, md);
  let chartFailed = false;
  try {
    fs.writeFileSync(path.join(resultsDir(), svgName), await renderSvg(chartSpec(report, samples, rates)));
    log(`wrote ${path.relative(process.cwd(), path.join(resultsDir(), svgName))}`);
  } catch (e) {
    chartFailed = true;
    log(`could not render the chart: ${(e as Error).stack ?? (e as Error).message}`);
  }
  if (passed) fs.rmSync(logDir, { recursive: true, force: true });
  else log(`logs of every process kept in ${logDir}`);
  return passed && !chartFailed ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
