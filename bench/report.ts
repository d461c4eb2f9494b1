// bench/REPORT.md: one page over every benchmark's latest full run — the issue's targets with ✔ or ✘,
// and per experiment its headline table, the run's metadata and links to its table and chart.
//
//   node dist/bench/report.js        (make bench-report; every bench also runs it when it writes results)
//
// Reads bench/results/<experiment>.json (BENCH_RESULTS_DIR overrides the directory) and writes
// REPORT.md beside that directory. Quick runs (*.quick.*, *-quick.*) and partial ones (*.only.*) are ignored: they check a bench,
// they are not results. An experiment without a results file gets a note saying how to produce it.
import fs from 'node:fs';
import path from 'node:path';
import { log, resultsDir } from './common';

// ---- the results files, loosely typed: only what the report reads, every field optional --------------

interface CodeInfo {
  head?: string;
  uncommittedSrc?: string[];
  distSrcSha256?: string;
  changedDuringRun?: boolean;
}

interface Meta {
  command?: string;
  date?: string;
  machine?: string;
  versions?: string;
  code?: CodeInfo;
}

export interface RatelimitJson extends Meta {
  params?: { limit?: number; loadFactor?: number; windows?: number; quick?: boolean };
  results?: Array<{
    setup?: string;
    consistency?: string;
    replicas?: number;
    offeredRps?: number;
    admittedPerLimit?: { mean?: number; max?: number; min?: number };
    etcd?: { grantedPerLimitMax?: number; steadyWritesPerAdmitted?: number; writesPerAdmitted?: number };
    error?: string;
  }>;
}

export interface NatJson extends Meta {
  loadGenerator?: string;
  concurrency?: number;
  seconds?: number;
  warmUpS?: number;
  rounds?: number;
  summary?: Array<{ setup?: string; rps?: number; p50?: number; p99?: number; errors?: number }>;
  ratio?: number;
}

export interface EnvoyAuthzJson extends Meta {
  rounds?: number;
  seconds?: number;
  rows?: Array<{ id?: string; label?: string; rps?: number; ratio?: number | null; ratioPerRound?: number[]; envoyUsPerRequest?: number | null; serverUsPerRequest?: number | null }>;
}

interface FaultPhase {
  admittedPerLimitMean?: number | null;
  p99Ms?: number | null;
}

export interface FaultJson extends Meta {
  params?: { limit?: number; replicas?: number; frozenMs?: number; loadFactor?: number };
  results?: Array<{
    consistency?: string;
    phases?: { before?: FaultPhase; during?: FaultPhase; after?: FaultPhase };
    requests?: number;
    failed?: number;
    allOpenAfterFreezeMs?: number | null;
    allClosedAfterThawMs?: number | null;
    error?: string;
  }>;
}

interface LatencyRow {
  id?: string;
  label?: string;
  kind?: string;
  consistency?: string;
  filters?: string;
  transport?: string;
  /** 'http' for ext_authz over HTTP (http_service); absent (gRPC) in results before it existed. */
  authzProtocol?: string;
  fixed?: Array<{ rate?: number; p50Ms?: number | null; p99Ms?: number | null }>;
  saturation?: { rps?: number; ok200?: number; seconds?: number } | null;
  saturationRatio?: number | null;
  addedP99Ms?: number | null;
  error?: string;
}

export interface LatencyJson extends Meta {
  params?: { targetRate?: number; rates?: number[]; quick?: boolean };
  results?: LatencyRow[];
}

export interface ScalingJson extends Meta {
  params?: { limit?: number; durationMs?: number; slots?: number; loadFactor?: number };
  panicCheck?: { endpoints?: number; healthy?: number; requests?: number; failed?: number; error?: string } | null;
  results?: Array<{
    consistency?: string;
    requests?: number;
    failed?: number;
    segments?: Array<{ label?: string; from?: number; to?: number; windows?: number; admittedPerLimitMean?: number | null; admittedPerLimitMax?: number | null; failed?: number; responses?: number }>;
    events?: Array<{ action?: string; label?: string; t?: number; healthAt?: number | null; envoyAt?: number | null; failedUntilNext?: number; responsesUntilNext?: number }>;
    observations?: string[];
    error?: string;
  }>;
}

