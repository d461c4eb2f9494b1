// Local snapshots of shared state (`--state-dir`): the last good policies and NAT table, so that a
// replica started while etcd is unreachable still has something to enforce. One JSON file per kind
// of state, `<dir>/<name>.json`, replaced atomically: the new content goes to a temp file in the
// same directory, is fsynced, and renamed over the old file, so a crash leaves either the old file
// or the new one, never a torn mix. A file that still fails to parse is reported, not thrown.
import fs from 'node:fs';
import path from 'node:path';
import { MiddleboxError } from '../errors';

export function snapshotPath(dir: string, name: string): string {
  return path.join(dir, `${name}.json`);
}

/** What readSnapshot returns for a file that exists but cannot be used. */
export class CorruptSnapshot {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {}

  get message(): string {
    return `state file ${this.path} is unreadable: ${this.reason}`;
  }
}

export function isCorruptSnapshot(v: unknown): v is CorruptSnapshot {
  return v instanceof CorruptSnapshot;
}

/**
 * The parsed content of `<dir>/<name>.json`; undefined when there is no such file; a
 * CorruptSnapshot when it cannot be read or is not JSON. Synchronous on purpose: stores read their
 * snapshot while opening, before the first request. The value is untrusted: validate it.
 */
export function readSnapshot(dir: string, name: string): unknown {
  const file = snapshotPath(dir, name);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return new CorruptSnapshot(file, (e as Error).message);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    return new CorruptSnapshot(file, `not JSON (${(e as Error).message})`);
  }
}

let tempCounter = 0;

/** Writes `value` as JSON to `<dir>/<name>.json` atomically (temp file, fsync, rename, fsync dir). */
export async function writeSnapshot(dir: string, name: string, value: unknown): Promise<void> {
  const file = snapshotPath(dir, name);
  const temp = path.join(dir, `.${name}.json.${process.pid}.${++tempCounter}.tmp`);
  const text = `${JSON.stringify(value)}\n`;
  const handle = await fs.promises.open(temp, 'w', 0o600);
  try {
    try {
      await handle.writeFile(text, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.promises.rename(temp, file);
  } catch (e) {
    await fs.promises.rm(temp, { force: true }).catch(() => undefined);
    throw e;
  }
  await syncDir(dir);
}

/** Makes the rename durable. Best effort: some filesystems refuse to fsync a directory. */
async function syncDir(dir: string): Promise<void> {
  let handle: fs.promises.FileHandle | undefined;
  try {
    handle = await fs.promises.open(dir, 'r');
    await handle.sync();
  } catch {
    // not supported here; the rename itself is still atomic
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/**
 * Creates the state dir if missing and proves it can be written (a probe file is created and
 * removed). Throws a MiddleboxError with a one-line message otherwise: serve reports it and exits 1.
 */
export function ensureStateDir(dir: string): string {
  const resolved = path.resolve(dir);
  try {
    fs.mkdirSync(resolved, { recursive: true });
    const probe = path.join(resolved, `.probe.${process.pid}.tmp`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe, { force: true });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new MiddleboxError('bad_usage', `--state-dir ${JSON.stringify(dir)} cannot be written: ${err.code ?? ''}${err.code ? ' ' : ''}${describe(err)}`);
  }
  return resolved;
}

function describe(err: NodeJS.ErrnoException): string {
  // Node's messages repeat the code ("EACCES: permission denied, open '...'"); keep the readable part.
  return err.message.replace(/^[A-Z]+: /, '');
}

export interface SnapshotWriterOptions {
  /** Wait at least this long between the starts of two writes (default 0: write as soon as idle). */
  minIntervalMs?: number;
  /** A failed write; the next schedule() tries again. */
  onError?: (err: Error) => void;
  /** After each successful write. */
  onWritten?: () => void;
}

/**
 * Coalesces writes of one snapshot file: at most one write in flight, and what is written is the
 * newest value asked for (schedule() takes a producer that runs when the write starts, so a burst
 * of changes costs one serialisation). Timers are unref'd; call flush() or close() before exit.
 */
export class SnapshotWriter {
  private produce: (() => unknown) | undefined;
  private inFlight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastStart = 0;
  private closed = false;
  private idleWaiters: Array<() => void> = [];

  constructor(
    readonly dir: string,
    readonly name: string,
    private readonly opts: SnapshotWriterOptions = {},
  ) {}

  get path(): string {
    return snapshotPath(this.dir, this.name);
  }

  /** Asks for the file to hold produce()'s value; a later schedule() before the write starts replaces it. */
  schedule(produce: () => unknown): void {
    if (this.closed) return;
    this.produce = produce;
    this.kick();
  }

  /** Resolves once everything scheduled so far is written (or failed). */
  flush(): Promise<void> {
    if (!this.produce && !this.inFlight) return Promise.resolve();
    const idle = new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    // A flush does not wait out minIntervalMs.
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.kick();
    return idle;
  }

  /** Writes what is pending, then refuses further schedules. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
  }

  private kick(): void {
    if (this.inFlight || this.timer || !this.produce) return;
    const wait = this.idleWaiters.length > 0 ? 0 : this.lastStart + (this.opts.minIntervalMs ?? 0) - Date.now();
    if (wait > 0) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.kick();
      }, wait);
      this.timer.unref();
      return;
    }
    const produce = this.produce;
    this.produce = undefined;
    this.lastStart = Date.now();
    this.inFlight = (async () => {
      try {
        await writeSnapshot(this.dir, this.name, produce());
        this.opts.onWritten?.();
      } catch (e) {
        this.opts.onError?.(e as Error);
      }
    })().finally(() => {
      this.inFlight = undefined;
      if (this.produce) this.kick();
      else this.settle();
    });
  }

  private settle(): void {
    if (this.produce || this.inFlight || this.timer) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
