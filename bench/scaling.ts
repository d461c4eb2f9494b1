// Dynamic scaling: what one global rate limit admits, how fast requests are answered, and whether any
// fail, while middlebox replicas are added and removed under steady load and etcd is frozen and resumed.
//
//   node dist/bench/scaling.js [--quick]        (make bench-scaling)
//
// Real processes on loopback: a fresh etcd, an app, one Envoy with its production ext_authz deadline
// (250 ms, fail closed) and its production gRPC health checks on the middlebox cluster, and up to three
// `middlebox serve` replicas. Envoy's bootstrap lists every address a replica will ever listen on, so a
// replica that is not running yet (or any more) is simply an endpoint that fails its health checks, and
// Envoy learns that replicas come and go the way it does in production: through those checks. Open-loop
// load at 1.5 × the limit runs through Envoy while a script adds replicas, stops one (SIGTERM, graceful),
// freezes etcd (SIGSTOP) and thaws it, and kills one (SIGKILL). Every replica address's gRPC health ("" and
// middlebox.etcd) is polled every 100 ms and Envoy's own view of the cluster (admin /clusters) every
// 250 ms. The whole script runs once per consistency mode (leased, then strict).
// Results: bench/results/scaling.{json,md,svg} (scaling.quick.* with --quick); bench/README.md, "Dynamic
// scaling", says how to read them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Etcd3 } from 'etcd3';
import { service as healthService } from 'grpc-health-check';
import { stringify } from 'yaml';
import { CLUSTERS, renderBootstrap, type BootstrapOptions } from '../src/envoy/bootstrap';
import { EnvoyProcess } from '../src/lab/envoy';
import { EtcdProcess } from '../src/lab/etcd';
import { MiddleboxProcess } from '../src/lab/middlebox';
import { freePort, sleep, waitFor } from '../src/lab/ports';
import { makeTempDir, removeTempDir } from '../src/lab/processes';
import { startHttpUpstream, type Upstream } from '../src/lab/upstream';
import type { Consistency } from '../src/policy/types';
import { connectEtcd } from '../src/state/etcd/client';
import { DEFAULT_MEMBER_TTL_S } from '../src/state/etcd/membership';
import { putPolicies } from '../src/state/etcd/policies';
import { DEFAULT_BREAKER } from '../src/state/resilient/breaker';
import { renderSvg, type VegaLiteSpec } from './chart';
import { type CodeIdentity, codeIdentity, describeCode, hardTimeLimit, log, quickFlag, resultsDir, metadataLines, runMetadata, writeResults } from './common';
import { openLoop, type Sample } from './load';
import { policyDocs, waitPolicyInForce } from './ratelimit-lab';
import { BucketWriteLog, cpuSnapshot, fmt, isFailure, latencyOf, othersCpuPct, percentile, round, statsDelta, WINDOW_MS, windowOf, type BucketWrite } from './timeline';

// ---- parameters -----------------------------------------------------------------------------------

const MODES: Consistency[] = ['leased', 'strict'];
const PREFIX = '/middlebox';

/** One step of the script, at `atMs` after the load started. Replicas are numbered from 1 (their address slot). */
type Step =
  | { atMs: number; action: 'add' | 'stop' | 'kill'; replica: number }
  | { atMs: number; action: 'freeze' | 'thaw' };

interface Params {
  quick: boolean;
  /** Requests per 1 s fixed window, one global bucket. */
  limit: number;
  /** Offered load as a multiple of the limit. */
  loadFactor: number;
  /** Replicas running when the load starts. */
  initial: number[];
  script: Step[];
  /** Length of the load. */
  durationMs: number;
  /** The load starts this long after a window boundary, so that events (whole seconds) fall mid-window. */
  startOffsetMs: number;
  bucketMs: number;
  /** Every replica address's health is asked this often; Envoy's admin /clusters every envoyPollMs. */
  pollMs: number;
  envoyPollMs: number;
  /** Deadline of one health check; a check that misses it is recorded as "no answer". */
  healthTimeoutMs: number;
  /** Envoy's ext_authz deadline (the bootstrap's production default). */
  envoyTimeoutMs: number;
  /** --shutdown-delay-ms of every replica: the product's default (the lab's is 0). */
  shutdownDelayMs: number;
  /** The load generator's per-request timeout. */
  requestTimeoutMs: number;
  /** The check that the rendered bootstrap sends no call to an absent replica (panic threshold 0; see README): rate and length of its load. */
  panicCheck: { rate: number; durationMs: number };
  /** The whole bench is killed after this (children included). */
  hardLimitMs: number;
}

function params(argv: string[]): Params {
  const quick = quickFlag(argv, 'scaling');
  const s = (x: number) => x * 1000;
  const script: Step[] = quick
    ? [
        { atMs: s(2), action: 'add', replica: 2 },
        { atMs: s(4), action: 'add', replica: 3 },
        { atMs: s(6), action: 'stop', replica: 1 },
        { atMs: s(8), action: 'freeze' },
        { atMs: s(11), action: 'thaw' },
        { atMs: s(14), action: 'kill', replica: 2 },
      ]
    : [
        { atMs: s(5), action: 'add', replica: 2 },
        { atMs: s(10), action: 'add', replica: 3 },
        { atMs: s(15), action: 'stop', replica: 1 },
        { atMs: s(20), action: 'freeze' },
        { atMs: s(25), action: 'thaw' },
        { atMs: s(30), action: 'kill', replica: 2 },
      ];
  return {
    quick,
    limit: 200,
    loadFactor: 1.5,
    initial: [1],
    script,
    durationMs: quick ? s(17) : s(35),
    startOffsetMs: 500,
    bucketMs: 250,
    pollMs: 100,
    envoyPollMs: 250,
    healthTimeoutMs: 500,
    envoyTimeoutMs: 250,
    shutdownDelayMs: 2000,
    requestTimeoutMs: 2000,
    panicCheck: { rate: 100, durationMs: quick ? 1500 : 3000 },
    hardLimitMs: quick ? 180_000 : 300_000,
  };
}

/** How many address slots the script uses: the bootstrap lists them all. */
const slotCount = (p: Params): number => Math.max(...p.initial, ...p.script.map((x) => ('replica' in x ? x.replica : 0)));

function stepLabel(x: Step): string {
  switch (x.action) {
    case 'add':
      return `+ replica ${x.replica}`;
    case 'stop':
      return `replica ${x.replica} stopped (SIGTERM)`;
    case 'kill':
      return `replica ${x.replica} killed (SIGKILL)`;
    case 'freeze':
      return 'etcd frozen (SIGSTOP)';
    case 'thaw':
      return 'etcd thawed (SIGCONT)';
  }
}

/** Short labels for the chart's event markers. */
function stepMarker(x: Step): string {
  switch (x.action) {
    case 'add':
      return `+r${x.replica}`;
    case 'stop':
      return `SIGTERM r${x.replica}`;
    case 'kill':
      return `SIGKILL r${x.replica}`;
    case 'freeze':
      return 'etcd frozen';
    case 'thaw':
      return 'etcd thawed';
  }
}

/** Which replicas the script means to be running after each step (index 0: at the start). */
function plannedLive(p: Params): number[][] {
  const live = new Set(p.initial);
  const out = [[...live].sort()];
  for (const x of p.script) {
    if (x.action === 'add') live.add(x.replica);
    if (x.action === 'stop' || x.action === 'kill') live.delete(x.replica);
    out.push([...live].sort());
  }
  return out;
}

// ---- results --------------------------------------------------------------------------------------

/**
 * What a replica address's gRPC health said: serving (breaker closed), degraded (SERVING but
 * middlebox.etcd NOT_SERVING: deciding from local state), not-serving ("" NOT_SERVING: starting or
 * draining), no-answer (no answer within the deadline), down (nothing listens: connection refused).
 */
type SlotState = 'serving' | 'degraded' | 'not-serving' | 'no-answer' | 'down';

interface Poll {
  replica: number;
  /** Seconds from the load's start to the answer. */
  t: number;
  state: SlotState;
}

interface EnvoyPoll {
  t: number;
  /** Endpoints of the middlebox cluster Envoy calls healthy. */
  healthy: number;
  /** Per replica slot: Envoy's health flags and its request counters for that endpoint. */
  hosts: Array<{ replica: number; healthy: boolean; flags: string; rqTotal: number; rqError: number }>;
}

interface EventRecord {
  action: Step['action'];
  replica?: number;
  label: string;
  /** Seconds from the load's start when the bench acted. */
  t: number;
  /** add: first SERVING poll; stop: first poll that was not SERVING; freeze: every running replica degraded; thaw: every one closed again (s). */
  healthAt: number | null;
  /** stop / kill: when the process had exited (s). */
  exitedAt: number | null;
  exit?: { code: number | null; signal: string | null };
  /** add: Envoy first calls the endpoint healthy; stop / kill: Envoy first stops calling it healthy (s). */
  envoyAt: number | null;
  /** admitted ÷ limit in the 1 s window the event fell in, and etcd's count for that window. */
  windowPerLimit: number | null;
  windowEtcdCount: number | null;
  /** Responses that arrived between this event and the next (or the end): failed ones (not 200/429), and all. */
  failedUntilNext: number;
  responsesUntilNext: number;
  /** stop / kill: the same from the step until Envoy took the endpoint out (plus its ext_authz deadline); null if it never did. */
  failedUntilEnvoy: number | null;
  responsesUntilEnvoy: number | null;
  error?: string;
}