/** Every experiment the report knows, in the report's order. */
export const EXPERIMENTS = [
  { id: 'ratelimit-accuracy', title: 'Rate-limit accuracy', make: 'make bench-ratelimit', chart: false },
  { id: 'nat-cost', title: 'NAT path cost', make: 'make bench-nat', chart: false },
  { id: 'fault-timeline', title: 'Fault timeline (etcd frozen under load)', make: 'make bench-faults', chart: true },
  { id: 'latency', title: 'Latency and throughput', make: 'make bench-latency', chart: true },
  { id: 'envoy-authz-cost', title: "What Envoy spends on an ext_authz call", make: 'make bench-envoy-authz', chart: false },
  { id: 'scaling', title: 'Dynamic scaling', make: 'make bench-scaling', chart: true },
] as const;

export type ExperimentId = (typeof EXPERIMENTS)[number]['id'];

export interface Loaded {
  ratelimit?: RatelimitJson;
  nat?: NatJson;
  faults?: FaultJson;
  latency?: LatencyJson;
  envoyAuthz?: EnvoyAuthzJson;
  scaling?: ScalingJson;
}

// ---- the targets of the benchmarks issue --------------------------------------------------------------

export const TARGETS = {
  saturationRatio: 0.5,
  addedP99Ms: 1,
  addedP99Rate: 1000,
  leasedWritesPerAdmitted: 0.02,
  admittedMin: 0.95,
  admittedMax: 1,
} as const;

export interface TargetCheck {
  target: string;
  /** The row of the experiment the value comes from. */
  configuration: string;
  measured: string;
  /** null: not measured (no results file, no such row, or the row failed). */
  met: boolean | null;
  /** The results file it was read from. */
  source: string;
}

const EPS = 1e-9;

const num = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);

function p99At(r: LatencyRow | undefined, rate: number): number | null {
  const f = r?.fixed?.find((x) => x.rate === rate);
  return f && num(f.p99Ms) ? f.p99Ms : null;
}

