// Rate-limit accuracy: how close a global limit enforced by N middlebox replicas comes to the limit
// in each consistency mode, what it costs in etcd writes, and what Envoy's own local_ratelimit filter
// admits when each of N Envoys is given the same limit (what a user would configure instead).
//
//   node dist/bench/ratelimit-accuracy.js [--quick]        (make bench-ratelimit)
//
// Every configuration runs on loopback with real processes: a fresh etcd, N `middlebox serve`
// replicas and one Envoy (SidecarLab), or N plain Envoys for the baseline. Open-loop load above the
// limit runs for whole fixed windows; the table goes to bench/results/ratelimit-accuracy.{json,md}.
// bench/README.md says how to read it.
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import { renderBootstrapYaml } from '../src/envoy/bootstrap';
import { EnvoyProcess } from '../src/lab/envoy';
import { freePort, sleep, waitFor } from '../src/lab/ports';
import { SidecarLab } from '../src/lab/sidecar';
import { startHttpUpstream, type Upstream } from '../src/lab/upstream';
import type { Consistency } from '../src/policy/types';
import { connectEtcd } from '../src/state/etcd/client';
import { hardTimeLimit, log, quickFlag, metadataLines, runMetadata, startedAt, writeResults } from './common';
import { policyDocs, waitPolicyInForce } from './ratelimit-lab';
import { openLoop, type Sample } from './load';
import { percentile } from './timeline';

// ---- parameters -----------------------------------------------------------------------------------

const WINDOW_MS = 1000;
const MODES: Consistency[] = ['strict', 'leased', 'local'];
const REPLICAS = [1, 2, 4];

interface Params {
  quick: boolean;
  limit: number;
  /** Offered load as a multiple of the limit. */
  loadFactor: number;
  /** Whole windows of load before the measured ones (the leased rate estimate settles in them). */
  warmupWindows: number;
  /** Windows measured. */
  windows: number;
  requestTimeoutMs: number;
  /** The whole bench is killed after this (children included). */
  hardLimitMs: number;
  /** No new configuration starts after this. */
  softLimitMs: number;
}

function params(argv: string[]): Params {
  const quick = quickFlag(argv, 'ratelimit-accuracy');
  return {
    quick,
    limit: 300,
    loadFactor: 1.5,
    warmupWindows: quick ? 1 : 2,
    windows: quick ? 2 : 6,
    requestTimeoutMs: 2000,
    hardLimitMs: quick ? 120_000 : 540_000,
    softLimitMs: quick ? 95_000 : 420_000,
  };
}

// ---- results --------------------------------------------------------------------------------------

/** One fixed window [w s, w+1 s) of wall-clock time (epoch-aligned, as the middlebox's windows are). */
interface WindowRow {
  window: number;
  /** Requests sent in the window (by send time): the offered load. */
  sent: number;
  /** 200 responses that arrived in the window. */
  admitted: number;
  /** 429 responses that arrived in the window. */
  limited: number;
  /** Anything else (403 = ext_authz error or timeout, 503, 0 = no response). */
  other: number;
  /** Admitted responses counted here that were sent in the window before: their decision may belong there. */
  straddling: number;
  /** strict/leased: tokens etcd granted in this window (the `c` of the bucket's last write for it). */
  etcdGranted?: number;
  /** strict/leased: rate-limit writes to etcd that belong to this window. */
  etcdWrites?: number;
}