/** One bucket of the timeline, [t, t + bucketMs) by response arrival time. */
interface Bucket {
  t: number;
  sent: number;
  admitted: number;
  limited: number;
  failed: number;
  admittedPerS: number;
  limitedPerS: number;
  failedPerS: number;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  /** Per replica slot: its state in the bucket (degraded if any poll in it said so, else the last poll's). */
  replicas: Array<SlotState | 'unknown'>;
  /** Replicas whose health of "" said SERVING (breaker closed or not) at the bucket's last poll. */
  live: number;
  /** Envoy's healthy endpoints at its last poll in (or before) the bucket. */
  envoyHealthy: number | null;
}

/** One epoch-aligned 1 s rate-limit window, by response arrival time. */
interface WindowRow {
  window: number;
  /** Seconds from the load's start to the window's start. */
  t: number;
  /** Lies entirely inside the load. */
  whole: boolean;
  /** The segment the window lies in entirely; null when an event falls inside it. */
  segment: number | null;
  sent: number;
  admitted: number;
  limited: number;
  failed: number;
  /** Admitted responses that arrived in this window but were sent in the one before. */
  straddling: number;
  /** The largest count etcd's bucket held for this window (strict: granted; leased: granted to pools). */
  etcdCount: number;
  etcdWrites: number;
}

/** The stretch between two events. */
interface Segment {
  label: string;
  from: number;
  to: number;
  /** Replicas the script means to be running. */
  planned: number[];
  /** Smallest and largest number of replicas answering SERVING, and of Envoy's healthy endpoints, over the segment's buckets. */
  live: [number, number];
  envoyHealthy: [number, number] | null;
  /** Whole windows inside the segment: admitted ÷ limit, mean and largest; etcd's largest count ÷ limit. */
  windows: number;
  admittedPerLimitMean: number | null;
  admittedPerLimitMax: number | null;
  etcdCountPerLimitMax: number | null;
  responses: number;
  failed: number;
  p99Ms: number | null;
  worstBucketP99Ms: number | null;
  /** Replicas that reported degraded (breaker not closed) at some poll in the segment. */
  degraded: number[];
}

interface ReplicaLog {
  replica: number;
  /** Breaker transitions the replica logged (s from the load's start). */
  transitions: Array<{ t: number; state: string }>;
  tokensWrittenBack: number;
  warnings: Record<string, number>;
}


interface ModeResult {
  consistency: Consistency;
  offeredRps: number;
  /** Replica address per slot (slot 1 first). */
  addresses: string[];
  loadEndedAt: number;
  events: EventRecord[];
  segments: Segment[];
  buckets: Bucket[];
  windows: WindowRow[];
  polls: Poll[];
  envoyPolls: EnvoyPoll[];
  requests: number;
  failed: number;
  statuses: Record<string, number>;
  /** Envoy's ext_authz counters over the run. */
  envoyExtAuthz: Record<string, number>;
  replicaLogs: ReplicaLog[];
  etcdWrites: BucketWrite[];
  etcdWatchComplete: boolean;
  loadAverage: { before: number[]; after: number[] };
  othersCpuPct: number | null;
  othersCpuPctPerSecond: Array<number | null>;
  /** What the bench found notable in the numbers (also in the Markdown). */
  observations: string[];
  durationMs: number;
  error?: string;
}

/** Envoy with the product's bootstrap as rendered (panic threshold 0), one endpoint of N healthy. */
interface PanicCheck {
  endpoints: number;
  healthy: number;
  rate: number;
  requests: number;
  failed: number;
  statuses: Record<string, number>;
  error?: string;
}

// ---- helpers ----------------------------------------------------------------------------------------



function countStatuses(samples: Sample[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of samples) out[String(s.status)] = (out[String(s.status)] ?? 0) + 1;
  return out;
}

/**
 * gRPC health of one replica address, whether or not a replica runs there. Its own channel with a short
 * reconnect backoff: grpc-js backs off up to minutes after refused connections, which would report a
 * replica that has just started as down for seconds.
 */
class HealthProbe {
  private readonly client: grpc.Client & { Check: Function };

  constructor(readonly address: string) {
    const Ctor = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
    this.client = new Ctor(address, grpc.credentials.createInsecure(), {
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 200,
    }) as never;
  }

  private check(service: string, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      this.client.Check({ service }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: { status: number | string }) => {
        if (err) return reject(err);
        const names: Record<number, string> = { 0: 'UNKNOWN', 1: 'SERVING', 2: 'NOT_SERVING', 3: 'SERVICE_UNKNOWN' };
        resolve(typeof res.status === 'number' ? (names[res.status] ?? String(res.status)) : res.status);
      });
    });
  }

  async state(timeoutMs: number): Promise<SlotState> {
    const [server, etcd] = await Promise.allSettled([this.check('', timeoutMs), this.check('middlebox.etcd', timeoutMs)]);
    if (server.status === 'rejected') return (server.reason as grpc.ServiceError).code === grpc.status.UNAVAILABLE ? 'down' : 'no-answer';
    if (server.value !== 'SERVING') return 'not-serving';
    if (etcd.status === 'rejected') return 'no-answer';
    return etcd.value === 'SERVING' ? 'serving' : 'degraded';
  }

  close(): void {
    this.client.close();
  }
}

/** Polls every replica address's health every pollMs until stopped. */
class HealthPoller {
  readonly polls: Poll[] = [];
  private readonly last: SlotState[];
  private readonly probes: HealthProbe[];
  private stopped = false;
  private readonly loops: Array<Promise<void>>;

  constructor(
    addresses: string[],
    private readonly p: Params,
    private readonly t0: number,
    private readonly onChange: (replica: number, state: SlotState, t: number) => void,
  ) {
    this.last = addresses.map(() => 'down');
    this.probes = addresses.map((a) => new HealthProbe(a));
    this.loops = addresses.map((_, i) => this.loop(i));
  }

  state(replica: number): SlotState {
    return this.last[replica - 1]!;
  }

  private async loop(i: number): Promise<void> {
    let next = Date.now();
    while (!this.stopped) {
      let state: SlotState;
      try {
        state = await this.probes[i]!.state(this.p.healthTimeoutMs);
      } catch {
        state = 'no-answer';
      }
      const t = (Date.now() - this.t0) / 1000;
      this.polls.push({ replica: i + 1, t: round(t), state });
      if (state !== this.last[i]) {
        this.last[i] = state;
        this.onChange(i + 1, state, t);
      }
      next = Math.max(next + this.p.pollMs, Date.now());
      await sleep(next - Date.now());
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
    for (const probe of this.probes) probe.close();
  }
}

/** Envoy's view of the middlebox cluster, from its admin /clusters, every envoyPollMs. */
class EnvoyPoller {
  readonly polls: EnvoyPoll[] = [];
  errors = 0;
  private stopped = false;
  private readonly loopDone: Promise<void>;
  private lastHealthy: boolean[];

  constructor(
    private readonly envoy: EnvoyProcess,
    private readonly addresses: string[],
    private readonly p: Params,
    private readonly t0: number,
    private readonly onChange: (replica: number, healthy: boolean, t: number) => void,
  ) {
    this.lastHealthy = addresses.map(() => false);
    this.loopDone = this.loop();
  }

  healthyCount(): number {
    return this.lastHealthy.filter(Boolean).length;
  }

  private async loop(): Promise<void> {
    let next = Date.now();
    while (!this.stopped) {
      try {
        const poll = parseClusters(await this.envoy.admin('/clusters'), this.addresses);
        const t = round((Date.now() - this.t0) / 1000);
        this.polls.push({ t, ...poll });
        for (const h of poll.hosts) {
          if (h.healthy !== this.lastHealthy[h.replica - 1]) {
            this.lastHealthy[h.replica - 1] = h.healthy;
            this.onChange(h.replica, h.healthy, t);
          }
        }
      } catch {
        this.errors += 1;
      }
      next = Math.max(next + this.p.envoyPollMs, Date.now());
      await sleep(next - Date.now());
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loopDone;
  }
}

/** The middlebox cluster's endpoints in Envoy's admin /clusters text: "middlebox::host:port::name::value". */
export function parseClusters(text: string, addresses: string[]): Omit<EnvoyPoll, 't'> {
  const hosts = addresses.map((_, i) => ({ replica: i + 1, healthy: false, flags: '?', rqTotal: 0, rqError: 0 }));
  const prefix = `${CLUSTERS.middlebox}::`;
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix)) continue;
    const m = /^(.+)::(health_flags|rq_total|rq_error)::(.*)$/.exec(line.slice(prefix.length));
    if (!m) continue;
    const i = addresses.indexOf(m[1]!);
    if (i < 0) continue;
    const h = hosts[i]!;
    if (m[2] === 'health_flags') {
      h.flags = m[3]!;
      h.healthy = m[3] === 'healthy';
    } else if (m[2] === 'rq_total') h.rqTotal = Number(m[3]);
    else h.rqError = Number(m[3]);
  }
  return { healthy: hosts.filter((h) => h.healthy).length, hosts };
}


/** Breaker transitions, tokens written back and warnings from a replica's JSON log (lines after t0). */
function readReplicaLog(replica: number, file: string, t0: number): ReplicaLog {
  const out: ReplicaLog = { replica, transitions: [], tokensWrittenBack: 0, warnings: {} };
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    let entry: { time?: number; level?: number; msg?: string; state?: string; tokens?: number };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue;
    }
    if (typeof entry.time !== 'number' || entry.time < t0) continue;
    const t = round((entry.time - t0) / 1000);
    if (entry.msg?.startsWith('etcd breaker ') && entry.state) out.transitions.push({ t, state: entry.state });
    if (entry.msg === 'local rate-limit consumption written back to etcd') out.tokensWrittenBack += entry.tokens ?? 0;
    if ((entry.level ?? 0) >= 40 && entry.msg) out.warnings[entry.msg] = (out.warnings[entry.msg] ?? 0) + 1;
  }
  return out;
}