/** The issue's targets, from whatever results there are. Pure: the unit test feeds it fixtures. */
export function checkTargets(data: Loaded): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const sat = `saturation with the middlebox firewall + a leased limit ≥ ${TARGETS.saturationRatio} × Envoy with no filter`;
  const added = `p99 added over Envoy with no filter at ${TARGETS.addedP99Rate.toLocaleString('en-US')} req/s ≤ ${TARGETS.addedP99Ms} ms (local and leased)`;
  const writes = `leased: ≤ ${TARGETS.leasedWritesPerAdmitted} etcd writes per admitted request`;
  const admitted = `admitted ÷ limit within [${TARGETS.admittedMin.toFixed(2)}, ${TARGETS.admittedMax.toFixed(3)}] (strict and leased)`;
  const missing = (target: string, source: string) => checks.push({ target, configuration: '–', measured: `not measured (no ${source})`, met: null, source });

  // Latency: ratios and differences against the baseline measured at the start of the same run.
  const lat = data.latency;
  if (!lat?.results) {
    missing(sat, 'latency.json');
    missing(added, 'latency.json');
  } else {
    // Only the baseline measured beside the others: a run whose baseline failed has no ratios (the
    // row measured again at the end of a one-round run drifted with everything else meanwhile).
    const baseline = lat.results.find((r) => r.id === 'envoy' && !r.error);
    const row = (consistency: string, transport: string, protocol: string) =>
      lat.results!.find(
        (r) => r.kind === 'middlebox' && r.consistency === consistency && r.filters === 'ext_authz' && r.transport === transport && (r.authzProtocol ?? 'grpc') === protocol,
      );
    const where = (transport: string) => (transport === 'unix' ? 'unix socket' : 'TCP');
    // gRPC rows are always expected; HTTP ext_authz rows are reported when the run has them.
    const cases = (consistencies: string[]) =>
      ['grpc', 'http'].flatMap((protocol) =>
        consistencies.flatMap((consistency) =>
          ['tcp', 'unix'].map((transport) => ({ consistency, transport, protocol, r: row(consistency, transport, protocol) })),
        ),
      ).filter((c) => c.protocol === 'grpc' || c.r !== undefined);
    for (const { transport, r } of cases(['leased'])) {
      const config = r?.label ?? `middlebox leased, ext_authz, ${where(transport)}`;
      const base = baseline?.saturation?.rps;
      // 200s per measured second, unrounded where the run recorded them (rps is rounded).
      const perS = (s: { rps?: number; ok200?: number; seconds?: number } | null | undefined) => (s && num(s.ok200) && num(s.seconds) && s.seconds > 0 ? s.ok200 / s.seconds : s?.rps);
      const mineS = perS(r?.saturation);
      const baseS = perS(baseline?.saturation);
      const ratio = r && !r.error && num(mineS) && num(baseS) && baseS > 0 ? mineS / baseS : r && num(r.saturationRatio) ? r.saturationRatio : null;
      checks.push({
        target: sat,
        configuration: config,
        measured: ratio === null ? (r?.error ? 'the run failed' : 'not measured') : `${(Math.floor(ratio * 1000 + EPS) / 1000).toFixed(3)} × (${r?.saturation?.rps ?? '?'} vs ${base ?? '?'} req/s)`,
        met: ratio === null ? null : ratio >= TARGETS.saturationRatio - EPS,
        source: 'latency.json',
      });
    }
    for (const { consistency, transport, r } of cases(['local', 'leased'])) {
      const config = r?.label ?? `middlebox ${consistency}, ext_authz, ${where(transport)}`;
      const mine = r && !r.error ? p99At(r, TARGETS.addedP99Rate) : null;
      const base = p99At(baseline, TARGETS.addedP99Rate);
      const diff = mine !== null && base !== null ? mine - base : null;
      checks.push({
        target: added,
        configuration: config,
        measured: diff === null ? (r?.error ? 'the run failed' : `not measured at ${TARGETS.addedP99Rate} req/s`) : `${diff >= 0 ? '+' : ''}${(Math.ceil(diff * 100 - EPS) / 100).toFixed(2)} ms (p99 ${mine!.toFixed(2)} vs ${base!.toFixed(2)} ms)`,
        met: diff === null ? null : diff <= TARGETS.addedP99Ms + EPS,
        source: 'latency.json',
      });
    }
  }

  // Rate-limit accuracy: every leased row for writes; strict and leased rows for admitted ÷ limit.
  const rl = data.ratelimit;
  if (!rl?.results) {
    missing(writes, 'ratelimit-accuracy.json');
    missing(admitted, 'ratelimit-accuracy.json');
  } else {
    const rows = rl.results.filter((r) => r.setup === 'middlebox');
    const leased = rows.filter((r) => r.consistency === 'leased');
    if (leased.length === 0) missing(writes, 'leased row in ratelimit-accuracy.json');
    for (const r of leased) {
      const w = r.error ? undefined : r.etcd?.steadyWritesPerAdmitted;
      checks.push({
        target: writes,
        configuration: `leased, ${r.replicas ?? '?'} replica(s)`,
        measured: num(w) ? w.toFixed(4) : r.error ? 'the run failed' : 'not measured',
        met: num(w) ? w <= TARGETS.leasedWritesPerAdmitted + EPS : null,
        source: 'ratelimit-accuracy.json',
      });
    }
    const bounded = rows.filter((r) => r.consistency === 'strict' || r.consistency === 'leased');
    if (bounded.length === 0) missing(admitted, 'strict or leased row in ratelimit-accuracy.json');
    for (const r of bounded) {
      const mean = r.error ? undefined : r.admittedPerLimit?.mean;
      const granted = r.etcd?.grantedPerLimitMax;
      // Above the limit is judged on etcd's grants (exact), not on arrival-time windows, which a
      // response arriving just after a window boundary inflates (bench/README.md, "Counting per window").
      const upper = num(granted) ? granted : r.admittedPerLimit?.max;
      const met = num(mean) && num(upper) ? mean >= TARGETS.admittedMin - EPS && upper <= TARGETS.admittedMax + EPS : null;
      checks.push({
        target: admitted,
        configuration: `${r.consistency}, ${r.replicas ?? '?'} replica(s)`,
        measured: num(mean)
          ? `mean ${mean.toFixed(3)}, max window ${num(r.admittedPerLimit?.max) ? r.admittedPerLimit!.max!.toFixed(3) : '–'}${num(granted) ? ` (etcd granted at most ${granted.toFixed(3)})` : ''}`
          : r.error
            ? 'the run failed'
            : 'not measured',
        met,
        source: 'ratelimit-accuracy.json',
      });
    }
  }
  return checks;
}

