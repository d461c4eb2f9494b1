// What every benchmark shares: progress lines, where results go, and the run's metadata.
import { execFile, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findExecutable, LabChild } from '../src/lab/processes';
import { envoyExecutable } from '../src/lab/envoy';
import { etcdExecutable } from '../src/lab/etcd';

export const startedAt = Date.now();

/** A progress line with the seconds since the bench started. */
export function log(line: string): void {
  const s = ((Date.now() - startedAt) / 1000).toFixed(1).padStart(6);
  process.stdout.write(`[${s}s] ${line}\n`);
}

/** The repository's root (where package.json is), whether run from dist/bench or elsewhere. */
export function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

/** The repository's bench/results, or the directory in the environment variable BENCH_RESULTS_DIR. */
export function resultsDir(): string {
  const override = process.env.BENCH_RESULTS_DIR;
  if (override) return path.resolve(override);
  return path.join(repoRoot(), 'bench', 'results');
}

export function versionOf(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, stdout) => {
      if (err) return resolve('?');
      // Envoy prints "version: <sha>/1.40.0/Clean/RELEASE/..." (after a path that may hold other numbers).
      const m = /version: \S*?\/(\d+\.\d+\.\d+)\//.exec(stdout) ?? /(\d+\.\d+\.\d+)/.exec(stdout);
      resolve(m ? m[1]! : stdout.trim().split('\n')[0] ?? '?');
    });
  });
}

/** The binary the lab runs, or the bare name (whose version then reads '?') where there is none. */
function executableOr(find: () => string, name: string): string {
  try {
    return find();
  } catch {
    return name;
  }
}

/** The run's header lines for a results markdown file: command, date, machine, versions. */
export function metadataLines(meta: Record<string, string>): string[] {
  return [`- command: \`${meta.command}\``, `- date: ${meta.date}`, `- machine: ${meta.machine}`, `- versions: ${meta.versions}`];
}

/** Command, date, machine and versions: the header of every result file. */
export async function runMetadata(command: string): Promise<Record<string, string>> {
  const [envoy, etcd] = await Promise.all([versionOf(executableOr(envoyExecutable, 'envoy'), ['--version']), versionOf(executableOr(etcdExecutable, 'etcd'), ['--version'])]);
  return {
    command,
    date: new Date().toISOString(),
    machine: `${os.cpus().length} CPU(s) ${os.cpus()[0]?.model ?? ''}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.release()}`,
    versions: `node ${process.version}, envoy ${envoy}, etcd ${etcd}`,
  };
}

/** Writes <name>.json and <name>.md under bench/results. */
export function writeResults(name: string, json: object, markdown: string): void {
  const dir = resultsDir();
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, `${name}.json`), `${JSON.stringify(json, null, 2)}\n`);
  fs.writeFileSync(path.join(dir, `${name}.md`), markdown);
  log(`wrote ${path.relative(process.cwd(), path.join(dir, name))}.{json,md}`);
  refreshReport();
}

/**
 * Regenerates REPORT.md (next to the results directory) from every result file, so that it is fresh
 * after every bench; a failure is logged, never fatal to the bench that just measured.
 */
export function refreshReport(): void {
  try {
    // At call time: report.ts imports this module.
    const report = require('./report') as typeof import('./report');
    log(`regenerated ${path.relative(process.cwd(), report.writeReport())}`);
  } catch (e) {
    log(`could not regenerate the report: ${(e as Error).message}`);
  }
}

/** The one flag every bench takes: --quick for a short run. Anything else is a usage error (exit 2). */
export function quickFlag(argv: string[], script: string): boolean {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`usage: node dist/bench/${script}.js [--quick]\n  --quick    a short run that checks the bench (results *.quick.*), not a result\n`);
    process.exit(0);
  }
  const unknown = argv.filter((a) => a !== '--quick');
  if (unknown.length > 0) {
    process.stderr.write(`unknown argument ${unknown[0]}\nusage: node dist/bench/${script}.js [--quick]\n`);
    process.exit(2);
  }
  return argv.includes('--quick');
}

/** Which code a bench measured: the commit, uncommitted changes under src/, and a hash of the compiled dist/src. */
export interface CodeIdentity {
  head: string;
  uncommittedSrc: string[];
  distSrcSha256: string;
  /** Set by the bench when dist/src hashed differently at the end of the run (a build ran meanwhile). */
  changedDuringRun?: boolean;
}