/**
 * The product's bootstrap for one Envoy in front of every replica address, exactly as `middlebox envoy
 * bootstrap` renders it (healthy_panic_threshold 0 on the replica clusters included).
 */
function envoyConfig(opts: BootstrapOptions): string {
  return stringify(renderBootstrap(opts), { aliasDuplicateObjects: false, lineWidth: 0 });
}

// ---- the timeline's tables ---------------------------------------------------------------------------

function bucketRows(p: Params, slots: number, samples: Sample[], polls: Poll[], envoyPolls: EnvoyPoll[], t0: number, endMs: number): Bucket[] {
  const n = Math.ceil(endMs / p.bucketMs);
  const rows = Array.from({ length: n }, (_, i) => ({
    t: round((i * p.bucketMs) / 1000),
    sent: 0,
    admitted: 0,
    limited: 0,
    failed: 0,
    latencies: [] as number[],
  }));
  const rowOf = (at: number) => rows[Math.floor((at - t0) / p.bucketMs)];
  for (const s of samples) {
    const sentRow = rowOf(Number.isNaN(s.sent) ? s.at : s.sent);
    if (sentRow) sentRow.sent += 1;
    const row = rowOf(s.at);
    if (!row) continue;
    if (s.status === 200) row.admitted += 1;
    else if (s.status === 429) row.limited += 1;
    else row.failed += 1;
    if (!Number.isNaN(s.sent)) row.latencies.push(latencyOf(s));
  }
  const perS = 1000 / p.bucketMs;
  const lastKnown: Array<SlotState | 'unknown'> = Array.from({ length: slots }, () => 'unknown');
  let envoyIdx = -1;
  return rows.map((row) => {
    const end = row.t + p.bucketMs / 1000;
    const replicas: Array<SlotState | 'unknown'> = [];
    let live = 0;
    for (let r = 1; r <= slots; r++) {
      const inBucket = polls.filter((x) => x.replica === r && x.t >= row.t && x.t < end);
      const last = inBucket[inBucket.length - 1];
      if (last) lastKnown[r - 1] = last.state;
      const shown = inBucket.some((x) => x.state === 'degraded') ? 'degraded' : lastKnown[r - 1]!;
      replicas.push(shown);
      if (lastKnown[r - 1] === 'serving' || lastKnown[r - 1] === 'degraded') live += 1;
    }
    while (envoyIdx + 1 < envoyPolls.length && envoyPolls[envoyIdx + 1]!.t < end) envoyIdx += 1;
    const sorted = row.latencies.sort((a, b) => a - b);
    return {
      t: row.t,
      sent: row.sent,
      admitted: row.admitted,
      limited: row.limited,
      failed: row.failed,
      admittedPerS: row.admitted * perS,
      limitedPerS: row.limited * perS,
      failedPerS: row.failed * perS,
      p50Ms: percentile(sorted, 50),
      p99Ms: percentile(sorted, 99),
      maxMs: sorted.length ? sorted[sorted.length - 1]! : null,
      replicas,
      live,
      envoyHealthy: envoyIdx >= 0 ? envoyPolls[envoyIdx]!.healthy : null,
    };
  });
}

/** Segment boundaries in seconds from the load's start: 0, every step, the end. */
function boundaries(p: Params): number[] {
  return [0, ...p.script.map((x) => x.atMs / 1000), p.durationMs / 1000];
}

function windowRows(p: Params, samples: Sample[], writes: BucketWrite[], t0: number, loadEnd: number): WindowRow[] {
  const bounds = boundaries(p);
  const first = windowOf(t0);
  const last = windowOf(loadEnd);
  const rows: WindowRow[] = [];
  for (let w = first; w <= last; w++) {
    const from = (w * WINDOW_MS - t0) / 1000;
    const to = from + WINDOW_MS / 1000;
    let segment: number | null = null;
    for (let i = 0; i + 1 < bounds.length; i++) if (from >= bounds[i]! && to <= bounds[i + 1]!) segment = i;
    rows.push({
      window: w,
      t: round(from),
      whole: w * WINDOW_MS >= t0 && (w + 1) * WINDOW_MS <= loadEnd,
      segment,
      sent: 0,
      admitted: 0,
      limited: 0,
      failed: 0,
      straddling: 0,
      etcdCount: 0,
      etcdWrites: 0,
    });
  }
  const rowOf = (at: number) => rows[windowOf(at) - first];
  for (const s of samples) {
    const sentRow = rowOf(Number.isNaN(s.sent) ? s.at : s.sent);
    if (sentRow) sentRow.sent += 1;
    const row = rowOf(s.at);
    if (!row) continue;
    if (s.status === 200) {
      row.admitted += 1;
      if (!Number.isNaN(s.sent) && windowOf(s.sent) !== row.window) row.straddling += 1;
    } else if (s.status === 429) row.limited += 1;
    else row.failed += 1;
  }
  for (const write of writes) {
    const row = rows[write.w - first];
    if (!row) continue;
    row.etcdWrites += 1;
    row.etcdCount = Math.max(row.etcdCount, write.c);
  }
  return rows;
}

function segmentRows(p: Params, samples: Sample[], t0: number, buckets: Bucket[], windows: WindowRow[], polls: Poll[]): Segment[] {
  const bounds = boundaries(p);
  const planned = plannedLive(p);
  const labels = ['start', ...p.script.map(stepLabel)];
  const out: Segment[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const from = bounds[i]!;
    const to = bounds[i + 1]!;
    const inSeg = samples.filter((s) => s.at >= t0 + from * 1000 && s.at < t0 + to * 1000);
    const lat = inSeg.filter((s) => !Number.isNaN(s.sent)).map(latencyOf).sort((a, b) => a - b);
    const rows = buckets.filter((b) => b.t >= from - 1e-9 && b.t < to - 1e-9);
    const envoy = rows.map((b) => b.envoyHealthy).filter((x): x is number => x !== null);
    const ws = windows.filter((w) => w.segment === i && w.whole);
    const ratios = ws.map((w) => w.admitted / p.limit);
    const p99s = rows.map((b) => b.p99Ms).filter((x): x is number => x !== null);
    const degraded = [...new Set(polls.filter((x) => x.t >= from && x.t < to && x.state === 'degraded').map((x) => x.replica))].sort();
    out.push({
      label: labels[i]!,
      from,
      to,
      planned: planned[i]!,
      live: rows.length ? [Math.min(...rows.map((b) => b.live)), Math.max(...rows.map((b) => b.live))] : [0, 0],
      envoyHealthy: envoy.length ? [Math.min(...envoy), Math.max(...envoy)] : null,
      windows: ws.length,
      admittedPerLimitMean: ratios.length ? round(ratios.reduce((a, b) => a + b, 0) / ratios.length) : null,
      admittedPerLimitMax: ratios.length ? round(Math.max(...ratios)) : null,
      etcdCountPerLimitMax: ws.length ? round(Math.max(...ws.map((w) => w.etcdCount)) / p.limit) : null,
      responses: inSeg.length,
      failed: inSeg.filter(isFailure).length,
      p99Ms: percentile(lat, 99),
      worstBucketP99Ms: p99s.length ? Math.max(...p99s) : null,
      degraded,
    });
  }
  return out;
}

/** Fills in, from the polls, when each event showed in health and in Envoy's view, and what followed it. */
/** Replicas whose last health poll before t said SERVING ("" SERVING, breaker closed or not). */
function answeringAt(polls: Poll[], t: number): number[] {
  const last = new Map<number, SlotState>();
  for (const x of polls) if (x.t < t) last.set(x.replica, x.state);
  return [...last].filter(([, state]) => state === 'serving' || state === 'degraded').map(([rep]) => rep).sort();
}

function completeEvents(p: Params, events: EventRecord[], polls: Poll[], envoyPolls: EnvoyPoll[], samples: Sample[], windows: WindowRow[], t0: number, endS: number): void {
  for (const [i, ev] of events.entries()) {
    const r = ev.replica;
    const mine = r === undefined ? [] : polls.filter((x) => x.replica === r && x.t >= ev.t);
    const envoyHost = (poll: EnvoyPoll) => poll.hosts.find((h) => h.replica === r);
    const laterEnvoy = envoyPolls.filter((x) => x.t >= ev.t);
    if (ev.action === 'add') {
      ev.healthAt = mine.find((x) => x.state === 'serving' || x.state === 'degraded')?.t ?? null;
      ev.envoyAt = laterEnvoy.find((x) => envoyHost(x)?.healthy)?.t ?? null;
    } else if (ev.action === 'stop' || ev.action === 'kill') {
      ev.healthAt = mine.find((x) => x.state !== 'serving' && x.state !== 'degraded')?.t ?? null;
      ev.envoyAt = laterEnvoy.find((x) => !envoyHost(x)?.healthy)?.t ?? null;
    } else {
      // freeze: every replica answering then reports degraded; thaw: every one serving again.
      const running = answeringAt(polls, ev.t);
      const want: SlotState = ev.action === 'freeze' ? 'degraded' : 'serving';
      const firsts = running.map((rep) => polls.find((x) => x.replica === rep && x.t >= ev.t && x.state === want)?.t ?? null);
      ev.healthAt = firsts.length && firsts.every((x) => x !== null) ? Math.max(...(firsts as number[])) : null;
    }
    const next = events[i + 1]?.t ?? endS;
    const after = samples.filter((s) => s.at >= t0 + ev.t * 1000 && s.at < t0 + next * 1000);
    ev.responsesUntilNext = after.length;
    ev.failedUntilNext = after.filter(isFailure).length;
    if ((ev.action === 'stop' || ev.action === 'kill') && ev.envoyAt !== null) {
      const until = t0 + (ev.envoyAt * 1000 + p.envoyTimeoutMs);
      const meanwhile = samples.filter((s) => s.at >= t0 + ev.t * 1000 && s.at < until);
      ev.responsesUntilEnvoy = meanwhile.length;
      ev.failedUntilEnvoy = meanwhile.filter(isFailure).length;
    }
    const w = windows.find((x) => x.t <= ev.t && ev.t < x.t + 1);
    ev.windowPerLimit = w ? round(w.admitted / p.limit) : null;
    ev.windowEtcdCount = w ? w.etcdCount : null;
  }
}