// ---- reading the results directory ----------------------------------------------------------------------

const KEY: Record<ExperimentId, keyof Loaded> = {
  'ratelimit-accuracy': 'ratelimit',
  'nat-cost': 'nat',
  'fault-timeline': 'faults',
  latency: 'latency',
  'envoy-authz-cost': 'envoyAuthz',
  scaling: 'scaling',
};

/** The results of every known experiment found in `dir`, and why the others are missing. */
export function loadResults(dir: string): { data: Loaded; problems: Partial<Record<ExperimentId, string>> } {
  const data: Loaded = {};
  const problems: Partial<Record<ExperimentId, string>> = {};
  for (const e of EXPERIMENTS) {
    const file = path.join(dir, `${e.id}.json`);
    if (!fs.existsSync(file)) {
      problems[e.id] = 'missing';
      continue;
    }
    try {
      (data as Record<string, unknown>)[KEY[e.id]] = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      problems[e.id] = `could not be read: ${(err as Error).message.split('\n')[0]}`;
    }
  }
  return { data, problems };
}

// ---- the Markdown -----------------------------------------------------------------------------------------

function fmt(n: unknown, digits = 3): string {
  return num(n) ? n.toFixed(digits) : '–';
}

const mark = (met: boolean | null): string => (met === null ? '–' : met ? '✔' : '✘');
const cell = (s: string): string => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

function metaLines(m: Meta): string[] {
  const code = m.code;
  const commit = code?.head
    ? `${code.head}${code.uncommittedSrc?.length ? ` with ${code.uncommittedSrc.length} uncommitted change(s) under src/` : ''}${code.changedDuringRun ? ' (dist/src changed during the run)' : ''}`
    : 'not recorded by this bench';
  return [
    `- run: ${m.date ?? '?'}, \`${m.command ?? '?'}\``,
    `- commit: ${commit}`,
    `- machine: ${m.machine ?? '?'}`,
    `- versions: ${m.versions ?? '?'}`,
  ];
}