interface RunResult {
  setup: 'middlebox' | 'envoy-local-ratelimit';
  consistency?: Consistency;
  /** Middlebox replicas behind one Envoy, or Envoy instances for the baseline. */
  replicas: number;
  offeredRps: number;
  /** Measured windows only. */
  windows: WindowRow[];
  /** Every window with traffic, warm-up and tail included (for the record). */
  allWindows: WindowRow[];
  admittedPerLimit?: { mean: number; max: number; min: number };
  etcd?: {
    /** Server side, exact: tokens etcd granted in a measured window ÷ limit, largest and smallest. */
    grantedPerLimitMax: number;
    grantedPerLimitMin: number;
    /** Tokens etcd granted over the whole run (every window with traffic). */
    granted: number;
    revisionBefore: number;
    revisionAfter: number;
    /** revisionAfter − revisionBefore: every committed write transaction during the run. */
    writes: number;
    /** 200 responses during the whole run (warm-up and tail included). */
    admitted: number;
    writesPerAdmitted: number;
    /** Rate-limit writes that belong to the measured windows, per request admitted in them. */
    steadyWrites: number;
    steadyAdmitted: number;
    steadyWritesPerAdmitted: number;
    /** Writes to keys other than rate-limit buckets (membership, policies) during the run. */
    otherWrites: number;
  };
  latencyMs?: { p50: number; p99: number; max: number };
  /** Responses by status over the whole run. */
  statuses: Record<string, number>;
  /** Envoy's own counters over the run (ext_authz or local_ratelimit), summed over instances. */
  envoyStats: Record<string, number>;
  durationMs: number;
  error?: string;
}

// ---- helpers ----------------------------------------------------------------------------------------

const windowOf = (t: number): number => Math.floor(t / WINDOW_MS);

interface WriteEvent {
  revision: number;
  key: string;
  type: string;
  /** Fixed-window bucket state written: window index and tokens granted in it. */
  state?: { w: number; c: number };
}

/** Every write under the lab's prefix from a revision on, as etcd's watch reports it. */
class EtcdWriteLog {
  readonly events: WriteEvent[] = [];
  private maxRevision = 0;

  private constructor(private readonly watcher: Watcher, private readonly rateLimitPrefix: string) {
    watcher.on('data', (res) => {
      for (const e of res.events) this.add(e.type, e.kv);
    });
  }

  static async start(client: Etcd3, prefix: string, fromRevision: number): Promise<EtcdWriteLog> {
    const watcher = await client.watch().prefix(`${prefix}/`).startRevision(String(fromRevision)).create();
    return new EtcdWriteLog(watcher, `${prefix}/ratelimit/`);
  }

  private add(type: string, kv: IKeyValue): void {
    const revision = Number(kv.mod_revision);
    const key = kv.key.toString();
    let state: WriteEvent['state'];
    if (type === 'Put' && key.startsWith(this.rateLimitPrefix)) {
      try {
        const v = JSON.parse(kv.value.toString()) as { w?: unknown; c?: unknown };
        if (typeof v.w === 'number' && typeof v.c === 'number') state = { w: v.w, c: v.c };
      } catch {
        // not a bucket state; counted as a write all the same
      }
    }
    this.events.push({ revision, key, type, state });
    this.maxRevision = Math.max(this.maxRevision, revision);
  }

  isRateLimit(e: WriteEvent): boolean {
    return e.key.startsWith(this.rateLimitPrefix);
  }

  /** Bucket writes for window w so far. */
  writesFor(w: number): number {
    return this.events.filter((e) => e.state?.w === w).length;
  }

  async caughtUp(revision: number, timeoutMs: number): Promise<void> {
    await waitFor(() => this.maxRevision >= revision, { timeoutMs, intervalMs: 20, what: `the etcd watch to reach revision ${revision}` });
  }

  async stop(): Promise<void> {
    await this.watcher.cancel().catch(() => undefined);
  }
}

function windowRows(samples: Sample[], from: number, to: number, writes?: EtcdWriteLog): WindowRow[] {
  const rows = new Map<number, WindowRow>();
  for (let w = from; w <= to; w++) {
    rows.set(w, { window: w, sent: 0, admitted: 0, limited: 0, other: 0, straddling: 0 });
  }
  for (const s of samples) {
    const sentRow = rows.get(windowOf(Number.isNaN(s.sent) ? s.at : s.sent));
    if (sentRow) sentRow.sent += 1;
    const row = rows.get(windowOf(s.at));
    if (!row) continue;
    if (s.status === 200) {
      row.admitted += 1;
      if (!Number.isNaN(s.sent) && windowOf(s.sent) !== row.window) row.straddling += 1;
    } else if (s.status === 429) row.limited += 1;
    else row.other += 1;
  }
  if (writes) {
    for (const e of writes.events) {
      const row = e.state && rows.get(e.state.w);
      if (!row) continue;
      row.etcdWrites = (row.etcdWrites ?? 0) + 1;
      row.etcdGranted = Math.max(row.etcdGranted ?? 0, e.state!.c);
    }
    for (const row of rows.values()) {
      row.etcdWrites ??= 0;
      row.etcdGranted ??= 0;
    }
  }
  return [...rows.values()];
}

