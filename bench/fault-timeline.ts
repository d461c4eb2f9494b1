// Fault timeline: what one global rate limit admits, how fast it answers and what each replica's etcd
// breaker does, second by second, while etcd is frozen (SIGSTOP) and resumed under steady load.
//
//   node dist/bench/fault-timeline.js [--quick]        (make bench-faults)
//
// Real processes on loopback (SidecarLab): a fresh etcd, three `middlebox serve` replicas and one
// Envoy with its production ext_authz deadline (250 ms). Open-loop load at 1.5 × the limit runs
// through Envoy; etcd is frozen after a normal stretch and thawed later, and every replica's
// `middlebox.etcd` health is polled every 100 ms. The whole timeline runs once per consistency mode
// (leased, then strict). Results: bench/results/fault-timeline.{json,md,svg}
// (fault-timeline.quick.* with --quick). bench/README.md says how to read them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { sleep, waitFor } from '../src/lab/ports';
import { SidecarLab } from '../src/lab/sidecar';
import type { Consistency } from '../src/policy/types';
import { connectEtcd } from '../src/state/etcd/client';
import { DEFAULT_BREAKER } from '../src/state/resilient/breaker';
import { renderSvg, type VegaLiteSpec } from './chart';
import { type CodeIdentity, codeIdentity, describeCode, hardTimeLimit, log, quickFlag, resultsDir, metadataLines, runMetadata, writeResults } from './common';
import { policyDocs, waitPolicyInForce } from './ratelimit-lab';
import { openLoop, type Sample } from './load';
import { BucketWriteLog, cpuSnapshot, fmt, isFailure, latencyOf, othersCpuPct, percentile, round, statsDelta, WINDOW_MS, windowOf, type BucketWrite } from './timeline';

// ---- parameters -----------------------------------------------------------------------------------

const MODES: Consistency[] = ['leased', 'strict'];

interface Params {
  quick: boolean;
  replicas: number;
  /** Requests per 1 s fixed window, one global bucket. */
  limit: number;
  /** Offered load as a multiple of the limit. */
  loadFactor: number;
  /** Load before the freeze, etcd frozen, load after the thaw. */
  normalMs: number;
  frozenMs: number;
  afterMs: number;
  /**
   * The load starts this long after a window boundary, so that the freeze and the thaw (whole
   * seconds later) fall in the middle of a rate-limit window, as a real outage would.
   */
  startOffsetMs: number;
  bucketMs: number;
  /** Every replica's `middlebox.etcd` health is asked this often. */
  pollMs: number;
  /** Deadline of one health check; a check that misses it is recorded as "no answer". */
  healthTimeoutMs: number;
  /** After the load, health polling goes on at most this long for breakers that have not closed yet. */
  closeWaitMs: number;
  /** Envoy's ext_authz deadline (the bootstrap's production default). */
  envoyTimeoutMs: number;
  /** The load generator's per-request timeout. */
  requestTimeoutMs: number;
  /** The whole bench is killed after this (children included). */
  hardLimitMs: number;
}

function params(argv: string[]): Params {
  const quick = quickFlag(argv, 'fault-timeline');
  return {
    quick,
    replicas: 3,
    limit: 200,
    loadFactor: 1.5,
    normalMs: quick ? 2000 : 4000,
    frozenMs: quick ? 4000 : 6000,
    afterMs: quick ? 4000 : 6000,
    startOffsetMs: 500,
    bucketMs: 250,
    pollMs: 100,
    healthTimeoutMs: 500,
    closeWaitMs: 8000,
    envoyTimeoutMs: 250,
    requestTimeoutMs: 2000,
    hardLimitMs: quick ? 120_000 : 240_000,
  };
}

// ---- results --------------------------------------------------------------------------------------

type Phase = 'before' | 'during' | 'after';
type WindowPhase = Phase | 'freeze' | 'thaw' | 'partial';
/** What a replica's `middlebox.etcd` health said: SERVING = breaker closed, NOT_SERVING = degraded. */
type PollState = 'closed' | 'degraded' | 'no-answer';

interface Poll {
  replica: number;
  /** Seconds from the load's start to the answer (or the failed check). */
  t: number;
  state: PollState;
  /** The health status as answered, or the error. */
  status: string;
}

/** One bucket of the timeline, [t, t + bucketMs) by response arrival time. */
interface Bucket {
  /** Seconds from the load's start. */
  t: number;
  sent: number;
  admitted: number;
  limited: number;
  failed: number;
  sentPerS: number;
  admittedPerS: number;
  limitedPerS: number;
  failedPerS: number;
  /** Latency of the responses that arrived in the bucket (ms); null when none did. */
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  /** Per replica: degraded if any poll in the bucket said NOT_SERVING, else the last known state. */
  breakers: Array<PollState | 'unknown'>;
}

/** One epoch-aligned 1 s rate-limit window, by response arrival time. */
interface WindowRow {
  window: number;
  /** Seconds from the load's start to the window's start. */
  t: number;
  phase: WindowPhase;
  sent: number;
  admitted: number;
  limited: number;
  failed: number;
  /** Admitted responses that arrived in this window but were sent in the one before. */
  straddling: number;
  /**
   * Server side: the largest count etcd's bucket held for this window (strict: tokens granted;
   * leased: tokens granted to replicas' pools; both include what was written back after the outage).
   */
  etcdCount: number;
  /** Writes to the bucket for this window. */
  etcdWrites: number;
}


interface Interval {
  replica: number;
  /** Seconds from the load's start. */
  from: number;
  /** null: still degraded when polling ended. */
  to: number | null;
}

interface ReplicaBreaker {
  replica: number;
  /** Already NOT_SERVING when etcd was frozen (opened without the fault); openAfterFreezeMs is then 0. */
  degradedAtFreeze: boolean;
  /** Health polls: freeze → first NOT_SERVING, thaw → first SERVING after it (ms). */
  openAfterFreezeMs: number | null;
  closedAfterThawMs: number | null;
  /** Degraded intervals that began after the breaker had closed again following the thaw. */
  reopenedAfterThaw: number;
  /** The replica's own log: freeze → first `etcd breaker open`, thaw → first `closed` (ms). */
  logOpenAfterFreezeMs: number | null;
  logClosedAfterThawMs: number | null;
  /** Every transition the replica logged during the run. */
  transitions: Array<{ t: number; state: string }>;
  /** Rate-limit tokens admitted locally during the outage and written back to etcd on recovery. */
  tokensWrittenBack: number;
  /** Log lines at warn level or above, counted by message. */
  warnings: Record<string, number>;
}