// ---- one run of the script ----------------------------------------------------------------------------

interface Lab {
  etcd: EtcdProcess;
  app: Upstream;
  envoy: EnvoyProcess;
  httpPort: number;
  addresses: string[];
  replicas: Array<MiddleboxProcess | undefined>;
  logDir: string;
}

async function startReplica(lab: Omit<Lab, 'envoy'>, p: Params, replica: number, wait: boolean): Promise<MiddleboxProcess> {
  const mb = await MiddleboxProcess.start({
    etcd: lab.etcd.endpoint,
    prefix: PREFIX,
    listen: lab.addresses[replica - 1],
    logFile: path.join(lab.logDir, `middlebox-${replica}.log`),
    // The product's defaults otherwise (etcd operation timeout, member TTL, drain): what a deployment runs.
    shutdownDelayMs: p.shutdownDelayMs,
    waitFor: wait ? 'SERVING' : false,
  });
  lab.replicas[replica - 1] = mb;
  return mb;
}

async function freeAddresses(n: number): Promise<string[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports].map((port) => `127.0.0.1:${port}`);
}

/** Envoy with the bootstrap as the product renders it, in front of the same addresses, one replica up. */
async function panicCheck(p: Params, lab: Lab): Promise<PanicCheck> {
  const port = await freePort();
  const adminPort = await freePort();
  const base: BootstrapOptions = {
    adminPort,
    inboundHttp: { address: '127.0.0.1', port, appAddress: '127.0.0.1', appPort: lab.app.port },
    middlebox: lab.addresses,
    timeoutMs: p.envoyTimeoutMs,
  };
  const result: PanicCheck = { endpoints: lab.addresses.length, healthy: 0, rate: p.panicCheck.rate, requests: 0, failed: 0, statuses: {} };
  let envoy: EnvoyProcess | undefined;
  try {
    envoy = await EnvoyProcess.start({ config: envoyConfig(base), adminPort, logFile: path.join(lab.logDir, 'envoy-panic-check.log') });
    const e = envoy;
    // Every endpoint checked at least once: the absent ones failed, the running one passed.
    await waitFor(async () => (await e.clusterHealthy(CLUSTERS.middlebox)) >= 1, { timeoutMs: 15_000, what: 'the panic-check Envoy to see a healthy replica' });
    await sleep(2500);
    result.healthy = await e.clusterHealthy(CLUSTERS.middlebox);
    const samples = await openLoop({ urls: [`http://127.0.0.1:${port}/panic-check`], rate: p.panicCheck.rate, durationMs: p.panicCheck.durationMs, timeoutMs: p.requestTimeoutMs });
    result.requests = samples.length;
    result.failed = samples.filter(isFailure).length;
    result.statuses = countStatuses(samples);
  } catch (err) {
    result.error = (err as Error).message.split('\n')[0];
  } finally {
    await envoy?.stop().catch(() => undefined);
  }
  return result;
}