function statusCounts(samples: Sample[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of samples) out[String(s.status)] = (out[String(s.status)] ?? 0) + 1;
  return out;
}

function statsDelta(before: Map<string, number>, after: Map<string, number>, into: Record<string, number>): void {
  for (const [name, value] of after) {
    into[name] = (into[name] ?? 0) + value - (before.get(name) ?? 0);
  }
}

interface Drive {
  samples: Sample[];
  measured: number[];
  firstWindow: number;
  lastWindow: number;
}

/**
 * Open-loop load from just after a window boundary for warm-up + measured windows, plus a short
 * tail so that the last measured window has load to its very end. One progress line per window.
 */
async function driveWindows(p: Params, urls: string[], rate: number, warmupWindows: number, writes?: EtcdWriteLog): Promise<Drive> {
  const now = Date.now();
  const first = windowOf(now) + 1;
  await sleep(first * WINDOW_MS - now + 5);
  const measured = Array.from({ length: p.windows }, (_, i) => first + warmupWindows + i);
  const last = measured[measured.length - 1]!;
  const durationMs = (last + 1) * WINDOW_MS - Date.now() + 250;
  const live: Sample[] = [];
  const tick = () => {
    const w = windowOf(Date.now()) - 1;
    if (w < first || w > last) return;
    const [row] = windowRows(live, w, w, writes);
    const kind = measured.includes(w) ? `window ${w - first + 1 - warmupWindows}/${p.windows}` : 'warm-up';
    const etcd = writes ? `  etcd writes ${row!.etcdWrites}, granted ${row!.etcdGranted}` : '';
    log(`    ${kind.padEnd(11)} sent ${row!.sent}  200: ${row!.admitted} (${(row!.admitted / p.limit).toFixed(3)} of limit)  429: ${row!.limited}  other: ${row!.other}${etcd}`);
  };
  // Ticks 300 ms after each boundary: the window before is complete by then.
  let progress: NodeJS.Timeout | undefined;
  const startProgress = setTimeout(() => {
    progress = setInterval(tick, WINDOW_MS);
  }, 300);
  try {
    const samples = await openLoop({ urls, rate, durationMs, timeoutMs: p.requestTimeoutMs, onSample: (s) => live.push(s) });
    return { samples, measured, firstWindow: first, lastWindow: windowOf(Date.now()) };
  } finally {
    clearTimeout(startProgress);
    clearInterval(progress);
  }
}

function summarise(p: Params, d: Drive, writes?: EtcdWriteLog): Pick<RunResult, 'windows' | 'allWindows' | 'admittedPerLimit' | 'latencyMs' | 'statuses'> {
  const allWindows = windowRows(d.samples, d.firstWindow, d.lastWindow, writes);
  const windows = allWindows.filter((r) => d.measured.includes(r.window));
  const ratios = windows.map((r) => r.admitted / p.limit);
  const inMeasured = d.samples.filter((s) => d.measured.includes(windowOf(s.at)) && !Number.isNaN(s.sent));
  const latencies = inMeasured.map((s) => s.at - s.sent).sort((a, b) => a - b);
  return {
    windows,
    allWindows,
    admittedPerLimit: {
      mean: ratios.reduce((a, b) => a + b, 0) / ratios.length,
      max: Math.max(...ratios),
      min: Math.min(...ratios),
    },
    latencyMs: { p50: percentile(latencies, 50) ?? NaN, p99: percentile(latencies, 99) ?? NaN, max: latencies[latencies.length - 1] ?? NaN },
    statuses: statusCounts(d.samples),
  };
}