interface PhaseSummary {
  /** Whole windows of this phase: admitted ÷ limit, mean and largest. */
  windows: number;
  admittedPerLimitMean: number | null;
  admittedPerLimitMax: number | null;
  /** Responses that arrived in the phase. */
  responses: number;
  failed: number;
  p50Ms: number | null;
  p99Ms: number | null;
  /** The largest p99 of a bucket in the phase. */
  worstBucketP99Ms: number | null;
}

interface ModeResult {
  consistency: Consistency;
  offeredRps: number;
  /** Seconds from the load's start. */
  frozeAt: number;
  thawedAt: number;
  loadEndedAt: number;
  buckets: Bucket[];
  windows: WindowRow[];
  phases: Record<Phase, PhaseSummary>;
  /** admitted ÷ limit in the window etcd froze in and in the one it thawed in. */
  freezeWindowPerLimit: number | null;
  thawWindowPerLimit: number | null;
  /**
   * The window in which the first breaker closed after the thaw (replica logs, else health polls):
   * its start (s), admitted ÷ limit, and etcd's count for it (the local admissions written back plus
   * what etcd granted after the close).
   */
  closeWindow: { t: number; perLimit: number; etcdCount: number } | null;
  requests: number;
  failed: number;
  statuses: Record<string, number>;
  /** Slowest replica: freeze → every breaker open, thaw → every breaker closed (health polls, ms). */
  allOpenAfterFreezeMs: number | null;
  allClosedAfterThawMs: number | null;
  breakers: ReplicaBreaker[];
  degraded: Interval[];
  polls: Poll[];
  /** Envoy's ext_authz counters over the run. */
  envoyExtAuthz: Record<string, number>;
  /** The machine's 1, 5 and 15 minute load averages before the lab started and after the load (2 cores). */
  loadAverage: { before: number[]; after: number[] };
  /**
   * Percent of the machine's CPU time that processes outside this bench used during the load, and
   * per second of it: a disturbed run shows here (null where /proc cannot tell).
   */
  othersCpuPct: number | null;
  othersCpuPctPerSecond: Array<number | null>;
  /** Every write to the rate-limit bucket during the run, from an etcd watch (t: when the watch delivered it). */
  etcdWrites: BucketWrite[];
  /** Whether the watch delivered every write up to the revision etcd had after the run. */
  etcdWatchComplete: boolean;
  durationMs: number;
  error?: string;
}

// ---- helpers ----------------------------------------------------------------------------------------




/** Asks every replica's `middlebox.etcd` health every pollMs until stopped. */
class HealthPoller {
  readonly polls: Poll[] = [];
  private readonly last: PollState[];
  private stopped = false;
  private readonly loops: Array<Promise<void>>;

  constructor(
    private readonly lab: SidecarLab,
    private readonly p: Params,
    private readonly t0: number,
    private readonly onChange: (replica: number, state: PollState, t: number) => void,
  ) {
    this.last = lab.replicas.map(() => 'closed');
    this.loops = lab.replicas.map((_, i) => this.loop(i));
  }

  state(replica: number): PollState {
    return this.last[replica]!;
  }