async function runScript(p: Params, mode: Consistency, withPanicCheck: boolean): Promise<{ result: ModeResult; panic?: PanicCheck }> {
  const began = Date.now();
  const slots = slotCount(p);
  const result: ModeResult = {
    consistency: mode,
    offeredRps: p.limit * p.loadFactor,
    addresses: [],
    loadEndedAt: NaN,
    events: [],
    segments: [],
    buckets: [],
    windows: [],
    polls: [],
    envoyPolls: [],
    requests: 0,
    failed: 0,
    statuses: {},
    envoyExtAuthz: {},
    replicaLogs: [],
    etcdWrites: [],
    etcdWatchComplete: false,
    loadAverage: { before: os.loadavg().map((x) => round(x, 2)), after: [] },
    othersCpuPct: null,
    othersCpuPctPerSecond: [],
    observations: [],
    durationMs: 0,
  };
  let panic: PanicCheck | undefined;
  const logDir = makeTempDir('middlebox-scaling-');
  let etcd: EtcdProcess | undefined;
  let app: Upstream | undefined;
  let lab: Lab | undefined;
  // Every replica this run starts, whatever happens to the rest of the setup.
  const replicas: Array<MiddleboxProcess | undefined> = [];
  let client: Etcd3 | undefined;
  let bucketLog: BucketWriteLog | undefined;
  let poller: HealthPoller | undefined;
  let envoyPoller: EnvoyPoller | undefined;
  let frozen = false;
  const timers: NodeJS.Timeout[] = [];
  const pending: Array<Promise<unknown>> = [];
  try {
    etcd = await EtcdProcess.start({ logFile: path.join(logDir, 'etcd.log') });
    app = await startHttpUpstream({ name: 'app' });
    const addresses = await freeAddresses(slots);
    result.addresses = addresses;
    client = connectEtcd({ endpoints: [etcd.endpoint] });
    await putPolicies(client, PREFIX, policyDocs(mode, p.limit));
    const httpPort = await freePort();
    const adminPort = await freePort();
    const config = envoyConfig(
      {
        adminPort,
        inboundHttp: { address: '127.0.0.1', port: httpPort, appAddress: '127.0.0.1', appPort: app.port },
        middlebox: addresses,
        timeoutMs: p.envoyTimeoutMs,
      },
    );
    fs.writeFileSync(path.join(logDir, 'envoy.yaml'), config);
    const partial: Omit<Lab, 'envoy'> = { etcd, app, httpPort, addresses, replicas, logDir };
    for (const r of p.initial) await startReplica(partial, p, r, true);
    const envoy = await EnvoyProcess.start({ config, adminPort, logFile: path.join(logDir, 'envoy.log') });
    lab = { ...partial, envoy };
    const theLab = lab;
    log(`  etcd ${etcd.endpoint}; replica addresses ${addresses.join(' ')} (running: ${p.initial.join(', ')}); Envoy :${httpPort}`);
    await waitFor(async () => (await envoy.clusterHealthy(CLUSTERS.middlebox)) === p.initial.length, {
      timeoutMs: 15_000,
      what: `Envoy to see ${p.initial.length} healthy replica(s)`,
    });
    const url = `http://127.0.0.1:${httpPort}/bench`;
    await waitPolicyInForce(url, p.initial.length);
    await waitFor(async () => (await Promise.all(p.initial.map((r) => theLab.replicas[r - 1]!.health.check('middlebox.etcd', 1000)))).every((s) => s === 'SERVING'), {
      timeoutMs: 10_000,
      what: 'every replica to report middlebox.etcd SERVING',
    });
    if (withPanicCheck) {
      log(`  panic check: the product's bootstrap as rendered (panic threshold 0), ${p.initial.length} of ${slots} endpoints up, ${p.panicCheck.rate} req/s for ${p.panicCheck.durationMs / 1000} s`);
      panic = await panicCheck(p, lab);
      log(
        panic.error
          ? `    panic check failed: ${panic.error}`
          : `    ${panic.failed} of ${panic.requests} requests failed (${Object.entries(panic.statuses).map(([s, n]) => `${n} × ${s === '0' ? 'no response' : s}`).join(', ')}; Envoy saw ${panic.healthy} healthy of ${panic.endpoints})`,
      );
    }
    const statsBefore = await envoy.stats('ext_authz');
    const revisionBefore = await etcd.revision();
    const t0 = (windowOf(Date.now()) + 1) * WINDOW_MS + p.startOffsetMs;
    bucketLog = await BucketWriteLog.start(client, PREFIX, revisionBefore + 1, () => t0);
    await sleep(Math.max(0, t0 - Date.now()));
    const since = (at: number) => (at - t0) / 1000;
    const ts = (t: number) => `t=${t.toFixed(1).padStart(4)} s`;
    const stateText: Record<SlotState, string> = {
      serving: 'SERVING',
      degraded: 'degraded (middlebox.etcd NOT_SERVING: breaker not closed)',
      'not-serving': 'NOT_SERVING (starting or draining)',
      'no-answer': 'no answer to the health check',
      down: 'down (connection refused)',
    };
    poller = new HealthPoller(addresses, p, t0, (replica, state, t) => log(`    ${ts(t)}  replica ${replica}: ${stateText[state]}`));
    envoyPoller = new EnvoyPoller(envoy, addresses, p, t0, (replica, healthy, t) =>
      log(`    ${ts(t)}  Envoy: replica ${replica} ${healthy ? 'healthy' : 'no longer healthy'} (${envoyPoller?.healthyCount() ?? '?'} healthy endpoint(s))`),
    );

    // The script: every step on its own timer, none waits for another, the load goes on meanwhile.
    for (const step of p.script) {
      const ev: EventRecord = {
        action: step.action,
        replica: 'replica' in step ? step.replica : undefined,
        label: stepLabel(step),
        t: NaN,
        healthAt: null,
        exitedAt: null,
        envoyAt: null,
        windowPerLimit: null,
        windowEtcdCount: null,
        failedUntilNext: 0,
        responsesUntilNext: 0,
        failedUntilEnvoy: null,
        responsesUntilEnvoy: null,
      };
      result.events.push(ev);
      const act = async (): Promise<void> => {
        ev.t = round(since(Date.now()));
        log(`    ${ts(ev.t)}  ${ev.label}`);
        try {
          if (step.action === 'freeze') {
            await theLab.etcd.freeze();
            frozen = true;
          } else if (step.action === 'thaw') {
            theLab.etcd.thaw();
            frozen = false;
          } else if (!('replica' in step)) {
            throw new Error(`unknown step ${JSON.stringify(step)}`);
          } else if (step.action === 'add') {
            await startReplica(theLab, p, step.replica, false);
          } else {
            const mb = theLab.replicas[step.replica - 1];
            if (!mb) throw new Error(`replica ${step.replica} is not running`);
            const exited = mb.exited.then((x) => {
              ev.exitedAt = round(since(Date.now()));
              ev.exit = { code: x.code, signal: x.signal };
              log(`    ${ts(ev.exitedAt)}  replica ${step.replica} exited (code ${x.code}, signal ${x.signal}), ${(ev.exitedAt - ev.t).toFixed(2)} s after the ${step.action === 'kill' ? 'SIGKILL' : 'SIGTERM'}`);
            });
            // SIGTERM: NOT_SERVING at once, answers on for the shutdown delay, drains, exits. SIGKILL: gone.
            if (step.action === 'stop') void mb.stop(20_000).catch(() => undefined);
            else void mb.kill().catch(() => undefined);
            await exited;
          }
        } catch (e) {
          ev.error = (e as Error).message.split('\n')[0];
          log(`    ${ts(since(Date.now()))}  ${ev.label} FAILED: ${ev.error}`);
        }
      };
      timers.push(setTimeout(() => pending.push(act()), Math.max(0, t0 + step.atMs - Date.now())));
    }

    // One progress line per second of load.
    const live: Sample[] = [];
    let second = 0;
    const cpuAtStart = cpuSnapshot();
    let cpuBefore = cpuAtStart;
    const progress = setInterval(() => {
      second += 1;
      const cpuNow = cpuSnapshot();
      const others = othersCpuPct(cpuBefore, cpuNow);
      cpuBefore = cpuNow;
      result.othersCpuPctPerSecond.push(others);
      const from = t0 + (second - 1) * 1000;
      const inSecond = live.filter((s) => s.at >= from && s.at < from + 1000);
      const count = (f: (s: Sample) => boolean) => inSecond.filter(f).length;
      const lat = inSecond.filter((s) => !Number.isNaN(s.sent)).map(latencyOf).sort((a, b) => a - b);
      const states = addresses.map((_, i) => poller!.state(i + 1));
      const up = states.map((s, i) => (s === 'serving' ? `${i + 1}` : s === 'degraded' ? `${i + 1}(degraded)` : s === 'not-serving' ? `${i + 1}(not serving)` : '')).filter(Boolean);
      log(
        `    ${ts(second)}  200: ${String(count((s) => s.status === 200)).padStart(3)}/s  429: ${String(count((s) => s.status === 429)).padStart(3)}/s  ` +
          `failed: ${count(isFailure)}  p99 ${percentile(lat, 99) ?? '–'} ms  replicas up: ${up.join(' ') || 'none'}  Envoy healthy: ${envoyPoller!.healthyCount()}  ` +
          `other processes' CPU ${others === null ? '?' : `${others}%`}${frozen ? '  (etcd frozen)' : ''}`,
      );
    }, 1000);
    timers.push(progress);
    log(`  ${result.offeredRps} req/s open loop for ${p.durationMs / 1000} s; script: ${p.script.map((x) => `t=${x.atMs / 1000} ${stepMarker(x)}`).join(', ')}`);
    let samples: Sample[];
    try {
      samples = await openLoop({ urls: [url], rate: result.offeredRps, durationMs: p.durationMs, timeoutMs: p.requestTimeoutMs, onSample: (s) => live.push(s) });
    } finally {
      clearInterval(progress);
    }
    const loadEnd = Date.now();
    result.othersCpuPct = othersCpuPct(cpuAtStart, cpuSnapshot());
    // Steps still under way (a replica's exit) get a bounded while to finish.
    await Promise.race([Promise.all(pending), sleep(15_000)]);
    await poller.stop();
    await envoyPoller.stop();
    await sleep(200); // the replicas' last log lines reach their files
    result.envoyExtAuthz = statsDelta(statsBefore, await envoy.stats('ext_authz'));
    result.loadAverage.after = os.loadavg().map((x) => round(x, 2));
    if (frozen) {
      etcd.thaw();
      frozen = false;
    }
    const revisionAfter = await etcd.revision();
    result.etcdWatchComplete = revisionAfter <= revisionBefore || (await bucketLog.caughtUp(revisionAfter, 5000));
    result.etcdWrites = bucketLog.writes;

    const endMs = Math.max(loadEnd, ...samples.map((s) => s.at)) - t0;
    result.loadEndedAt = round(since(loadEnd));
    result.polls = poller.polls;
    result.envoyPolls = envoyPoller.polls;
    result.buckets = bucketRows(p, slots, samples, result.polls, result.envoyPolls, t0, endMs);
    result.windows = windowRows(p, samples, result.etcdWrites, t0, loadEnd);
    result.segments = segmentRows(p, samples, t0, result.buckets, result.windows, result.polls);
    completeEvents(p, result.events, result.polls, result.envoyPolls, samples, result.windows, t0, result.loadEndedAt);
    result.requests = samples.length;
    result.failed = samples.filter(isFailure).length;
    result.statuses = countStatuses(samples);
    result.replicaLogs = addresses.map((_, i) => readReplicaLog(i + 1, path.join(logDir, `middlebox-${i + 1}.log`), t0));
    if (envoyPoller.errors > 0) result.observations.push(`${envoyPoller.errors} polls of Envoy's admin /clusters failed`);
  } catch (e) {
    result.error = (e as Error).message;
    const tails = replicas.map((r, i) => (r ? `--- middlebox ${i + 1}\n${r.output().split('\n').slice(-15).join('\n')}` : '')).filter(Boolean);
    if (tails.length) result.error += `\n${tails.join('\n')}`;
  } finally {
    for (const t of timers) clearTimeout(t);
    if (frozen) etcd?.thaw();
    await poller?.stop();
    await envoyPoller?.stop();
    if (bucketLog) await Promise.race([bucketLog.stop(), sleep(2000)]);
    client?.close();
    await lab?.envoy.stop().catch(() => undefined);
    // The measurement is over: no need to wait out the replicas' shutdown delay.
    await Promise.all(replicas.map((r) => r?.kill().catch(() => undefined)));
    await app?.close().catch(() => undefined);
    await etcd?.stop().catch(() => undefined);
    removeTempDir(logDir);
  }
  result.observations.unshift(...observations(p, result));
  result.durationMs = Date.now() - began;
  return { result, panic };
}

// ---- the report -------------------------------------------------------------------------------------


/** "+0.62 s" after `from`, or "never". */
const after = (at: number | null, from: number): string => (at === null ? 'never' : `+${(at - from).toFixed(2)} s`);

const statusText = (statuses: Record<string, number>): string =>
  Object.entries(statuses)
    .filter(([s]) => s !== '200' && s !== '429')
    .map(([s, n]) => `${n} × ${s === '0' ? 'no response' : s}`)
    .join(', ');

/**
 * Replicas in etcd's membership at t, approximately: SERVING before t (a replica joins as it loads its
 * policies), and neither shut down (SIGTERM: it leaves at the end) nor dead for longer than the lease TTL.
 */
function memberCount(p: Params, r: ModeResult, t: number): number {
  let n = 0;
  for (let rep = 1; rep <= slotCount(p); rep++) {
    const added = p.initial.includes(rep) ? 0 : r.events.find((e) => e.action === 'add' && e.replica === rep)?.healthAt;
    if (added === undefined || added === null || added > t) continue;
    const gone = r.events.find((e) => (e.action === 'stop' || e.action === 'kill') && e.replica === rep && e.t <= t);
    if (!gone) n += 1;
    else if (gone.action === 'stop' && (gone.exitedAt === null || gone.exitedAt > t)) n += 1;
    else if (gone.action === 'kill' && gone.t + DEFAULT_MEMBER_TTL_S > t) n += 1;
  }
  return n;
}