// ---- one middlebox configuration ---------------------------------------------------------------------

async function runMiddlebox(p: Params, replicas: number, mode: Consistency): Promise<RunResult> {
  const began = Date.now();
  const offeredRps = p.limit * p.loadFactor;
  const result: RunResult = {
    setup: 'middlebox',
    consistency: mode,
    replicas,
    offeredRps,
    windows: [],
    allWindows: [],
    statuses: {},
    envoyStats: {},
    durationMs: 0,
  };
  let lab: SidecarLab | undefined;
  let client: Etcd3 | undefined;
  let writes: EtcdWriteLog | undefined;
  try {
    lab = await SidecarLab.start({ replicas });
    const url = `http://127.0.0.1:${lab.httpPort}/bench`;
    log(`  etcd ${lab.etcd.endpoint}, replicas ${lab.replicas.map((r) => r.address).join(' ')}, Envoy :${lab.httpPort}`);
    await lab.applyPolicies(policyDocs(mode, p.limit));
    await waitPolicyInForce(url, replicas);
    client = connectEtcd({ endpoints: [lab.etcd.endpoint] });
    const revisionBefore = await lab.etcd.revision();
    writes = await EtcdWriteLog.start(client, lab.prefix, revisionBefore + 1);
    const statsBefore = await lab.envoy.stats('ext_authz');
    log(`  ${offeredRps} req/s open loop for ${p.warmupWindows} warm-up + ${p.windows} measured windows`);
    const drive = await driveWindows(p, [url], offeredRps, p.warmupWindows, writes);
    // Every admitted strict request's write committed before its answer; give stragglers a moment.
    await sleep(300);
    const revisionAfter = await lab.etcd.revision();
    if (revisionAfter > revisionBefore) await writes.caughtUp(revisionAfter, 5000);
    statsDelta(statsBefore, await lab.envoy.stats('ext_authz'), result.envoyStats);
    Object.assign(result, summarise(p, drive, writes));
    const inRun = writes.events.filter((e) => e.revision <= revisionAfter);
    const rateLimitRevisions = new Set(inRun.filter((e) => writes!.isRateLimit(e)).map((e) => e.revision));
    const otherRevisions = new Set(inRun.filter((e) => !rateLimitRevisions.has(e.revision)).map((e) => e.revision));
    const admitted = drive.samples.filter((s) => s.status === 200).length;
    const steadyWrites = result.windows.reduce((a, r) => a + (r.etcdWrites ?? 0), 0);
    const steadyAdmitted = result.windows.reduce((a, r) => a + r.admitted, 0);
    const granted = result.allWindows.reduce((a, r) => a + (r.etcdGranted ?? 0), 0);
    result.etcd = {
      grantedPerLimitMax: Math.max(...result.windows.map((r) => (r.etcdGranted ?? 0) / p.limit)),
      grantedPerLimitMin: Math.min(...result.windows.map((r) => (r.etcdGranted ?? 0) / p.limit)),
      granted,
      revisionBefore,
      revisionAfter,
      writes: revisionAfter - revisionBefore,
      admitted,
      writesPerAdmitted: (revisionAfter - revisionBefore) / admitted,
      steadyWrites,
      steadyAdmitted,
      steadyWritesPerAdmitted: steadyWrites / steadyAdmitted,
      otherWrites: otherRevisions.size,
    };
  } catch (e) {
    result.error = (e as Error).message;
    const tails = lab?.replicas.map((r, i) => `--- middlebox ${i + 1}\n${r.output().split('\n').slice(-15).join('\n')}`);
    if (tails) result.error += `\n${tails.join('\n')}`;
  } finally {
    await writes?.stop();
    client?.close();
    await lab?.stop();
  }
  result.durationMs = Date.now() - began;
  return result;
}

// ---- the Envoy local_ratelimit baseline --------------------------------------------------------------