  private async loop(i: number): Promise<void> {
    let next = Date.now();
    while (!this.stopped) {
      let state: PollState;
      let status: string;
      try {
        status = await this.lab.replicas[i]!.health.check('middlebox.etcd', this.p.healthTimeoutMs);
        state = status === 'SERVING' ? 'closed' : status === 'NOT_SERVING' ? 'degraded' : 'no-answer';
      } catch (e) {
        status = (e as Error).message.split('\n')[0]!;
        state = 'no-answer';
      }
      const t = (Date.now() - this.t0) / 1000;
      this.polls.push({ replica: i + 1, t: round(t), state, status });
      if (state !== this.last[i]) {
        this.last[i] = state;
        this.onChange(i + 1, state, t);
      }
      // A late answer does not make the next checks come in a burst.
      next = Math.max(next + this.p.pollMs, Date.now());
      await sleep(next - Date.now());
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }
}


/** Degraded intervals per replica, from the polls (a no-answer poll changes nothing). */
function degradedIntervals(polls: Poll[], replicas: number): Interval[] {
  const out: Interval[] = [];
  for (let r = 1; r <= replicas; r++) {
    let open: Interval | undefined;
    for (const poll of polls.filter((x) => x.replica === r)) {
      if (poll.state === 'degraded' && !open) {
        open = { replica: r, from: poll.t, to: null };
        out.push(open);
      } else if (poll.state === 'closed' && open) {
        open.to = poll.t;
        open = undefined;
      }
    }
  }
  return out.sort((a, b) => a.from - b.from);
}

interface LogLine {
  time?: number;
  level?: number;
  msg?: string;
  state?: string;
  tokens?: number;
}

/** Breaker transitions, tokens written back and warnings from a replica's JSON log. */
function readReplicaLog(file: string, t0: number): Pick<ReplicaBreaker, 'transitions' | 'tokensWrittenBack' | 'warnings'> {
  const out = { transitions: [] as Array<{ t: number; state: string }>, tokensWrittenBack: 0, warnings: {} as Record<string, number> };
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    let entry: LogLine;
    try {
      entry = JSON.parse(line) as LogLine;
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

function buckets(p: Params, samples: Sample[], polls: Poll[], t0: number, endMs: number): Bucket[] {
  const n = Math.ceil(endMs / p.bucketMs);
  const rows: Array<Bucket & { latencies: number[] }> = Array.from({ length: n }, (_, i) => ({
    t: round((i * p.bucketMs) / 1000),
    sent: 0,
    admitted: 0,
    limited: 0,
    failed: 0,
    sentPerS: 0,
    admittedPerS: 0,
    limitedPerS: 0,
    failedPerS: 0,
    p50Ms: null,
    p99Ms: null,
    maxMs: null,
    breakers: [],
    latencies: [],
  }));
  const bucketOf = (at: number) => rows[Math.floor((at - t0) / p.bucketMs)];
  for (const s of samples) {
    const sentRow = bucketOf(Number.isNaN(s.sent) ? s.at : s.sent);
    if (sentRow) sentRow.sent += 1;
    const row = bucketOf(s.at);
    if (!row) continue;
    if (s.status === 200) row.admitted += 1;
    else if (s.status === 429) row.limited += 1;
    else row.failed += 1;
    if (!Number.isNaN(s.sent)) row.latencies.push(latencyOf(s));
  }
  const perS = 1000 / p.bucketMs;
  const lastKnown: Array<PollState | 'unknown'> = Array.from({ length: p.replicas }, () => 'unknown');
  for (const row of rows) {
    row.sentPerS = row.sent * perS;
    row.admittedPerS = row.admitted * perS;
    row.limitedPerS = row.limited * perS;
    row.failedPerS = row.failed * perS;
    const sorted = row.latencies.sort((a, b) => a - b);
    row.p50Ms = percentile(sorted, 50);
    row.p99Ms = percentile(sorted, 99);
    row.maxMs = sorted.length ? sorted[sorted.length - 1]! : null;
    const end = row.t + p.bucketMs / 1000;
    for (let r = 1; r <= p.replicas; r++) {
      const inBucket = polls.filter((x) => x.replica === r && x.t >= row.t && x.t < end);
      const answered = inBucket.filter((x) => x.state !== 'no-answer');
      if (answered.some((x) => x.state === 'degraded')) lastKnown[r - 1] = 'degraded';
      else if (answered.length > 0) lastKnown[r - 1] = 'closed';
      else if (inBucket.length > 0) lastKnown[r - 1] = 'no-answer';
      row.breakers.push(lastKnown[r - 1]!);
      // The bucket shows degraded if any poll in it said so, but what follows starts from its last poll.
      const lastPoll = answered[answered.length - 1];
      if (lastPoll) lastKnown[r - 1] = lastPoll.state;
    }
  }
  return rows.map(({ latencies: _, ...row }) => row);
}

function windowRows(p: Params, samples: Sample[], writes: BucketWrite[], t0: number, frozeAt: number, thawedAt: number, loadEnd: number): WindowRow[] {
  const first = windowOf(t0);
  const last = windowOf(loadEnd);
  const rows: WindowRow[] = [];
  for (let w = first; w <= last; w++) {
    const start = w * WINDOW_MS;
    const end = start + WINDOW_MS;
    let phase: WindowPhase;
    if (start < t0 || end > loadEnd) phase = 'partial';
    else if (end <= frozeAt) phase = 'before';
    else if (start < frozeAt) phase = 'freeze';
    else if (end <= thawedAt) phase = 'during';
    else if (start < thawedAt) phase = 'thaw';
    else phase = 'after';
    rows.push({ window: w, t: round((start - t0) / 1000), phase, sent: 0, admitted: 0, limited: 0, failed: 0, straddling: 0, etcdCount: 0, etcdWrites: 0 });
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

function phaseSummary(p: Params, phase: Phase, samples: Sample[], rows: Bucket[], windows: WindowRow[], fromMs: number, toMs: number): PhaseSummary {
  const inPhase = samples.filter((s) => s.at >= fromMs && s.at < toMs);
  const latencies = inPhase.filter((s) => !Number.isNaN(s.sent)).map(latencyOf).sort((a, b) => a - b);
  const ratios = windows.filter((w) => w.phase === phase).map((w) => w.admitted / p.limit);
  const bucketP99 = rows.filter((b) => b.p99Ms !== null).map((b) => b.p99Ms!);
  return {
    windows: ratios.length,
    admittedPerLimitMean: ratios.length ? round(ratios.reduce((a, b) => a + b, 0) / ratios.length) : null,
    admittedPerLimitMax: ratios.length ? round(Math.max(...ratios)) : null,
    responses: inPhase.length,
    failed: inPhase.filter(isFailure).length,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    worstBucketP99Ms: bucketP99.length ? Math.max(...bucketP99) : null,
  };
}





const maxOrNull = (xs: Array<number | null>): number | null => (xs.some((x) => x === null) || xs.length === 0 ? null : Math.max(...(xs as number[])));

// ---- one timeline -----------------------------------------------------------------------------------

async function runTimeline(p: Params, mode: Consistency): Promise<ModeResult> {
  const began = Date.now();
  const offeredRps = p.limit * p.loadFactor;
  const totalMs = p.normalMs + p.frozenMs + p.afterMs;
  const result: ModeResult = {
    consistency: mode,
    offeredRps,
    frozeAt: NaN,
    thawedAt: NaN,
    loadEndedAt: NaN,
    buckets: [],
    windows: [],
    phases: {} as Record<Phase, PhaseSummary>,
    freezeWindowPerLimit: null,
    thawWindowPerLimit: null,
    closeWindow: null,
    requests: 0,
    failed: 0,
    statuses: {},
    allOpenAfterFreezeMs: null,
    allClosedAfterThawMs: null,
    breakers: [],
    degraded: [],
    polls: [],
    envoyExtAuthz: {},
    etcdWrites: [],
    etcdWatchComplete: false,
    loadAverage: { before: os.loadavg().map((x) => round(x, 2)), after: [] },
    othersCpuPct: null,
    othersCpuPctPerSecond: [],
    durationMs: 0,
  };
  let lab: SidecarLab | undefined;
  let client: Etcd3 | undefined;
  let bucketLog: BucketWriteLog | undefined;
  let frozen = false;
  const timers: NodeJS.Timeout[] = [];
  let poller: HealthPoller | undefined;
  try {
    // The production deadline (not the lab's longer default): this bench measures what users get.
    lab = await SidecarLab.start({ replicas: p.replicas, bootstrap: { timeoutMs: p.envoyTimeoutMs }, etcdTimeoutMs: DEFAULT_BREAKER.timeoutMs });
    const theLab = lab;
    const url = `http://127.0.0.1:${lab.httpPort}/bench`;
    log(`  etcd ${lab.etcd.endpoint}, replicas ${lab.replicas.map((r) => r.address).join(' ')}, Envoy :${lab.httpPort}`);
    await lab.applyPolicies(policyDocs(mode, p.limit));
    await waitPolicyInForce(url, p.replicas);
    await waitFor(async () => (await Promise.all(theLab.replicas.map((r) => r.health.check('middlebox.etcd', 1000)))).every((s) => s === 'SERVING'), {
      timeoutMs: 10_000,
      what: 'every replica to report middlebox.etcd SERVING',
    });
    const statsBefore = await lab.envoy.stats('ext_authz');
    client = connectEtcd({ endpoints: [lab.etcd.endpoint] });
    const revisionBefore = await lab.etcd.revision();
    // Start `startOffsetMs` into a window: the freeze and the thaw then fall mid-window.
    const now = Date.now();
    const t0 = (windowOf(now) + 1) * WINDOW_MS + p.startOffsetMs;
    bucketLog = await BucketWriteLog.start(client, lab.prefix, revisionBefore + 1, () => t0);
    await sleep(Math.max(0, t0 - Date.now()));
    const since = (at: number) => (at - t0) / 1000;
    const ts = (t: number) => `t=${t.toFixed(1).padStart(4)} s`;
    let frozeAt = NaN;
    let thawedAt = NaN;
    poller = new HealthPoller(lab, p, t0, (replica, state, t) => {
      const ref = Number.isNaN(thawedAt) ? (Number.isNaN(frozeAt) ? undefined : ['freeze', frozeAt] as const) : (['thaw', thawedAt] as const);
      const after = ref ? `, ${(t - since(ref[1])).toFixed(2)} s after the ${ref[0]}` : '';
      const what = state === 'degraded' ? 'NOT_SERVING (breaker not closed)' : state === 'closed' ? 'SERVING (breaker closed)' : 'no answer to the health check';
      log(`    ${ts(t)}  replica ${replica}: middlebox.etcd ${what}${after}`);
    });
    timers.push(
      setTimeout(() => {
        frozen = true;
        frozeAt = Date.now();
        log(`    ${ts(since(frozeAt))}  etcd frozen (SIGSTOP)`);
        theLab.etcd.freeze().catch((e: Error) => log(`    etcd did not stop: ${e.message}`));
      }, t0 + p.normalMs - Date.now()),
    );
    timers.push(
      setTimeout(() => {
        theLab.etcd.thaw();
        frozen = false;
        thawedAt = Date.now();
        log(`    ${ts(since(thawedAt))}  etcd thawed (SIGCONT)`);
      }, t0 + p.normalMs + p.frozenMs - Date.now()),
    );
    // One progress line per second of load: the second just ended.
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
      const degraded = theLab.replicas.map((_, i) => i + 1).filter((r) => poller!.state(r - 1) === 'degraded');
      log(
        `    ${ts(second)}  200: ${String(count((s) => s.status === 200)).padStart(3)}/s  429: ${String(count((s) => s.status === 429)).padStart(3)}/s  ` +
          `failed: ${count(isFailure)}  p99 ${percentile(lat, 99) ?? '–'} ms  degraded: ${degraded.length ? degraded.join(' ') : 'none'}  ` +
          `other processes' CPU ${others === null ? '?' : `${others}%`}${frozen ? '  (etcd frozen)' : ''}`,
      );
    }, 1000);
    timers.push(progress);
    log(`  ${offeredRps} req/s open loop for ${totalMs / 1000} s; etcd frozen at t=${p.normalMs / 1000} s for ${p.frozenMs / 1000} s`);
    let samples: Sample[];
    try {
      samples = await openLoop({ urls: [url], rate: offeredRps, durationMs: totalMs, timeoutMs: p.requestTimeoutMs, onSample: (s) => live.push(s) });
    } finally {
      clearInterval(progress);
    }
    result.othersCpuPct = othersCpuPct(cpuAtStart, cpuSnapshot());
    const loadEnd = Date.now();
    if (Number.isNaN(frozeAt) || Number.isNaN(thawedAt)) throw new Error('the load ended before etcd was frozen and thawed');
    // Breakers that have not closed yet get a bounded while longer, to measure when they do.
    const allClosed = () => theLab.replicas.every((_, i) => poller!.state(i) === 'closed');
    if (!allClosed()) {
      log(`  load done; waiting up to ${p.closeWaitMs / 1000} s for every breaker to close`);
      await waitFor(allClosed, { timeoutMs: p.closeWaitMs, intervalMs: 50, what: 'every breaker to close' }).catch(() => undefined);
    }
    await poller.stop();
    await sleep(200); // the replicas' last log lines reach their files
    result.envoyExtAuthz = statsDelta(statsBefore, await lab.envoy.stats('ext_authz'));
    result.loadAverage.after = os.loadavg().map((x) => round(x, 2));
    const revisionAfter = await lab.etcd.revision();
    result.etcdWatchComplete = revisionAfter <= revisionBefore || (await bucketLog.caughtUp(revisionAfter, 5000));
    result.etcdWrites = bucketLog.writes;

    const polls = poller.polls;
    const endMs = Math.max(loadEnd, ...samples.map((s) => s.at)) - t0;
    result.frozeAt = round(since(frozeAt));
    result.thawedAt = round(since(thawedAt));
    result.loadEndedAt = round(since(loadEnd));
    result.polls = polls;
    result.buckets = buckets(p, samples, polls, t0, endMs);
    result.windows = windowRows(p, samples, result.etcdWrites, t0, frozeAt, thawedAt, loadEnd);
    result.phases = {
      before: phaseSummary(p, 'before', samples, result.buckets.filter((b) => b.t < result.frozeAt), result.windows, t0, frozeAt),
      during: phaseSummary(p, 'during', samples, result.buckets.filter((b) => b.t >= result.frozeAt && b.t < result.thawedAt), result.windows, frozeAt, thawedAt),
      after: phaseSummary(p, 'after', samples, result.buckets.filter((b) => b.t >= result.thawedAt), result.windows, thawedAt, Infinity),
    };
    const ratioOf = (phase: WindowPhase) => {
      const w = result.windows.find((x) => x.phase === phase);
      return w ? round(w.admitted / p.limit) : null;
    };
    result.freezeWindowPerLimit = ratioOf('freeze');
    result.thawWindowPerLimit = ratioOf('thaw');
    result.requests = samples.length;
    result.failed = samples.filter(isFailure).length;
    for (const s of samples) result.statuses[String(s.status)] = (result.statuses[String(s.status)] ?? 0) + 1;
    result.degraded = degradedIntervals(polls, p.replicas);
    for (let r = 1; r <= p.replicas; r++) {
      const mine = result.degraded.filter((d) => d.replica === r);
      const degradedAtFreeze = mine.some((d) => d.from < result.frozeAt && (d.to === null || d.to > result.frozeAt));
      const opened = mine.find((d) => d.from >= result.frozeAt);
      const firstClosedPoll = polls.find((x) => x.replica === r && x.t >= result.thawedAt && x.state === 'closed');
      const fromLog = readReplicaLog(lab.replicaLogFile(r - 1), t0);
      const logOpen = fromLog.transitions.find((x) => x.t >= result.frozeAt && x.state === 'open');
      const logBefore = fromLog.transitions.filter((x) => x.t < result.frozeAt);
      const logDegradedAtFreeze = logBefore.length > 0 && logBefore[logBefore.length - 1]!.state !== 'closed';
      const logClosed = fromLog.transitions.find((x) => x.t >= result.thawedAt && x.state === 'closed');
      result.breakers.push({
        replica: r,
        degradedAtFreeze,
        openAfterFreezeMs: degradedAtFreeze ? 0 : opened ? Math.round((opened.from - result.frozeAt) * 1000) : null,
        closedAfterThawMs: firstClosedPoll ? Math.round((firstClosedPoll.t - result.thawedAt) * 1000) : null,
        reopenedAfterThaw: firstClosedPoll ? mine.filter((d) => d.from > firstClosedPoll.t).length : 0,
        logOpenAfterFreezeMs: logDegradedAtFreeze ? 0 : logOpen ? Math.round((logOpen.t - result.frozeAt) * 1000) : null,
        logClosedAfterThawMs: logClosed ? Math.round((logClosed.t - result.thawedAt) * 1000) : null,
        ...fromLog,
      });
    }
    const closes = result.breakers.map((b) => b.logClosedAfterThawMs ?? b.closedAfterThawMs).filter((x): x is number => x !== null);
    if (closes.length > 0) {
      const at = t0 + (result.thawedAt + Math.min(...closes) / 1000) * 1000;
      const w = result.windows.find((x) => x.window === windowOf(at));
      if (w) result.closeWindow = { t: w.t, perLimit: round(w.admitted / p.limit), etcdCount: w.etcdCount };
    }
    result.allOpenAfterFreezeMs = maxOrNull(result.breakers.map((b) => b.openAfterFreezeMs));
    result.allClosedAfterThawMs = maxOrNull(result.breakers.map((b) => b.closedAfterThawMs));
  } catch (e) {
    result.error = (e as Error).message;
    const tails = lab?.replicas.map((r, i) => `--- middlebox ${i + 1}\n${r.output().split('\n').slice(-15).join('\n')}`);
    if (tails) result.error += `\n${tails.join('\n')}`;
  } finally {
    for (const t of timers) clearTimeout(t);
    // A frozen etcd would answer nothing, SIGTERM and the watch's cancel included.
    if (frozen) lab?.etcd.thaw();
    await poller?.stop();
    if (bucketLog) await Promise.race([bucketLog.stop(), sleep(2000)]);
    client?.close();
    await lab?.stop();
  }
  result.durationMs = Date.now() - began;
  return result;
}

// ---- the report -------------------------------------------------------------------------------------


const ms = (n: number | null): string => (n === null ? 'never' : `${(n / 1000).toFixed(2)} s`);

/** Things a reader should not miss, found in the numbers. */
function observations(p: Params, r: ModeResult): string[] {
  if (r.error) return [`the run failed: ${r.error.split('\n')[0]}`];
  const out: string[] = [];
  if (r.othersCpuPct !== null && r.othersCpuPct > 10) {
    const busy = r.othersCpuPctPerSecond.map((x, i) => [i + 1, x] as const).filter(([, x]) => x !== null && x > 20).map(([t]) => t);
    out.push(`DISTURBED: other processes used ${r.othersCpuPct} % of the machine during the load${busy.length ? ` (over 20 % in the seconds ending at t = ${busy.join(', ')} s)` : ''}`);
  }
  if (r.failed > 0) {
    const other = Object.entries(r.statuses).filter(([s]) => s !== '200' && s !== '429').map(([s, n]) => `${n} × ${s === '0' ? 'no response' : s}`);
    const when = r.buckets.filter((b) => b.failed > 0).map((b) => b.t.toFixed(2));
    const lastOpen = r.allOpenAfterFreezeMs === null ? null : r.frozeAt + r.allOpenAfterFreezeMs / 1000;
    const opening = lastOpen === null ? 0 : r.buckets.filter((b) => b.t + p.bucketMs / 1000 > r.frozeAt && b.t < lastOpen + 0.3).reduce((a, b) => a + b.failed, 0);
    out.push(
      `${r.failed} failed requests (${other.join(', ')}), in the buckets at t = ${when.slice(0, 12).join(', ')}${when.length > 12 ? ', …' : ''} s` +
        (lastOpen === null ? '' : `; ${opening} of them between the freeze and 300 ms after the last breaker opened`),
    );
  }
  const over = r.windows.filter((w) => w.phase !== 'partial' && w.admitted > p.limit);
  if (over.length > 0) {
    const each = over.map((w) => `${w.admitted} in the window at t=${w.t} s (${w.phase}${w.straddling ? `; ${w.straddling} of them sent in the window before` : ''})`);
    out.push(`admitted more than the limit (client side, by arrival) in ${over.length} window(s): ${each.join(', ')}`);
  }
  const overEtcd = r.windows.filter((w) => w.etcdCount > p.limit);
  if (overEtcd.length > 0) {
    const label = (w: WindowRow) => (r.closeWindow?.t === w.t ? `${w.phase}; the first breaker closed in it` : w.phase);
    out.push(`etcd's count for a window went over the limit: ${overEtcd.map((w) => `${w.etcdCount} for the window at t=${w.t} s (${label(w)})`).join(', ')}`);
  }
  const writtenBack = r.breakers.reduce((a, b) => a + b.tokensWrittenBack, 0);
  if (writtenBack > p.limit) {
    out.push(
      `the replicas wrote ${writtenBack} locally admitted tokens back to etcd after the thaw (${r.breakers.map((b) => b.tokensWrittenBack).join(' + ')}), ` +
        `more than one window's limit (${p.limit}; ${Math.ceil(p.limit / p.replicas)} per replica)`,
    );
  }
  if (!r.etcdWatchComplete) out.push('the etcd watch did not deliver every write of the run: the etcd counts may be short');
  const under = r.windows.filter((w) => w.phase !== 'partial' && w.admitted < 0.9 * p.limit);
  if (under.length > 0) {
    out.push(`admitted under 90 % of the limit in ${under.length} window(s): ${under.map((w) => `${w.admitted} at t=${w.t} s (${w.phase})`).join(', ')}`);
  }
  const alreadyOpen = r.breakers.filter((b) => b.degradedAtFreeze).map((b) => b.replica);
  if (alreadyOpen.length > 0) out.push(`replica(s) ${alreadyOpen.join(', ')} were already degraded when etcd was frozen`);
  const neverOpened = r.breakers.filter((b) => b.openAfterFreezeMs === null).map((b) => b.replica);
  if (neverOpened.length > 0) out.push(`replica(s) ${neverOpened.join(', ')} never reported degraded after the freeze`);
  const neverClosed = r.breakers.filter((b) => b.closedAfterThawMs === null).map((b) => b.replica);
  if (neverClosed.length > 0) out.push(`replica(s) ${neverClosed.join(', ')} did not report SERVING again within ${p.closeWaitMs / 1000} s of the load's end`);
  const reopened = r.breakers.filter((b) => b.reopenedAfterThaw > 0).map((b) => `replica ${b.replica} (${b.reopenedAfterThaw}×)`);
  if (reopened.length > 0) out.push(`breakers degraded again after closing post-thaw: ${reopened.join(', ')}`);
  const early = r.degraded.filter((d) => d.from < r.frozeAt).map((d) => `replica ${d.replica} at t=${d.from} s`);
  if (early.length > 0) out.push(`degraded before the freeze: ${early.join(', ')}`);
  const noAnswer = r.polls.filter((x) => x.state === 'no-answer').length;
  if (noAnswer > 0) out.push(`${noAnswer} health checks got no answer within ${p.healthTimeoutMs} ms`);
  const slowOpen = 2 * DEFAULT_BREAKER.timeoutMs + p.pollMs + 100;
  if (r.allOpenAfterFreezeMs !== null && r.allOpenAfterFreezeMs > slowOpen) {
    out.push(
      `the last breaker opened ${ms(r.allOpenAfterFreezeMs)} after the freeze (more than 2 × the ${DEFAULT_BREAKER.timeoutMs} ms operation timeout + one poll + 100 ms)`,
    );
  }
  const worst = r.phases.during.worstBucketP99Ms;
  if (worst !== null && worst > p.envoyTimeoutMs * 0.8) out.push(`a bucket's p99 reached ${worst} ms while etcd was frozen (Envoy's deadline: ${p.envoyTimeoutMs} ms)`);
  const warnings = new Map<string, number>();
  for (const b of r.breakers) for (const [msg, n] of Object.entries(b.warnings)) warnings.set(msg, (warnings.get(msg) ?? 0) + n);
  const notable = [...warnings].filter(([msg]) => !msg.startsWith('etcd breaker open'));
  if (notable.length > 0) out.push(`replica warnings: ${notable.map(([msg, n]) => `${n} × "${msg}"`).join('; ')}`);
  return out;
}

function markdown(p: Params, results: ModeResult[], meta: Record<string, string>, code: CodeIdentity, svgName: string): string {
  const lines: string[] = [];
  const cols = results.map((r) => r.consistency);
  const row = (label: string, f: (r: ModeResult) => string) => lines.push(`| ${label} | ${results.map((r) => (r.error ? '–' : f(r))).join(' | ')} |`);
  lines.push(`# Fault timeline${p.quick ? ' (quick)' : ''}`);
  lines.push('');
  lines.push(...metadataLines(meta));
  lines.push(
    `- code: ${describeCode(code)}; ` +
      `load average before each mode: ${results.map((r) => `${r.consistency} ${r.loadAverage.before.join(' ')}`).join(', ')} (${os.cpus().length} CPUs); ` +
      `CPU used by other processes during the load: ${results.map((r) => `${r.consistency} ${r.othersCpuPct ?? '?'} %`).join(', ')}`,
  );
  lines.push(
    `- ${p.replicas} replicas behind one Envoy (ext_authz deadline ${p.envoyTimeoutMs} ms, fail closed); one global limit of ${p.limit} per 1 s, fixed window; ` +
      `open-loop load ${p.loadFactor} × the limit (${p.limit * p.loadFactor} req/s) for ${(p.normalMs + p.frozenMs + p.afterMs) / 1000} s, starting ${p.startOffsetMs} ms into a window; ` +
      `etcd frozen (SIGSTOP) at t = ${p.normalMs / 1000} s, thawed (SIGCONT) ${p.frozenMs / 1000} s later; breaker: ${DEFAULT_BREAKER.timeoutMs} ms operation timeout, ` +
      `opens after ${DEFAULT_BREAKER.consecutiveFailures} failures in a row, half-open after ${DEFAULT_BREAKER.resetTimeoutMs} ms`,
  );
  lines.push(`- every replica's \`middlebox.etcd\` health asked every ${p.pollMs} ms (NOT_SERVING = degraded, the breaker is not closed); timeline in ${p.bucketMs} ms buckets by response arrival`);
  lines.push(`- chart: [${svgName}](${svgName}); every bucket, poll and window: the JSON beside this file`);
  lines.push('');
  lines.push(`| | ${cols.join(' | ')} |`);
  lines.push(`|---|${cols.map(() => '---').join('|')}|`);
  const adm = (s: PhaseSummary) => `${fmt(s.admittedPerLimitMean)} (max ${fmt(s.admittedPerLimitMax)}, ${s.windows} windows)`;
  row('admitted ÷ limit before the freeze: mean of whole windows (max)', (r) => adm(r.phases.before));
  row('admitted ÷ limit in the window etcd froze in', (r) => fmt(r.freezeWindowPerLimit));
  row('admitted ÷ limit while frozen', (r) => adm(r.phases.during));
  row('admitted ÷ limit in the window etcd thawed in', (r) => fmt(r.thawWindowPerLimit));
  row('admitted ÷ limit after the thaw', (r) => adm(r.phases.after));
  row('failed requests (not 200/429) of all sent', (r) => `${r.failed} of ${r.requests}`);
  row('p99 latency before / while frozen / after (ms)', (r) => `${fmt(r.phases.before.p99Ms, 1)} / ${fmt(r.phases.during.p99Ms, 1)} / ${fmt(r.phases.after.p99Ms, 1)}`);
  row(`worst ${p.bucketMs} ms bucket p99 before / while frozen / after (ms)`, (r) =>
    `${fmt(r.phases.before.worstBucketP99Ms, 0)} / ${fmt(r.phases.during.worstBucketP99Ms, 0)} / ${fmt(r.phases.after.worstBucketP99Ms, 0)}`);
  const openMs = (b: ReplicaBreaker) => (b.degradedAtFreeze ? 'already degraded' : ms(b.openAfterFreezeMs));
  row('freeze → every breaker open (health polls; per replica)', (r) => `${ms(r.allOpenAfterFreezeMs)} (${r.breakers.map(openMs).join(', ')})`);
  row('freeze → breaker open per replica (replica logs)', (r) => r.breakers.map((b) => (b.logOpenAfterFreezeMs === 0 ? 'already open' : ms(b.logOpenAfterFreezeMs))).join(', '));
  row('thaw → every breaker closed (health polls; per replica)', (r) => `${ms(r.allClosedAfterThawMs)} (${r.breakers.map((b) => ms(b.closedAfterThawMs)).join(', ')})`);
  row('thaw → breaker closed per replica (replica logs)', (r) => r.breakers.map((b) => ms(b.logClosedAfterThawMs)).join(', '));
  row('tokens admitted locally and written back to etcd (per replica)', (r) => r.breakers.map((b) => b.tokensWrittenBack).join(', '));
  row(`admitted ÷ limit in the window the first breaker closed in (etcd's count for it; limit ${p.limit})`, (r) =>
    r.closeWindow ? `${fmt(r.closeWindow.perLimit)} at t=${r.closeWindow.t} s (${r.closeWindow.etcdCount})` : '–');
  lines.push('');
  lines.push('Admitted per 1 s window (200 responses by arrival time; phase: b = before, F = the window etcd froze in, d = frozen, T = the window it thawed in, a = after, p = partly outside the load), with the largest count that etcd\'s bucket held for the same window (strict: granted; leased: granted to replica pools; write-backs after the outage included):');
  lines.push('');
  for (const r of results) {
    if (r.error) continue;
    const ws = r.windows.map((w) => `${w.admitted}${{ before: 'b', freeze: 'F', during: 'd', thaw: 'T', after: 'a', partial: 'p' }[w.phase]}`);
    lines.push(`- ${r.consistency}: ${ws.join(' ')}`);
    lines.push(`  - etcd's count per window: ${r.windows.map((w) => w.etcdCount).join(' ')}; admitted responses sent in the window before: ${r.windows.map((w) => w.straddling).join(' ')}`);
  }
  lines.push('');
  lines.push('Observations (found in the numbers by the bench):');
  lines.push('');
  for (const r of results) {
    const obs = observations(p, r);
    lines.push(`- ${r.consistency}: ${obs.length ? obs.join('; ') : 'nothing unexpected'}`);
  }
  const failed = results.filter((r) => r.error);
  if (failed.length > 0) {
    lines.push('');
    lines.push('## Failed runs');
    for (const r of failed) {
      lines.push('');
      lines.push(`${r.consistency}:`);
      lines.push('```');
      lines.push(r.error!);
      lines.push('```');
    }
  }
  lines.push('');
  lines.push('How to read this: bench/README.md, "Fault timeline".');
  lines.push('');
  return lines.join('\n');
}

// ---- the chart ----------------------------------------------------------------------------------------

const SERIES = ['admitted (200), per 250 ms bucket', 'admitted per 1 s window', 'limited (429)', 'failed (not 200/429)'];
const SERIES_COLORS = ['#9ecae9', '#1f4e99', '#b0b0b0', '#e4572e'];

function chartSpec(p: Params, results: ModeResult[]): VegaLiteSpec {
  const totalS = (p.normalMs + p.frozenMs + p.afterMs) / 1000;
  const width = 860;
  const x = { type: 'quantitative', scale: { domain: [0, totalS], nice: false }, title: null };
  const xAxis = (title: string | null) => ({ ...x, title, axis: { values: Array.from({ length: Math.floor(totalS) + 1 }, (_, i) => i), format: 'd', grid: true } });
  const color = { field: 'series', type: 'nominal', scale: { domain: SERIES, range: SERIES_COLORS }, legend: { title: null, orient: 'top', direction: 'horizontal', labelLimit: 400, symbolStrokeWidth: 3 } };
  const panels = results
    .filter((r) => !r.error)
    .map((r) => {
      const end = (t: number | null) => Math.min(t ?? totalS, totalS);
      // Shaded: at least one replica degraded; merged over replicas.
      const anyDegraded: Array<{ from: number; to: number }> = [];
      for (const d of [...r.degraded].sort((a, b) => a.from - b.from)) {
        const last = anyDegraded[anyDegraded.length - 1];
        if (d.from >= totalS) continue;
        if (last && d.from <= last.to) last.to = Math.max(last.to, end(d.to));
        else anyDegraded.push({ from: d.from, to: end(d.to) });
      }
      const shade = { data: { values: anyDegraded }, mark: { type: 'rect', color: '#f5a623', opacity: 0.18 }, encoding: { x: { field: 'from', ...x }, x2: { field: 'to' } } };
      const events = [
        { t: r.frozeAt, label: 'etcd frozen (SIGSTOP)' },
        { t: r.thawedAt, label: 'etcd thawed (SIGCONT)' },
      ];
      const eventRules = { data: { values: events }, mark: { type: 'rule', color: '#333', strokeDash: [2, 2] }, encoding: { x: { field: 't', ...x } } };
      const eventLabels = {
        data: { values: events },
        mark: { type: 'text', align: 'left', dx: 4, dy: 2, baseline: 'top', fontSize: 10, color: '#333' },
        encoding: { x: { field: 't', ...x }, y: { value: 0 }, text: { field: 'label' } },
      };
      const mid = p.bucketMs / 2000;
      const shown = r.buckets.filter((b) => b.t + p.bucketMs / 1000 <= totalS + 1e-9);
      const rates = shown.flatMap((b) => [
        { t: b.t + mid, series: SERIES[0], perS: b.admittedPerS },
        { t: b.t + mid, series: SERIES[2], perS: b.limitedPerS },
        { t: b.t + mid, series: SERIES[3], perS: b.failedPerS },
      ]);
      const windows = r.windows.map((w) => ({ from: Math.max(0, w.t), to: Math.min(totalS, w.t + 1), perS: w.admitted, series: SERIES[1], phase: w.phase }));
      const maxRate = Math.max(p.limit * p.loadFactor * 1.25, ...r.buckets.map((b) => Math.max(b.admittedPerS, b.limitedPerS, b.failedPerS)));
      const y = { type: 'quantitative', scale: { domain: [0, maxRate], nice: true } };
      const rate = {
        width,
        height: 210,
        layer: [
          shade,
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
        height: 120,
        layer: [
          shade,
          eventRules,
          { data: { values: latency }, mark: { type: 'line', interpolate: 'step', color: '#6a3d9a', strokeWidth: 1.5 }, encoding: { x: { field: 't', ...xAxis(null) }, y: { field: 'p99', ...yl, title: 'p99 latency, ms' } } },
          {
            data: { values: [{ ms: p.envoyTimeoutMs, label: `Envoy's ext_authz deadline ${p.envoyTimeoutMs} ms` }, { ms: DEFAULT_BREAKER.timeoutMs, label: `etcd operation timeout ${DEFAULT_BREAKER.timeoutMs} ms` }] },
            layer: [
              { mark: { type: 'rule', color: '#999', strokeDash: [6, 4] }, encoding: { y: { field: 'ms', ...yl } } },
              { mark: { type: 'text', align: 'right', dy: -5, fontSize: 10, color: '#666' }, encoding: { x: { value: width }, y: { field: 'ms', ...yl }, text: { field: 'label' } } },
            ],
          },
        ],
      };
      // One row per replica: when its health said NOT_SERVING (or did not answer).
      const bars = r.degraded.filter((d) => d.from < totalS).map((d) => ({ replica: `replica ${d.replica}`, from: d.from, to: end(d.to), state: 'degraded (NOT_SERVING)' }));
      for (let rep = 1; rep <= p.replicas; rep++) {
        for (const poll of r.polls.filter((x) => x.replica === rep && x.state === 'no-answer' && x.t <= totalS)) {
          bars.push({ replica: `replica ${rep}`, from: poll.t - p.pollMs / 1000, to: poll.t, state: 'no answer' });
        }
      }
      const replicas = Array.from({ length: p.replicas }, (_, i) => `replica ${i + 1}`);
      const breakers = {
        width,
        height: 16 * p.replicas,
        layer: [
          eventRules,
          {
            data: { values: bars },
            mark: { type: 'bar', height: 11 },
            encoding: {
              x: { field: 'from', ...xAxis('seconds since the load started') },
              x2: { field: 'to' },
              y: { field: 'replica', type: 'nominal', scale: { domain: replicas }, title: null },
              color: { field: 'state', type: 'nominal', scale: { domain: ['degraded (NOT_SERVING)', 'no answer'], range: ['#f5a623', '#555'] }, legend: { title: 'middlebox.etcd health', orient: 'right', labelLimit: 300, titleLimit: 300 } },
            },
          },
        ],
      };
      const open = r.allOpenAfterFreezeMs === null ? 'not every breaker opened' : `every breaker open ${ms(r.allOpenAfterFreezeMs)} after the freeze`;
      const closed = r.allClosedAfterThawMs === null ? 'not every breaker closed' : `all closed ${ms(r.allClosedAfterThawMs)} after the thaw`;
      return {
        title: {
          text: `consistency: ${r.consistency}`,
          subtitle: `${r.failed} failed of ${r.requests}; admitted ÷ limit before ${fmt(r.phases.before.admittedPerLimitMean)}, frozen ${fmt(r.phases.during.admittedPerLimitMean)}, after ${fmt(r.phases.after.admittedPerLimitMean)}; ${open}, ${closed}. Shaded: some replica degraded`,
          anchor: 'start',
        },
        vconcat: [rate, p99, breakers],
        spacing: 8,
        resolve: { scale: { color: 'independent' } },
      };
    });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `Fault timeline: etcd frozen for ${p.frozenMs / 1000} s under ${p.limit * p.loadFactor} req/s against a ${p.limit}/s global limit, ${p.replicas} replicas`,
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

  log(
    `fault timeline${p.quick ? ' (quick)' : ''}: ${p.replicas} replicas, limit ${p.limit}/s, load ${p.loadFactor}×; ` +
      `${p.normalMs / 1000} s normal, ${p.frozenMs / 1000} s etcd frozen, ${p.afterMs / 1000} s after; modes ${MODES.join(', ')}`,
  );
  const code = codeIdentity();
  const results: ModeResult[] = [];
  for (const [i, mode] of MODES.entries()) {
    log(`[${i + 1}/${MODES.length}] ${mode} (load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs)`);
    const r = await runTimeline(p, mode);
    results.push(r);
    if (r.error) log(`  FAILED: ${r.error.split('\n')[0]}`);
    else {
      log(
        `  admitted ÷ limit before ${fmt(r.phases.before.admittedPerLimitMean)}, frozen ${fmt(r.phases.during.admittedPerLimitMean)}, after ${fmt(r.phases.after.admittedPerLimitMean)}; ` +
          `failed ${r.failed} of ${r.requests}; every breaker open ${ms(r.allOpenAfterFreezeMs)} after the freeze, closed ${ms(r.allClosedAfterThawMs)} after the thaw ` +
          `(${(r.durationMs / 1000).toFixed(1)} s)`,
      );
    }
  }

  // Another build during the run would have changed what later replicas ran.
  const codeAfter = codeIdentity();
  if (codeAfter.distSrcSha256 !== code.distSrcSha256) {
    code.changedDuringRun = true;
    log(`warning: dist/src changed during the run (${code.distSrcSha256} → ${codeAfter.distSrcSha256}): the modes may have run different code`);
  }
  const meta = await runMetadata(`node dist/bench/fault-timeline.js${p.quick ? ' --quick' : ''}`);
  const base = p.quick ? 'fault-timeline.quick' : 'fault-timeline';
  const svgName = `${base}.svg`;
  const json = {
    ...meta,
    code,
    params: { ...p, modes: MODES, algorithm: 'fixed-window', windowMs: WINDOW_MS, by: 'global', breaker: DEFAULT_BREAKER },
    results,
  };
  const md = markdown(p, results, meta, code, svgName);
  process.stdout.write(`\n${md}`);
  writeResults(base, json, md);
  let chartFailed = false;
  try {
    const svg = await renderSvg(chartSpec(p, results));
    fs.writeFileSync(path.join(resultsDir(), svgName), svg);
    log(`wrote ${path.relative(process.cwd(), path.join(resultsDir(), svgName))}`);
  } catch (e) {
    chartFailed = true;
    log(`could not render the chart: ${(e as Error).stack ?? (e as Error).message}`);
  }
  return results.some((r) => r.error) || chartFailed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