/** Things a reader should not miss, found in the numbers. */
function observations(p: Params, r: ModeResult): string[] {
  if (r.error) return [`the run failed: ${r.error.split('\n')[0]}`];
  const out: string[] = [];
  if (r.othersCpuPct !== null && r.othersCpuPct > 10) {
    const busy = r.othersCpuPctPerSecond.map((x, i) => [i + 1, x] as const).filter(([, x]) => x !== null && x > 20).map(([t]) => t);
    out.push(`DISTURBED: other processes used ${r.othersCpuPct} % of the machine during the load${busy.length ? ` (over 20 % in the seconds ending at t = ${busy.join(', ')} s)` : ''}`);
  }
  if (r.failed > 0) {
    const byEvent = r.events.filter((e) => e.failedUntilNext > 0).map((e) => `${e.failedUntilNext} after "${e.label}" (t=${fmt(e.t, 1)} s)`);
    const before = r.segments[0]?.failed ?? 0;
    out.push(`${r.failed} of ${r.requests} requests failed (${statusText(r.statuses)}): ${[...(before ? [`${before} before the first event`] : []), ...byEvent].join(', ')}`);
  }
  for (const e of r.events) {
    if (e.error) out.push(`"${e.label}" failed: ${e.error}`);
    if (e.action === 'kill' && e.failedUntilNext > 0) {
      const failedTs = r.buckets.filter((b) => b.failed > 0 && b.t >= e.t);
      const last = failedTs[failedTs.length - 1];
      const inWindow = e.failedUntilEnvoy;
      const answered = e.responsesUntilEnvoy;
      out.push(
        `SIGKILL of replica ${e.replica}: ${e.failedUntilNext} requests failed, the last in the bucket at t=${fmt(last?.t ?? null, 2)} s; ` +
          `Envoy kept calling the endpoint healthy until ${after(e.envoyAt, e.t)} after the kill (gRPC health checks every 1 s, unhealthy after 2 failures; calls that could not reach it are retried on another replica and outlier detection ejects it, within the same 250 ms deadline), ` +
          `and a call that neither a retry nor its deadline could save failed closed (403)` +
          (inWindow !== null && answered ? ` (${inWindow} of the ${answered} responses from the kill until then + ${p.envoyTimeoutMs} ms, ${Math.round((100 * inWindow) / answered)} %)` : ''),
      );
    }
    if (e.action === 'stop') {
      const removedBeforeExit = e.envoyAt !== null && e.exitedAt !== null && e.envoyAt <= e.exitedAt;
      out.push(
        `SIGTERM of replica ${e.replica}: NOT_SERVING ${after(e.healthAt, e.t)}, out of Envoy's rotation ${after(e.envoyAt, e.t)}, exited ${after(e.exitedAt, e.t)}` +
          `${removedBeforeExit ? '' : ' (Envoy still called it healthy when it exited)'}; ${e.failedUntilNext} failed until the next event`,
      );
      // A replica leaves etcd's membership at the end of its shutdown: a frozen etcd holds that up.
      const freeze = r.events.find((x) => x.action === 'freeze' && x.t > e.t && (e.exitedAt === null || x.t < e.exitedAt));
      const thaw = freeze && r.events.find((x) => x.action === 'thaw' && x.t > freeze.t);
      if (freeze && thaw && e.exitedAt !== null && e.exitedAt >= thaw.t && e.exitedAt - thaw.t < 1) {
        out.push(
          `replica ${e.replica}'s shutdown was still going when etcd froze and ended only ${(e.exitedAt - thaw.t).toFixed(2)} s after the thaw: ` +
            `its last step (leaving etcd's membership) waited for etcd, so the others kept counting it as a member`,
        );
      }
    }
    if (e.action === 'add') {
      out.push(`replica ${e.replica} added: SERVING ${after(e.healthAt, e.t)} after its start, healthy in Envoy ${after(e.envoyAt, e.t)}`);
    }
    if (e.action === 'freeze' || e.action === 'thaw') {
      out.push(`${e.label}: every running replica ${e.action === 'freeze' ? 'degraded' : 'SERVING again'} ${after(e.healthAt, e.t)}`);
    }
    if (e.action === 'freeze') {
      // While etcd is frozen each replica admits limit ÷ the members it last counted. A replica counts
      // as a member from its start until its shutdown ends (SIGTERM) or its lease expires (SIGKILL).
      const thaw = r.events.find((x) => x.action === 'thaw' && x.t > e.t);
      const members = memberCount(p, r, e.t);
      const serving = answeringAt(r.polls, e.t).length;
      const frozen = r.windows.filter((w) => w.whole && w.t >= e.t && thaw && w.t + 1 <= thaw.t);
      const mean = frozen.length ? frozen.reduce((a, w) => a + w.admitted, 0) / frozen.length / p.limit : null;
      if (members > 0 && serving > 0) {
        out.push(
          `when etcd froze ${serving} replica(s) answered and ${members} counted as members in etcd's membership, so each admitted limit ÷ ${members} while it was frozen: ` +
            `expected about ${(serving / members).toFixed(3)} of the limit${mean === null ? '' : `, measured ${mean.toFixed(3)} (mean of ${frozen.length} whole window(s))`}`,
        );
      }
    }
  }
  // Breakers that opened with no etcd fault: etcd answered slower than the operation timeout.
  const freeze = r.events.find((x) => x.action === 'freeze');
  const thaw = r.events.find((x) => x.action === 'thaw');
  const outside = r.polls.filter((x) => x.state === 'degraded' && !(freeze && x.t >= freeze.t && x.t <= (thaw ? thaw.t + 3 : Infinity)));
  if (outside.length > 0) {
    const first = new Map<number, number>();
    for (const x of outside) if (!first.has(x.replica)) first.set(x.replica, x.t);
    out.push(
      `breakers opened with etcd running (an etcd operation slower than ${DEFAULT_BREAKER.timeoutMs} ms: a busy machine), first at ` +
        `${[...first].map(([rep, t]) => `t=${t} s (replica ${rep})`).join(', ')}; a replica decides from local state while its breaker is open`,
    );
  }
  const over = r.windows.filter((w) => w.whole && w.admitted > p.limit);
  if (over.length > 0) {
    const where = (w: WindowRow) => {
      const ev = r.events.find((e) => w.t <= e.t && e.t < w.t + 1);
      const degraded = [...new Set(r.polls.filter((x) => x.t >= w.t && x.t < w.t + 1 && x.state === 'degraded').map((x) => x.replica))].sort();
      const text = ev ? `the window "${ev.label}" fell in` : w.segment !== null ? `during "${r.segments[w.segment]!.label}"` : '';
      return `${text}${degraded.length ? `; replica(s) ${degraded.join(', ')} degraded in it` : ''}`;
    };
    out.push(
      `admitted more than the limit (client side, by arrival) in ${over.length} window(s): ` +
        over.map((w) => `${w.admitted} at t=${w.t} s (${where(w)}${w.straddling ? `; ${w.straddling} sent in the window before` : ''})`).join(', '),
    );
  }
  const overEtcd = r.windows.filter((w) => w.etcdCount > p.limit);
  if (overEtcd.length > 0) out.push(`etcd's count for a window went over the limit: ${overEtcd.map((w) => `${w.etcdCount} for the window at t=${w.t} s`).join(', ')}`);
  const under = r.windows.filter((w) => w.whole && w.admitted < 0.9 * p.limit);
  if (under.length > 0) out.push(`admitted under 90 % of the limit in ${under.length} window(s): ${under.map((w) => `${w.admitted} at t=${w.t} s`).join(', ')}`);
  if (!r.etcdWatchComplete) out.push('the etcd watch did not deliver every write of the run: the etcd counts may be short');
  const noAnswer = r.polls.filter((x) => x.state === 'no-answer').length;
  if (noAnswer > 0) out.push(`${noAnswer} health checks got no answer within ${p.healthTimeoutMs} ms`);
  const slow = r.buckets.filter((b) => b.p99Ms !== null && b.p99Ms > 0.8 * p.envoyTimeoutMs);
  if (slow.length > 0) out.push(`a bucket's p99 came within 80 % of Envoy's ${p.envoyTimeoutMs} ms deadline ${slow.length} time(s), worst ${Math.max(...slow.map((b) => b.p99Ms!))} ms at t=${slow.reduce((a, b) => (b.p99Ms! > a.p99Ms! ? b : a)).t} s`);
  const errors = Object.entries(r.envoyExtAuthz).filter(([k, v]) => /ext_authz\.(error|failure_mode_allowed)$/.test(k) && v > 0);
  if (errors.length > 0) out.push(`Envoy: ${errors.map(([k, v]) => `${k} = ${v}`).join(', ')}`);
  const written = r.replicaLogs.filter((x) => x.tokensWrittenBack > 0);
  if (written.length > 0) out.push(`tokens admitted locally during the freeze and written back to etcd: ${written.map((x) => `replica ${x.replica} ${x.tokensWrittenBack}`).join(', ')}`);
  const warnings = new Map<string, number>();
  for (const l of r.replicaLogs) for (const [msg, n] of Object.entries(l.warnings)) warnings.set(msg, (warnings.get(msg) ?? 0) + n);
  const notable = [...warnings].filter(([msg]) => !msg.startsWith('etcd breaker open'));
  if (notable.length > 0) out.push(`replica warnings: ${notable.map(([msg, n]) => `${n} × "${msg}"`).join('; ')}`);
  return out;
}