async function runEnvoyBaseline(p: Params, instances: number, offeredRps: number): Promise<RunResult> {
  const began = Date.now();
  const result: RunResult = {
    setup: 'envoy-local-ratelimit',
    replicas: instances,
    offeredRps,
    windows: [],
    allWindows: [],
    statuses: {},
    envoyStats: {},
    durationMs: 0,
  };
  let app: Upstream | undefined;
  const envoys: EnvoyProcess[] = [];
  try {
    app = await startHttpUpstream({ name: 'app' });
    const urls: string[] = [];
    for (let i = 0; i < instances; i++) {
      const adminPort = await freePort();
      let port = await freePort();
      while (port === adminPort) port = await freePort();
      const config = renderBootstrapYaml({
        nodeId: `bench-envoy-${i + 1}`,
        adminPort,
        inboundHttp: { address: '127.0.0.1', port, appAddress: '127.0.0.1', appPort: app.port },
        extAuthz: false,
        // The same limit on every instance: a full bucket of `limit`, refilled by `limit` each second.
        localRateLimit: { maxTokens: p.limit, tokensPerFill: p.limit, fillIntervalMs: WINDOW_MS },
      });
      envoys.push(await EnvoyProcess.start({ config, adminPort }));
      urls.push(`http://127.0.0.1:${port}/bench`);
    }
    for (const url of urls) {
      await waitFor(async () => (await fetch(url, { signal: AbortSignal.timeout(1000) })).status === 200, {
        timeoutMs: 10_000,
        what: `Envoy to answer on ${url}`,
      });
    }
    // Each bucket starts full (limit tokens) and refills at limit per second: above the limit it
    // takes limit ÷ (rate − limit) seconds to drain that burst; the warm-up covers it.
    const perInstance = offeredRps / instances;
    const drain = perInstance > p.limit ? Math.ceil(p.limit / (perInstance - p.limit)) + 1 : 0;
    const warmup = Math.min(Math.max(p.warmupWindows, drain), 4);
    log(`  ${instances} Envoy(s) on ${urls.map((u) => new URL(u).port).join(' ')}; ${offeredRps} req/s open loop, split evenly; ${warmup} warm-up + ${p.windows} measured windows`);
    const before = await Promise.all(envoys.map((e) => e.stats('http_local_rate_limit')));
    const drive = await driveWindows(p, urls, offeredRps, warmup);
    const after = await Promise.all(envoys.map((e) => e.stats('http_local_rate_limit')));
    envoys.forEach((_, i) => statsDelta(before[i]!, after[i]!, result.envoyStats));
    Object.assign(result, summarise(p, drive));
  } catch (e) {
    result.error = (e as Error).message;
  } finally {
    await Promise.all(envoys.map((e) => e.stop().catch(() => undefined)));
    await app?.close().catch(() => undefined);
  }
  result.durationMs = Date.now() - began;
  return result;
}

// ---- verdicts and the report ------------------------------------------------------------------------

function verdict(r: RunResult): string {
  if (r.error) return 'FAILED (see JSON)';
  const a = r.admittedPerLimit!;
  const eps = 1e-9;
  if (r.setup === 'envoy-local-ratelimit') return '(baseline)';
  const e = r.etcd;
  if (r.consistency === 'strict') {
    // Server side: etcd granted exactly the limit in every measured window, and every 200 of the
    // run is one of those grants (strict has no pool: a grant is an admission).
    const exact = e !== undefined && Math.abs(e.grantedPerLimitMax - 1) < eps && Math.abs(e.grantedPerLimitMin - 1) < eps;
    const backed = e !== undefined && e.granted === e.admitted;
    if (exact && backed) return 'meets (1.000)';
    return `MISSES: ${[!exact && 'etcd grants ≠ limit in a window', !backed && `${e?.admitted} admitted vs ${e?.granted} granted`].filter(Boolean).join(', ')}`;
  }
  if (r.consistency === 'leased') {
    const misses: string[] = [];
    // A pooled token is spent in the window it was granted for, so grants bound admissions exactly.
    if (!e || e.grantedPerLimitMax > 1 + eps) misses.push('etcd granted over the limit');
    if (a.mean < 0.95) misses.push('mean < 0.95');
    if ((r.etcd?.steadyWritesPerAdmitted ?? Infinity) > 0.02) misses.push('> 0.02 writes/admitted');
    return misses.length === 0 ? 'meets (≤ 1.000, ≥ 0.95, ≤ 0.02)' : `MISSES: ${misses.join(', ')}`;
  }
  return '(no target: ≈ ±1 replica share)';
}

