// What the time-series benchmarks (fault timeline, dynamic scaling) share: windows and percentiles
// of the load generator's samples, the etcd watch that records every rate-limit write, and how much
// of the machine other processes took while a bench ran.
import fs from 'node:fs';
import type { Etcd3, Watcher } from 'etcd3';
import { waitFor } from '../src/lab/ports';
import type { Sample } from './load';
import { nearestRank } from './slice';

/** The rate limits' window in these benches. */
export const WINDOW_MS = 1000;

/** Index of the 1 s fixed window an instant (ms) falls in: the windows the rate limits count in. */

export const windowOf = (at: number): number => Math.floor(at / WINDOW_MS);

export const round = (n: number, digits = 3): number => Number(n.toFixed(digits));

/** The p-th percentile of ascending values by nearest rank, as the latency bench takes it. */
export function percentile(sorted: number[], p: number): number | null {
  return nearestRank(sorted, p / 100);
}

export const latencyOf = (s: Sample): number => s.at - s.sent;

export const isFailure = (s: Sample): boolean => s.status !== 200 && s.status !== 429;

export function statsDelta(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, value] of after) {
    const d = value - (before.get(name) ?? 0);
    if (d !== 0) out[name] = d;
  }
  return out;
}

/**
 * CPU time of the whole machine and of this bench's own process tree (the bench, etcd, the replicas,
 * Envoy, the app), from /proc: the difference between two snapshots says how much of the machine
 * other processes (a test suite, a build) took meanwhile. Undefined where /proc is not Linux's.
 */

export interface CpuSnapshot {
  busy: number;
  total: number;
  ours: number;
}

export function cpuSnapshot(): CpuSnapshot | undefined {
  try {
    const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, idle, iowait, irq, softirq, steal] = fields as [number, number, number, number, number, number, number, number];
    const busy = user + nice + system + irq + softirq + (steal ?? 0);
    const children = new Map<number, number[]>();
    const cpu = new Map<number, number>();
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      let stat: string;
      try {
        stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      } catch {
        continue; // gone meanwhile
      }
      const { ppid, ticks, reapedTicks } = parseStat(stat);
      const pid = Number(entry);
      // With the CPU of its children that have exited (and been waited for): when a replica exits,
      // its time moves into its parent's, instead of leaving the tree and showing up as the CPU of
      // processes outside it.
      cpu.set(pid, ticks + reapedTicks);
      children.set(ppid, [...(children.get(ppid) ?? []), pid]);
    }
    let ours = 0;
    const stack = [process.pid];
    while (stack.length > 0) {
      const pid = stack.pop()!;
      ours += cpu.get(pid) ?? 0;
      stack.push(...(children.get(pid) ?? []));
    }
    return { busy, total: busy + idle + iowait, ours };
  } catch {
    return undefined;
  }
}

/** "pid (comm) state ppid ... utime stime cutime cstime": comm may hold spaces and parentheses. */
function parseStat(stat: string): { ppid: number; ticks: number; reapedTicks: number } {
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]), reapedTicks: Number(rest[13]) + Number(rest[14]) };
}

/** Linux reports process CPU times in USER_HZ ticks, 100 a second. */
const TICKS_PER_S = 100;

/** CPU seconds (user + system) a process has used so far; undefined if /proc cannot tell (gone, not Linux). */
export function processCpuSeconds(pid: number): number | undefined {
  try {
    return parseStat(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')).ticks / TICKS_PER_S;
  } catch {
    return undefined;
  }
}

/** Share of the machine (percent of all CPUs) used by processes outside this bench between two snapshots. */

export function othersCpuPct(a: CpuSnapshot | undefined, b: CpuSnapshot | undefined): number | null {
  if (!a || !b || b.total <= a.total) return null;
  return round((Math.max(0, b.busy - a.busy - (b.ours - a.ours)) / (b.total - a.total)) * 100, 1);
}

export function fmt(n: number | null | undefined, digits = 3): string {
  return n === null || n === undefined || Number.isNaN(n) ? '–' : n.toFixed(digits);
}

export interface BucketWrite {
  revision: number;
  /** Seconds from the load's start to the watch event's arrival here. */
  t: number;
  /** Window index and count of the fixed-window state written. */
  w: number;
  c: number;
}

/** Every fixed-window state written under the lab's rate-limit prefix, as etcd's watch reports it. */

export class BucketWriteLog {
  readonly writes: BucketWrite[] = [];
  private maxRevision = 0;

  private constructor(private readonly watcher: Watcher, rateLimitPrefix: string, private readonly t0: () => number) {
    watcher.on('data', (res) => {
      for (const e of res.events) {
        const revision = Number(e.kv.mod_revision);
        this.maxRevision = Math.max(this.maxRevision, revision);
        if (e.type !== 'Put' || !e.kv.key.toString().startsWith(rateLimitPrefix)) continue;
        try {
          const v = JSON.parse(e.kv.value.toString()) as { w?: unknown; c?: unknown };
          if (typeof v.w === 'number' && typeof v.c === 'number') this.writes.push({ revision, t: round((Date.now() - this.t0()) / 1000), w: v.w, c: v.c });
        } catch {
          // not a fixed-window state
        }
      }
    });
  }

  static async start(client: Etcd3, prefix: string, fromRevision: number, t0: () => number): Promise<BucketWriteLog> {
    // The whole prefix, so that the last revision of the run is seen whatever wrote it.
    const watcher = await client.watch().prefix(`${prefix}/`).startRevision(String(fromRevision)).create();
    return new BucketWriteLog(watcher, `${prefix}/ratelimit/`, t0);
  }

  /** Waits (bounded) until the watch has delivered the writes up to `revision`; false if it did not. */
  async caughtUp(revision: number, timeoutMs: number): Promise<boolean> {
    return waitFor(() => this.maxRevision >= revision, { timeoutMs, intervalMs: 20, what: `the etcd watch to reach revision ${revision}` }).then(
      () => true,
      () => false,
    );
  }

  async stop(): Promise<void> {
    await this.watcher.cancel().catch(() => undefined);
  }
}