function markdown(p: Params, results: ModeResult[], panic: PanicCheck | undefined, meta: Record<string, string>, code: CodeIdentity, svgName: string): string {
  const lines: string[] = [];
  const slots = slotCount(p);
  lines.push(`# Dynamic scaling${p.quick ? ' (quick: checks the bench, not a result)' : ''}`);
  lines.push('');
  lines.push(...metadataLines(meta));
  lines.push(
    `- code: ${describeCode(code)}; ` +
      `load average before each mode: ${results.map((r) => `${r.consistency} ${r.loadAverage.before.join(' ')}`).join(', ')} (${os.cpus().length} CPUs); ` +
      `CPU used by other processes during the load: ${results.map((r) => `${r.consistency} ${r.othersCpuPct ?? '?'} %`).join(', ')}`,
  );
  lines.push(
    `- one Envoy (ext_authz deadline ${p.envoyTimeoutMs} ms, fail closed) whose middlebox cluster lists all ${slots} replica addresses the run uses, with the product's gRPC health checks ` +
      `(every 1 s, unhealthy after 2 failures, healthy after 1) and healthy_panic_threshold 0 (see "Envoy's panic threshold" below); ` +
      `replicas with the product's defaults (shutdown delay ${p.shutdownDelayMs} ms, etcd operation timeout ${DEFAULT_BREAKER.timeoutMs} ms, member TTL ${DEFAULT_MEMBER_TTL_S} s)`,
  );
  lines.push(
    `- one global limit of ${p.limit} per 1 s, fixed window; open-loop load ${p.loadFactor} × the limit (${p.limit * p.loadFactor} req/s) for ${p.durationMs / 1000} s, starting ${p.startOffsetMs} ms into a window`,
  );
  lines.push(`- script: t=0 replica ${p.initial.join(', ')} running; ${p.script.map((x) => `t=${x.atMs / 1000} s ${stepLabel(x)}`).join('; ')}`);
  lines.push(
    `- every replica address's gRPC health (\`""\` and \`middlebox.etcd\`) asked every ${p.pollMs} ms, Envoy's admin /clusters every ${p.envoyPollMs} ms; timeline in ${p.bucketMs} ms buckets by response arrival`,
  );
  lines.push(`- chart: [${svgName}](${svgName}); every bucket, poll and window: the JSON beside this file`);
  lines.push('');
  for (const r of results) {
    lines.push(`## ${r.consistency}`);
    lines.push('');
    if (r.error) {
      lines.push('The run failed:');
      lines.push('');
      lines.push('```');
      lines.push(r.error);
      lines.push('```');
      lines.push('');
      continue;
    }
    lines.push(`${r.failed} of ${r.requests} requests failed${r.failed ? ` (${statusText(r.statuses)})` : ''}.`);
    lines.push('');
    lines.push('| segment (s) | replicas meant to run | replicas SERVING / Envoy healthy endpoints (min–max) | admitted ÷ limit, whole windows: mean (max) | etcd count ÷ limit, max | failed | p99 ms (worst bucket) | breakers not closed |');
    lines.push('|---|---|---|---|---|---|---|---|');
    for (const s of r.segments) {
      const range = (x: [number, number] | null) => (x === null ? '–' : x[0] === x[1] ? `${x[0]}` : `${x[0]}–${x[1]}`);
      lines.push(
        `| ${s.from}–${s.to}: ${s.label} | ${s.planned.join(', ') || 'none'} | ${range(s.live)} / ${range(s.envoyHealthy)} | ` +
          `${s.windows ? `${fmt(s.admittedPerLimitMean)} (${fmt(s.admittedPerLimitMax)}), ${s.windows} windows` : '– (no whole window)'} | ${fmt(s.etcdCountPerLimitMax)} | ` +
          `${s.failed} of ${s.responses} | ${fmt(s.p99Ms, 1)} (${fmt(s.worstBucketP99Ms, 1)}) | ${s.degraded.length ? s.degraded.join(', ') : 'none'} |`,
      );
    }
    lines.push('');
    lines.push('| event | at t (s) | health | process exited | Envoy | admitted ÷ limit in its window (etcd count) | failed until the next event |');
    lines.push('|---|---|---|---|---|---|---|');
    for (const e of r.events) {
      const health =
        e.action === 'add'
          ? `SERVING ${after(e.healthAt, e.t)}`
          : e.action === 'stop' || e.action === 'kill'
            ? `not SERVING ${after(e.healthAt, e.t)}`
            : `every running replica ${e.action === 'freeze' ? 'degraded' : 'closed'} ${after(e.healthAt, e.t)}`;
      const envoy = e.action === 'add' ? `healthy ${after(e.envoyAt, e.t)}` : e.action === 'stop' || e.action === 'kill' ? `removed ${after(e.envoyAt, e.t)}` : '–';
      lines.push(
        `| ${e.label}${e.error ? ` (FAILED: ${e.error})` : ''} | ${fmt(e.t, 2)} | ${health} | ${e.action === 'stop' || e.action === 'kill' ? after(e.exitedAt, e.t) : '–'} | ${envoy} | ` +
          `${fmt(e.windowPerLimit)} (${e.windowEtcdCount ?? '–'}) | ${e.failedUntilNext} of ${e.responsesUntilNext} |`,
      );
    }
    lines.push('');
    const letter = (w: WindowRow) => (!w.whole ? 'p' : w.segment === null ? '*' : '');
    lines.push(`Admitted per 1 s window (by arrival; * = an event fell in it, p = partly outside the load): ${r.windows.map((w) => `${w.admitted}${letter(w)}`).join(' ')}`);
    lines.push('');
    lines.push(`etcd's count per window: ${r.windows.map((w) => w.etcdCount).join(' ')}; admitted responses sent in the window before: ${r.windows.map((w) => w.straddling).join(' ')}`);
    lines.push('');
    lines.push('Observations (found in the numbers by the bench):');
    lines.push('');
    for (const o of r.observations.length ? r.observations : ['nothing unexpected']) lines.push(`- ${o}`);
    lines.push('');
  }
  lines.push("## Envoy's panic threshold");
  lines.push('');
  lines.push(
    `Envoy load-balances over every endpoint of a cluster, healthy or not, once fewer than healthy_panic_threshold percent of them are healthy (default 50 %). ` +
      `With one replica of three running, two thirds of the calls would go to addresses with nothing behind them. ` +
      `The product's bootstrap sets it to 0 on its replica clusters; checked once with the bootstrap as rendered, before the leased timeline:`,
  );
  lines.push('');
  if (!panic) lines.push('- not run');
  else if (panic.error) lines.push(`- the check failed: ${panic.error}`);
  else {
    lines.push(
      `- ${panic.healthy} of ${panic.endpoints} endpoints healthy, ${panic.rate} req/s: ${panic.failed} of ${panic.requests} requests failed` +
        `${panic.failed ? ` (${statusText(panic.statuses)}): Envoy sent calls to endpoints with nothing behind them` : ''}.`,
    );
  }
  lines.push('');
  lines.push('How to read this: bench/README.md, "Dynamic scaling".');
  lines.push('');
  return lines.join('\n');
}

// ---- the chart ----------------------------------------------------------------------------------------

const SERIES = ['admitted (200), per 250 ms bucket', 'admitted per 1 s window', 'limited (429)', 'failed (not 200/429)'];
const SERIES_COLORS = ['#9ecae9', '#1f4e99', '#b0b0b0', '#e4572e'];
const STATE_LABELS: Record<Exclude<SlotState, 'down'>, string> = {
  serving: 'SERVING',
  degraded: 'breaker not closed (etcd NOT_SERVING)',
  'not-serving': 'NOT_SERVING (starting or draining)',
  'no-answer': 'no answer to the health check',
};
const ENVOY_HEALTHY = "healthy in Envoy's view";