export function codeIdentity(): CodeIdentity {
  const root = repoRoot();
  const git = (args: string[]) => {
    try {
      return execFileSync('git', args, { cwd: root, timeout: 10_000, encoding: 'utf8' }).trim();
    } catch {
      return '?';
    }
  };
  const hash = crypto.createHash('sha256');
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.name.endsWith('.js')) hash.update(entry.name).update(fs.readFileSync(full));
    }
  };
  walk(path.join(__dirname, '..', 'src'));
  const status = git(['status', '--porcelain', '--', 'src']);
  return {
    head: git(['rev-parse', '--short', 'HEAD']),
    uncommittedSrc: status === '?' || status === '' ? [] : status.split('\n').map((l) => l.trim()),
    distSrcSha256: hash.digest('hex').slice(0, 16),
  };
}

/** pino's JSON lines at warn (40) and above, counted by message. */
export function readWarnings(file: string): Record<string, number> {
  const counts: Record<string, number> = {};
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return counts;
  }
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const entry = JSON.parse(line) as { level?: number; msg?: string; err?: unknown };
      if ((entry.level ?? 0) < 40) continue;
      const err = typeof entry.err === 'string' ? entry.err : (entry.err as { message?: string } | undefined)?.message;
      const key = err ? `${entry.msg ?? '?'}: ${err}` : (entry.msg ?? '?');
      counts[key] = (counts[key] ?? 0) + 1;
    } catch {
      // a line cut short: not a log entry
    }
  }
  return counts;
}

/** Ends the bench (exit 1, every lab child killed on exit) if it is still running after `ms`. */
export function hardTimeLimit(ms: number): void {
  const limit = ms >= 120_000 ? `${ms / 60_000} min` : `${ms / 1000} s`;
  setTimeout(() => {
    log(`bench still running after ${limit}: giving up (children are killed on exit)`);
    process.exit(1);
  }, ms).unref();
}

/** The "code:" line of a result header: the commit, uncommitted src/ changes, the dist hash. */
export function describeCode(code: CodeIdentity): string {
  const uncommitted = code.uncommittedSrc.length ? ` with ${code.uncommittedSrc.length} uncommitted change(s) under src/` : '';
  const changed = code.changedDuringRun ? ' (CHANGED during the run: a build ran meanwhile)' : '';
  return `commit ${code.head}${uncommitted}; dist/src sha256 ${code.distSrcSha256}${changed}`;
}

/** One line of h2load's --log-file: start (µs since the epoch), status (-1: failed stream), duration (µs). */
export interface H2loadRow {
  startUs: number;
  status: number;
  durationUs: number;
}

/** Every request in an h2load --log-file (none if there is no file). */
export function readH2loadLog(file: string): H2loadRow[] {
  const rows: H2loadRow[] = [];
  for (const line of (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '').split('\n')) {
    const [start, status, duration] = line.split('\t');
    if (duration === undefined) continue;
    rows.push({ startUs: Number(start), status: Number(status), durationUs: Number(duration) });
  }
  return rows;
}

/** h2load's own requests per second over its measured duration, from its summary; null if absent. */
export function h2loadRps(output: string): number | null {
  const m = /finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(output);
  return m ? Number(m[1]) : null;
}

let h2loadRuns = 0;

/**
 * Runs h2load to the end (killed if it overruns, and with every lab child if the bench ends); its
 * output, written by h2load straight to a file, so that all of it is there once it has exited (a
 * pipe may still hold the last lines then).
 */
export async function h2load(exe: string, args: string[], seconds: number): Promise<string> {
  const out = path.join(os.tmpdir(), `middlebox-h2load-${process.pid}-${++h2loadRuns}.out`);
  const child = LabChild.spawn({ name: 'h2load', command: exe, args, logFile: out });
  const killer = setTimeout(() => child.signal('SIGKILL'), (seconds + 20) * 1000);
  await child.exited;
  clearTimeout(killer);
  try {
    return fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
  } finally {
    fs.rmSync(out, { force: true });
  }
}

/** h2load's path (the load generator of several benches), or undefined after saying how to install it. */
export function h2loadExecutable(): string | undefined {
  try {
    return findExecutable('h2load');
  } catch {
    process.stderr.write('h2load not found on PATH: run `make deps-bench` (Debian package nghttp2-client)\n');
    return undefined;
  }
}