function table(header: string[], rows: string[][]): string[] {
  return [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`)];
}

function ratelimitSection(j: RatelimitJson): string[] {
  const limit = j.params?.limit;
  const rows = (j.results ?? []).map((r) => [
    r.setup === 'middlebox' ? `middlebox ${r.consistency}` : 'Envoy local_ratelimit, same limit on each',
    String(r.replicas ?? '?'),
    num(r.offeredRps) && num(limit) ? (r.offeredRps / limit).toFixed(2) : '–',
    r.error ? 'FAILED' : fmt(r.admittedPerLimit?.mean),
    fmt(r.admittedPerLimit?.max),
    r.setup === 'middlebox' && r.consistency !== 'local' ? fmt(r.etcd?.grantedPerLimitMax) : '–',
    r.setup === 'middlebox' ? fmt(r.etcd?.steadyWritesPerAdmitted, 4) : '–',
  ]);
  return [
    `A global limit of ${limit ?? '?'}/s (fixed window), open-loop load at ${j.params?.loadFactor ?? '?'} × the limit through one Envoy over N replicas, ${j.params?.windows ?? '?'} measured windows.`,
    '',
    ...table(['setup', 'replicas', 'offered ÷ limit', 'admitted ÷ limit: mean', 'max window', 'etcd granted ÷ limit, max window', 'etcd writes per admitted'], rows),
  ];
}

function natSection(j: NatJson): string[] {
  const rows = (j.summary ?? []).map((s) => [s.setup ?? '?', String(s.rps ?? '–'), String(s.p50 ?? '–'), String(s.p99 ?? '–'), String(s.errors ?? '–')]);
  return [
    `${j.loadGenerator ? `${j.loadGenerator}, c` : 'C'}losed loop, ${j.concurrency ?? '?'} connections, ${j.seconds ?? '?'} s per round${j.warmUpS ? ` after ${j.warmUpS} s of warm-up` : ''}, ${j.rounds ?? '?'} rounds in alternating order; medians.`,
    '',
    ...table(['setup', 'requests/s', 'p50 ms', 'p99 ms', 'errors'], rows),
    '',
    `NAT through the middlebox ÷ Envoy routing directly: **${fmt(j.ratio, 2)}** of the throughput.`,
  ];
}

function envoyAuthzSection(j: EnvoyAuthzJson): string[] {
  const rows = (j.rows ?? []).map((r) => [
    r.label ?? r.id ?? '?',
    String(r.rps ?? '–'),
    r.ratio === null || r.ratio === undefined ? '(baseline)' : `${fmt(r.ratio, 2)} (${(r.ratioPerRound ?? []).map((x) => fmt(x, 2)).join(', ')})`,
    `${r.envoyUsPerRequest ?? '?'} / ${r.serverUsPerRequest ?? '–'}`,
  ]);
  return [
    `Envoy with no filter beside Envoy asking a server that answers without deciding, closed loop, 32 connections, ${j.seconds ?? '?'} s per variation, ${j.rounds ?? '?'} alternating round(s): the line any ext_authz server meets on this machine.`,
    '',
    ...table(['variation', 'requests/s', '÷ its no-filter row (per round)', 'CPU µs per request: Envoy / server'], rows),
  ];
}

function faultSection(j: FaultJson): string[] {
  const results = j.results ?? [];
  const cols = results.map((r) => r.consistency ?? '?');
  const secs = (ms: unknown) => (num(ms) ? `${(ms / 1000).toFixed(2)} s` : 'never');
  const row = (label: string, f: (r: (typeof results)[number]) => string) => [label, ...results.map((r) => (r.error ? 'FAILED' : f(r)))];
  return [
    `${j.params?.replicas ?? '?'} replicas behind one Envoy, ${num(j.params?.limit) && num(j.params?.loadFactor) ? j.params!.limit! * j.params!.loadFactor! : '?'} req/s against a global ${j.params?.limit ?? '?'}/s limit; etcd frozen (SIGSTOP) for ${num(j.params?.frozenMs) ? j.params!.frozenMs! / 1000 : '?'} s, then thawed.`,
    '',
    ...table(
      ['', ...cols],
      [
        row('admitted ÷ limit before the freeze (mean of whole windows)', (r) => fmt(r.phases?.before?.admittedPerLimitMean)),
        row('admitted ÷ limit while etcd is frozen', (r) => fmt(r.phases?.during?.admittedPerLimitMean)),
        row('admitted ÷ limit after the thaw', (r) => fmt(r.phases?.after?.admittedPerLimitMean)),
        row('p99 ms before / frozen / after', (r) => `${fmt(r.phases?.before?.p99Ms, 0)} / ${fmt(r.phases?.during?.p99Ms, 0)} / ${fmt(r.phases?.after?.p99Ms, 0)}`),
        row('freeze → every breaker open', (r) => secs(r.allOpenAfterFreezeMs)),
        row('thaw → every breaker closed', (r) => secs(r.allClosedAfterThawMs)),
        row('failed requests, of all sent', (r) => `${r.failed ?? '?'} of ${r.requests ?? '?'}`),
      ],
    ),
  ];
}

function latencySection(j: LatencyJson): string[] {
  const rates = j.params?.rates ?? [...new Set((j.results ?? []).flatMap((r) => (r.fixed ?? []).map((f) => f.rate)).filter(num))];
  const rows = (j.results ?? []).map((r) => [
    r.label ?? r.id ?? '?',
    ...rates.map((rate) => (r.error && !r.fixed?.length ? 'FAILED' : fmt(p99At(r, rate), 2))),
    num(r.addedP99Ms) ? `${r.addedP99Ms >= 0 ? '+' : ''}${r.addedP99Ms.toFixed(2)}` : '–',
    String(r.saturation?.rps ?? '–'),
    fmt(r.saturationRatio, 2),
  ]);
  return [
    'Fixed rates (h2load, 50 connections) and saturation (32 connections, closed loop), each configuration with a fresh Envoy (and replica).',
    '',
    ...table(['configuration', ...rates.map((x) => `p99 ms at ${x} req/s`), `added p99 at ${j.params?.targetRate ?? '?'} req/s (ms)`, 'saturation req/s', '÷ Envoy, no filter'], rows),
  ];
}

function scalingSection(j: ScalingJson): string[] {
  const results = j.results ?? [];
  const ok = results.find((r) => !r.error);
  const out: string[] = [
    `Open-loop load at ${num(j.params?.limit) && num(j.params?.loadFactor) ? j.params!.limit! * j.params!.loadFactor! : '?'} req/s against a global ${j.params?.limit ?? '?'}/s limit through one Envoy, while replicas are added, stopped (SIGTERM) and killed (SIGKILL) and etcd is frozen and thawed.`,
    '',
  ];
  if (!ok) return [...out, 'Every mode of the run failed: see the table linked below.'];
  const cols = results.map((r) => r.consistency ?? '?');
  const rows: string[][] = [['failed requests, of all sent', ...results.map((r) => (r.error ? 'FAILED' : `${r.failed ?? '?'} of ${r.requests ?? '?'}`))]];
  for (const [i, s] of (ok.segments ?? []).entries()) {
    rows.push([
      `admitted ÷ limit, t=${s.from ?? '?'}–${s.to ?? '?'} s (${s.label ?? '?'}): mean (max) of whole windows`,
      ...results.map((r) => {
        const x = r.segments?.[i];
        return r.error || !x ? '–' : x.windows ? `${fmt(x.admittedPerLimitMean)} (${fmt(x.admittedPerLimitMax)})` : '– (no whole window)';
      }),
    ]);
  }
  for (const [i, e] of (ok.events ?? []).entries()) {
    const what = e.action === 'add' ? 'healthy in Envoy' : e.action === 'stop' || e.action === 'kill' ? 'out of Envoy' : 'every running replica switched';
    rows.push([
      `${e.label ?? '?'}: ${what} after; failed until the next event`,
      ...results.map((r) => {
        const x = r.events?.[i];
        if (r.error || !x) return '–';
        const at = e.action === 'add' || e.action === 'stop' || e.action === 'kill' ? x.envoyAt : x.healthAt;
        return `${num(at) && num(x.t) ? `${(at - x.t).toFixed(2)} s` : 'never'}; ${x.failedUntilNext ?? '?'} of ${x.responsesUntilNext ?? '?'}`;
      }),
    ]);
  }
  out.push(...table(['', ...cols], rows));
  const pc = j.panicCheck;
  if (pc) {
    out.push('');
    out.push(
      pc.error
        ? `The panic threshold check failed: ${pc.error}`
        : `With the product's bootstrap as rendered (panic threshold 0, as in the timeline) and ${pc.healthy ?? '?'} of ${pc.endpoints ?? '?'} endpoints healthy, ${pc.failed ?? '?'} of ${pc.requests ?? '?'} requests failed.`,
    );
  }
  const obs = results.flatMap((r) => (r.observations ?? []).map((o) => `${r.consistency}: ${o}`));
  if (obs.length) {
    out.push('');
    out.push('Observations (from the bench):');
    out.push('');
    out.push(...obs.map((o) => `- ${o}`));
  }
  return out;
}