function chartSpec(p: Params, results: ModeResult[]): VegaLiteSpec {
  const totalS = p.durationMs / 1000;
  const slots = slotCount(p);
  const width = 860;
  const x = { type: 'quantitative', scale: { domain: [0, totalS], nice: false }, title: null };
  const xAxis = (title: string | null) => ({ ...x, title, axis: { values: Array.from({ length: Math.floor(totalS) + 1 }, (_, i) => i), format: 'd', grid: true } });
  const color = { field: 'series', type: 'nominal', scale: { domain: SERIES, range: SERIES_COLORS }, legend: { title: null, orient: 'top', direction: 'horizontal', labelLimit: 400, symbolStrokeWidth: 3 } };
  const panels = results
    .filter((r) => !r.error)
    .map((r) => {
      const events = r.events.filter((e) => !Number.isNaN(e.t)).map((e) => ({ t: e.t, label: stepMarker(p.script[r.events.indexOf(e)]!) }));
      const eventRules = { data: { values: events }, mark: { type: 'rule', color: '#333', strokeDash: [2, 2] }, encoding: { x: { field: 't', ...x } } };
      const eventLabels = {
        data: { values: events },
        mark: { type: 'text', align: 'left', dx: 3, dy: 2, baseline: 'top', fontSize: 10, color: '#333' },
        encoding: { x: { field: 't', ...x }, y: { value: 0 }, text: { field: 'label' } },
      };
      const mid = p.bucketMs / 2000;
      const shown = r.buckets.filter((b) => b.t + p.bucketMs / 1000 <= totalS + 1e-9);
      const rates = shown.flatMap((b) => [
        { t: b.t + mid, series: SERIES[0], perS: b.admittedPerS },
        { t: b.t + mid, series: SERIES[2], perS: b.limitedPerS },
        { t: b.t + mid, series: SERIES[3], perS: b.failedPerS },
      ]);
      const windows = r.windows.map((w) => ({ from: Math.max(0, w.t), to: Math.min(totalS, w.t + 1), perS: w.admitted, series: SERIES[1] }));
      const maxRate = Math.max(p.limit * p.loadFactor * 1.25, ...r.buckets.map((b) => Math.max(b.admittedPerS, b.limitedPerS, b.failedPerS)));
      const y = { type: 'quantitative', scale: { domain: [0, maxRate], nice: true } };
      const rate = {
        width,
        height: 200,
        layer: [
          eventRules,
          { data: { values: rates }, mark: { type: 'line', interpolate: 'step', strokeWidth: 1.5 }, encoding: { x: { field: 't', ...xAxis(null) }, y: { field: 'perS', ...y, title: 'requests / s' }, color } },
          { data: { values: windows }, mark: { type: 'rule', strokeWidth: 3 }, encoding: { x: { field: 'from', ...x }, x2: { field: 'to' }, y: { field: 'perS', ...y }, color } },
          {
            data: { values: [{ limit: p.limit, label: `limit ${p.limit}/s` }] },
            layer: [
              { mark: { type: 'rule', color: '#000', strokeDash: [6, 4], strokeWidth: 1.2 }, encoding: { y: { field: 'limit', ...y } } },
              { mark: { type: 'text', align: 'right', dy: -6, fontSize: 10 }, encoding: { x: { value: width }, y: { field: 'limit', ...y }, text: { field: 'label' } } },
            ],
          },
          eventLabels,
        ],
      };
      const latency = shown.filter((b) => b.p99Ms !== null).map((b) => ({ t: b.t + mid, p99: b.p99Ms }));
      const maxP99 = Math.max(p.envoyTimeoutMs * 1.1, ...latency.map((l) => l.p99!));
      const yl = { type: 'quantitative', scale: { domain: [0, maxP99], nice: true } };
      const p99 = {
        width,
        height: 110,
        layer: [
          eventRules,
          { data: { values: latency }, mark: { type: 'line', interpolate: 'step', color: '#6a3d9a', strokeWidth: 1.5 }, encoding: { x: { field: 't', ...xAxis(null) }, y: { field: 'p99', ...yl, title: 'p99 latency, ms' } } },
          {
            data: { values: [{ ms: p.envoyTimeoutMs, label: `Envoy's ext_authz deadline ${p.envoyTimeoutMs} ms` }] },
            layer: [
              { mark: { type: 'rule', color: '#999', strokeDash: [6, 4] }, encoding: { y: { field: 'ms', ...yl } } },
              { mark: { type: 'text', align: 'right', dy: -5, fontSize: 10, color: '#666' }, encoding: { x: { value: width }, y: { field: 'ms', ...yl }, text: { field: 'label' } } },
            ],
          },
        ],
      };
      const countSeries = ['replicas answering SERVING (health of "")', "Envoy's healthy endpoints"];
      const counts = shown.flatMap((b) => [
        { t: b.t, series: countSeries[0], n: b.live },
        ...(b.envoyHealthy === null ? [] : [{ t: b.t, series: countSeries[1], n: b.envoyHealthy }]),
      ]);
      const replicaCounts = {
        width,
        height: 70,
        layer: [
          eventRules,
          {
            data: { values: counts },
            mark: { type: 'line', interpolate: 'step-after', strokeWidth: 2 },
            encoding: {
              x: { field: 't', ...xAxis(null) },
              y: { field: 'n', type: 'quantitative', scale: { domain: [0, slots] }, axis: { values: Array.from({ length: slots + 1 }, (_, i) => i), format: 'd' }, title: 'replicas' },
              color: { field: 'series', type: 'nominal', scale: { domain: countSeries, range: ['#2ca02c', '#ff7f0e'] }, legend: { title: null, orient: 'top', direction: 'horizontal', labelLimit: 400 } },
              strokeDash: { field: 'series', type: 'nominal', scale: { domain: countSeries, range: [[1, 0], [5, 3]] }, legend: { title: null, orient: 'top', direction: 'horizontal', labelLimit: 400 } },
            },
          },
        ],
      };
      // Per replica: its own health, and whether Envoy called it healthy.
      const bars: Array<{ row: string; from: number; to: number; state: string }> = [];
      for (let rep = 1; rep <= slots; rep++) {
        const mine = r.polls.filter((q) => q.replica === rep);
        for (const [i, q] of mine.entries()) {
          if (q.state === 'down' || q.t > totalS) continue;
          const to = Math.min(totalS, mine[i + 1]?.t ?? q.t + p.pollMs / 1000);
          const last = bars[bars.length - 1];
          const state = STATE_LABELS[q.state];
          const row = `replica ${rep} health`;
          if (last && last.row === row && last.state === state && Math.abs(last.to - q.t) < 1e-6) last.to = to;
          else bars.push({ row, from: q.t, to, state });
        }
        for (const [i, q] of r.envoyPolls.entries()) {
          if (!q.hosts.find((h) => h.replica === rep)?.healthy || q.t > totalS) continue;
          const to = Math.min(totalS, r.envoyPolls[i + 1]?.t ?? q.t + p.envoyPollMs / 1000);
          const last = bars[bars.length - 1];
          const row = `replica ${rep} in Envoy`;
          if (last && last.row === row && Math.abs(last.to - q.t) < 1e-6) last.to = to;
          else bars.push({ row, from: q.t, to, state: ENVOY_HEALTHY });
        }
      }
      const rows = Array.from({ length: slots }, (_, i) => [`replica ${i + 1} health`, `replica ${i + 1} in Envoy`]).flat();
      const stateDomain = [...Object.values(STATE_LABELS), ENVOY_HEALTHY];
      const replicaBars = {
        width,
        height: 14 * rows.length,
        layer: [
          eventRules,
          {
            data: { values: bars },
            mark: { type: 'bar', height: 10 },
            encoding: {
              x: { field: 'from', ...xAxis('seconds since the load started') },
              x2: { field: 'to' },
              y: { field: 'row', type: 'nominal', scale: { domain: rows }, title: null },
              color: {
                field: 'state',
                type: 'nominal',
                scale: { domain: stateDomain, range: ['#74c476', '#f5a623', '#9e9ac8', '#555', '#9ecae1'] },
                legend: { title: 'replica (no bar: nothing listens)', orient: 'right', labelLimit: 300, titleLimit: 300 },
              },
            },
          },
        ],
      };
      const failedKill = r.events.filter((e) => e.action === 'kill').reduce((a, e) => a + e.failedUntilNext, 0);
      const maxWindow = Math.max(...r.windows.filter((w) => w.whole).map((w) => w.admitted / p.limit));
      return {
        title: {
          text: `consistency: ${r.consistency}`,
          subtitle: `${r.failed} failed of ${r.requests} (${failedKill} after the SIGKILL); largest whole window ${fmt(maxWindow)} × the limit`,
          anchor: 'start',
        },
        vconcat: [rate, p99, replicaCounts, replicaBars],
        spacing: 8,
        resolve: { scale: { color: 'independent', strokeDash: 'independent' } },
      };
    });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `Dynamic scaling: replicas added and removed, etcd frozen, under ${p.limit * p.loadFactor} req/s against a ${p.limit}/s global limit`,
      anchor: 'start',
      fontSize: 15,
    },
    background: 'white',
    padding: 12,
    vconcat: panels,
    spacing: 28,
    resolve: { scale: { color: 'independent' } },
    config: { view: { stroke: '#ddd' }, axis: { labelFontSize: 10, titleFontSize: 11 }, title: { subtitleFontSize: 11 } },
  };
}

// ---- main -------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const p = params(process.argv.slice(2));
  // Whatever happens, the bench ends: exit() SIGKILLs every lab child (src/lab/processes.ts), a frozen etcd included.
  hardTimeLimit(p.hardLimitMs);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      log(`${signal}: stopping (children are killed on exit)`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    });
  }

  log(
    `dynamic scaling${p.quick ? ' (quick)' : ''}: up to ${slotCount(p)} replicas, limit ${p.limit}/s, load ${p.loadFactor}× for ${p.durationMs / 1000} s; ` +
      `modes ${MODES.join(', ')}; whole run limited to ${p.hardLimitMs / 1000} s`,
  );
  const code = codeIdentity();
  const results: ModeResult[] = [];
  let panic: PanicCheck | undefined;
  for (const [i, mode] of MODES.entries()) {
    log(`[${i + 1}/${MODES.length}] ${mode} (load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs)`);
    const run = await runScript(p, mode, i === 0);
    results.push(run.result);
    panic ??= run.panic;
    const r = run.result;
    if (r.error) log(`  FAILED: ${r.error.split('\n')[0]}`);
    else log(`  failed ${r.failed} of ${r.requests}; ${r.segments.map((s) => `${s.label}: ${fmt(s.admittedPerLimitMean)}`).join(', ')} (${(r.durationMs / 1000).toFixed(1)} s)`);
  }

  const codeAfter = codeIdentity();
  if (codeAfter.distSrcSha256 !== code.distSrcSha256) {
    code.changedDuringRun = true;
    log(`warning: dist/src changed during the run (${code.distSrcSha256} → ${codeAfter.distSrcSha256}): the modes may have run different code`);
  }
  const meta = await runMetadata(`node dist/bench/scaling.js${p.quick ? ' --quick' : ''}`);
  const base = p.quick ? 'scaling.quick' : 'scaling';
  const svgName = `${base}.svg`;
  const json = {
    ...meta,
    code,
    params: { ...p, modes: MODES, slots: slotCount(p), algorithm: 'fixed-window', windowMs: WINDOW_MS, by: 'global', breaker: DEFAULT_BREAKER, memberTtlS: DEFAULT_MEMBER_TTL_S },
    panicCheck: panic ?? null,
    results,
  };
  const md = markdown(p, results, panic, meta, code, svgName);
  process.stdout.write(`\n${md}`);
  let chartFailed = false;
  try {
    // Written before the JSON, so that the report writeResults() regenerates finds the chart.
    fs.mkdirSync(resultsDir(), { recursive: true });
    fs.writeFileSync(path.join(resultsDir(), svgName), await renderSvg(chartSpec(p, results)));
    log(`wrote ${path.relative(process.cwd(), path.join(resultsDir(), svgName))}`);
  } catch (e) {
    chartFailed = true;
    log(`could not render the chart: ${(e as Error).stack ?? (e as Error).message}`);
  }
  writeResults(base, json, md);
  return results.some((r) => r.error) || chartFailed ? 1 : 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`${err.stack ?? err.message}\n`);
      process.exit(1);
    },
  );
}