function fmt(n: number | undefined, digits = 3): string {
  return n === undefined || Number.isNaN(n) ? '–' : n.toFixed(digits);
}

function markdown(p: Params, results: RunResult[], meta: Record<string, string>): string {
  const lines: string[] = [];
  lines.push('# Rate-limit accuracy');
  lines.push('');
  lines.push(...metadataLines(meta));
  lines.push(
    `- limit: ${p.limit} per 1s, fixed-window, one global bucket; offered load ${p.loadFactor}× the limit (${p.limit * p.loadFactor} req/s) ` +
      `open loop (Envoy baseline: also ${p.loadFactor}× N × the limit, so that N instances can reach their ceiling); ` +
      `${p.warmupWindows} warm-up window(s) (Envoy baseline: until its initially full buckets are drained, up to 4), then ${p.windows} measured 1 s windows, epoch-aligned like the middlebox's`,
  );
  lines.push('- admitted ÷ limit (client side): 200 responses that arrived in a measured window ÷ limit; mean over the measured windows, and the largest window');
  lines.push(
    '- etcd granted ÷ limit (server side, strict and leased): tokens etcd granted for the window (the count in the bucket state written to etcd) ÷ limit, largest measured window. ' +
      'strict admits exactly what was granted; leased admits at most that (pooled tokens expire with their window)',
  );
  lines.push(
    '- etcd writes per admitted: rate-limit writes to etcd that belong to the measured windows (from the bucket state each write carries) ÷ requests admitted in them; ' +
      'in brackets, etcd revision delta over the whole run (warm-up, tail and every other write included) ÷ every request admitted in it',
  );
  lines.push('');
  lines.push('| setup | replicas | offered ÷ limit | admitted ÷ limit: mean | max window | etcd granted ÷ limit, max window | etcd writes per admitted | target | admitted per window |');
  lines.push('|---|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    const setup = r.setup === 'middlebox' ? `middlebox ${r.consistency}` : 'Envoy local_ratelimit, same limit on each';
    const writes = r.etcd
      ? `${fmt(r.etcd.steadyWritesPerAdmitted, 4)} (${fmt(r.etcd.writesPerAdmitted, 4)})`
      : r.setup === 'middlebox' ? '–' : 'none (no shared state)';
    const perWindow = r.error ? r.error.split('\n')[0]! : r.windows.map((w) => w.admitted).join(' ');
    lines.push(
      `| ${setup} | ${r.replicas} | ${fmt(r.offeredRps / p.limit, 2)} | ${fmt(r.admittedPerLimit?.mean)} | ${fmt(r.admittedPerLimit?.max)} | ${r.etcd && r.consistency !== 'local' ? fmt(r.etcd.grantedPerLimitMax) : '–'} | ${writes} | ${verdict(r)} | ${perWindow} |`,
    );
  }
  lines.push('');
  lines.push('Details per run (measured windows): offered requests, latency through Envoy, responses that were neither 200 nor 429,');
  lines.push('admitted responses that arrived in a later window than they were sent (their decision may belong to the window before),');
  lines.push('and for strict/leased the tokens etcd granted per window (leased: granted − admitted = tokens left unspent in replica pools).');
  lines.push('');
  lines.push('| setup | replicas | sent per window | latency p50 / p99 ms | other statuses | straddling | etcd granted per window | etcd writes per window |');
  lines.push('|---|---|---|---|---|---|---|---|');
  for (const r of results) {
    if (r.error) continue;
    const setup = r.setup === 'middlebox' ? `middlebox ${r.consistency}` : 'Envoy local_ratelimit';
    const other = r.windows.reduce((a, w) => a + w.other, 0);
    const straddling = r.windows.reduce((a, w) => a + w.straddling, 0);
    lines.push(
      `| ${setup} | ${r.replicas} | ${r.windows.map((w) => w.sent).join(' ')} | ${fmt(r.latencyMs?.p50, 1)} / ${fmt(r.latencyMs?.p99, 1)} | ${other} | ${straddling} | ` +
        `${r.etcd && r.consistency !== 'local' ? r.windows.map((w) => w.etcdGranted).join(' ') : '–'} | ${r.etcd ? r.windows.map((w) => w.etcdWrites).join(' ') : '–'} |`,
    );
  }
  const failed = results.filter((r) => r.error);
  if (failed.length > 0) {
    lines.push('');
    lines.push('## Failed runs');
    for (const r of failed) {
      lines.push('');
      lines.push(`${r.setup} ${r.consistency ?? ''} × ${r.replicas}:`);
      lines.push('```');
      lines.push(r.error!);
      lines.push('```');
    }
  }
  lines.push('');
  lines.push('How to read this: bench/README.md.');
  lines.push('');
  return lines.join('\n');
}