/** The whole report, from the results in `dir`, with links relative to `reportDir`. */
export function buildReport(dir: string, reportDir: string): string {
  const { data, problems } = loadResults(dir);
  const rel = (file: string) => path.relative(reportDir, path.join(dir, file)).split(path.sep).join('/');
  const lines: string[] = [
    '# Benchmark report',
    '',
    `Generated by \`make bench-report\` (\`node dist/bench/report.js\`, also run by every bench when it writes its results) from the full runs' results in [${rel('') || '.'}/](${rel('') || '.'}/); ` +
      'quick runs are left out. Do not edit by hand. How each number is measured: [bench/README.md](' +
      `${path.relative(reportDir, path.join(path.dirname(dir), 'README.md')).split(path.sep).join('/')}).`,
    '',
    '## Targets',
    '',
    ...table(['target', 'configuration', 'measured', 'met', 'from'], checkTargets(data).map((c) => [c.target, c.configuration, c.measured, mark(c.met), c.source])),
    '',
    '✔ met, ✘ missed, – not measured. Every number comes from one run on the machine named in its section: compare rows of one run rather than runs with each other.',
    '',
  ];
  const sections: Record<ExperimentId, (j: never) => string[]> = {
    'ratelimit-accuracy': ratelimitSection,
    'nat-cost': natSection,
    'fault-timeline': faultSection,
    latency: latencySection,
    'envoy-authz-cost': envoyAuthzSection,
    scaling: scalingSection,
  };
  for (const e of EXPERIMENTS) {
    lines.push(`## ${e.title} — \`${e.make}\``);
    lines.push('');
    const j = data[KEY[e.id]];
    if (!j) {
      lines.push(`_No results: ${rel(`${e.id}.json`)} is ${problems[e.id] ?? 'missing'}. Run \`${e.make}\` to produce it._`);
      lines.push('');
      continue;
    }
    lines.push(...metaLines(j));
    if ((j as { params?: { quick?: unknown } }).params?.quick === true) lines.push('- note: this file holds a quick run, which checks the bench: its numbers are not results');
    const links = [`[full table](${rel(`${e.id}.md`)})`];
    if (e.chart) links.push(`[chart](${rel(`${e.id}.svg`)})`);
    lines.push(`- ${links.join(', ')}; every number: [${e.id}.json](${rel(`${e.id}.json`)})`);
    lines.push('');
    try {
      lines.push(...sections[e.id](j as never));
    } catch (err) {
      lines.push(`_Could not summarise ${e.id}.json: ${(err as Error).message}_`);
    }
    lines.push('');
  }
  // Results of benches this report does not know yet: at least a link.
  const known = new Set<string>(EXPERIMENTS.map((e) => e.id));
  const others = fs.existsSync(dir)
    ? fs
        .readdirSync(dir)
        .filter((f) => f.endsWith('.json') && !/[.-]quick\.json$|\.only\.json$/.test(f) && !known.has(f.slice(0, -'.json'.length)))
        .sort()
    : [];
  if (others.length) {
    lines.push('## Other results');
    lines.push('');
    for (const f of others) {
      const base = f.slice(0, -'.json'.length);
      const md = fs.existsSync(path.join(dir, `${base}.md`)) ? ` ([table](${rel(`${base}.md`)}))` : '';
      lines.push(`- [${f}](${rel(f)})${md}`);
    }
    lines.push('');
  }
  return lines.join('\n');
}

/** Writes REPORT.md beside the results directory; returns its path. */
export function writeReport(dir = resultsDir()): string {
  const reportDir = path.dirname(dir);
  const file = path.join(reportDir, 'REPORT.md');
  fs.mkdirSync(reportDir, { recursive: true });
  fs.writeFileSync(file, buildReport(dir, reportDir));
  return file;
}

if (require.main === module) {
  const args = process.argv.slice(2);
  if (args.length > 0) {
    process.stderr.write(`unknown argument ${args[0]}\nusage: node dist/bench/report.js   (BENCH_RESULTS_DIR=DIR to read another results directory)\n`);
    process.exit(2);
  }
  try {
    const file = writeReport();
    log(`wrote ${path.relative(process.cwd(), file) || file}`);
  } catch (e) {
    process.stderr.write(`report: ${(e as Error).message}\n`);
    process.exit(1);
  }
}