// ---- main -------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const p = params(process.argv.slice(2));
  // Whatever happens, the bench ends: exit() SIGKILLs every lab child (src/lab/processes.ts).
  hardTimeLimit(p.hardLimitMs);

  const plan: Array<{ label: string; run: () => Promise<RunResult> }> = [];
  for (const replicas of REPLICAS) {
    for (const mode of MODES) {
      plan.push({ label: `middlebox ${mode}, ${replicas} replica(s)`, run: () => runMiddlebox(p, replicas, mode) });
    }
  }
  for (const n of REPLICAS) {
    const rate = p.limit * p.loadFactor;
    if (!p.quick || n === 1) plan.push({ label: `Envoy local_ratelimit × ${n}, ${rate} req/s`, run: () => runEnvoyBaseline(p, n, rate) });
    if (n > 1) {
      const scaled = rate * n;
      plan.push({ label: `Envoy local_ratelimit × ${n}, ${scaled} req/s`, run: () => runEnvoyBaseline(p, n, scaled) });
    }
  }

  log(`rate-limit accuracy${p.quick ? ' (quick)' : ''}: limit ${p.limit}/s, load ${p.loadFactor}×, ${plan.length} runs`);
  const results: RunResult[] = [];
  for (const [i, step] of plan.entries()) {
    if (Date.now() - startedAt > p.softLimitMs) {
      log(`[${i + 1}/${plan.length}] ${step.label}: skipped, the bench has used its time budget`);
      continue;
    }
    log(`[${i + 1}/${plan.length}] ${step.label}`);
    const r = await step.run();
    results.push(r);
    if (r.error) log(`  FAILED: ${r.error.split('\n')[0]}`);
    else {
      const etcd = r.etcd
        ? `; etcd writes/admitted ${fmt(r.etcd.steadyWritesPerAdmitted, 4)} steady, ${fmt(r.etcd.writesPerAdmitted, 4)} whole run (${r.etcd.writes} writes)`
        : '';
      log(`  admitted ÷ limit mean ${fmt(r.admittedPerLimit!.mean)}, max window ${fmt(r.admittedPerLimit!.max)}${etcd}; ${verdict(r)} (${(r.durationMs / 1000).toFixed(1)} s)`);
    }
  }

  const meta = await runMetadata(`node dist/bench/ratelimit-accuracy.js${p.quick ? ' --quick' : ''}`);
  const base = p.quick ? 'ratelimit-accuracy-quick' : 'ratelimit-accuracy';
  const json = { ...meta, params: { ...p, windowMs: WINDOW_MS, algorithm: 'fixed-window', by: 'global' }, results };
  const md = markdown(p, results, meta);
  process.stdout.write(`\n${md}`);
  writeResults(base, json, md);
  return results.some((r) => r.error) ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
