// Child processes that tests and the demo start (etcd, Envoy): their output, readiness, shutdown,
// and a registry so that none outlives the Node process that started it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sleep, waitFor } from './ports';

const running = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let cleanupInstalled = false;

/**
 * Kills every child still running and removes the temp dirs; on exit nothing asynchronous can
 * run, so SIGKILL right away.
 */
function cleanupAll(): void {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
  for (const dir of tempDirs) {
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch {
      // One that cannot go (a child still writing) must not keep the others.
    }
  }
  tempDirs.clear();
}

function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', cleanupAll);
  // A terminating signal skips 'exit'. Only take over signals nobody else handles, and re-raise so
  // the default behaviour (terminate with that signal) still happens.
  // SIGINT too: Ctrl-C in a terminal reaches the children as well, but not always (kill -INT of this
  // process alone), and never removes the temp dirs.
  for (const signal of ['SIGTERM', 'SIGHUP', 'SIGINT'] as const) {
    if (process.listenerCount(signal) > 0) continue;
    process.once(signal, () => {
      cleanupAll();
      process.kill(process.pid, signal);
    });
  }
}

/** A fresh directory under the OS temp dir, removed at exit unless removeTempDir() came first. */
export function makeTempDir(prefix: string): string {
  installCleanup();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

/** Attempts at a restart on the ports a process had, while they are taken. */
const SAME_PORT_ATTEMPTS = 5;

/**
 * Runs `start`, a restart on the ports a process had before, again after a pause while it fails
 * because an address is in use: while the process was down the kernel may have given its port to
 * an outgoing connection as its source port (clients redialling the process take theirs from the
 * same range), and the port is free again once that connection ends.
 */
export async function retryWhileAddressInUse<T>(start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (e) {
      if (attempt >= SAME_PORT_ATTEMPTS || !/address already in use/i.test((e as Error).message)) throw e;
      await sleep(200 * attempt);
    }
  }
}

/**
 * Finds an executable: in the `preferred` locations, then by name on PATH, then in the fallback
 * locations. (A missing preferred one is not worth a word in the error: make deps puts it there.)
 */
export function findExecutable(name: string, fallbacks: string[] = [], preferred: string[] = []): string {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  const candidates = [...preferred, ...dirs.map((d) => path.join(d, name)), ...fallbacks];
  for (const candidate of candidates) {
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here; try the next one
    }
  }
  throw new Error(fallbacks.length ? `${name} not found on PATH or in ${fallbacks.join(', ')} (run \`make deps\`)` : `${name} not found on PATH (run \`make deps\`)`);
}

/** util-linux's setpriv (the parent-death signal below; the capture test's change of user). */
export function setprivExecutable(): string {
  return findExecutable('setpriv', ['/usr/bin/setpriv', '/bin/setpriv']);
}

let setpriv: string | null | undefined;

/**
 * util-linux's setpriv where it can set a parent-death signal (2.33 and later), else null; looked
 * for once.
 */
function pdeathsigTool(): string | null {
  if (setpriv !== undefined) return setpriv;
  setpriv = null;
  if (process.platform !== 'linux') return setpriv;
  try {
    const tool = setprivExecutable();
    const probe = spawnSync(tool, ['--pdeathsig', 'KILL', '--', process.execPath, '-e', ''], { stdio: 'ignore', timeout: 10_000 });
    if (probe.status === 0) setpriv = tool;
  } catch {
    // none here
  }
  return setpriv;
}

/** Whether the lab's children die with this process even when it is killed outright (see diesWithParent). */
export function childrenDieWithParent(): boolean {
  return pdeathsigTool() !== null;
}

/**
 * The command run so that the kernel kills it if this process dies without cleaning up (SIGKILL,
 * the OOM killer, a CI job's time limit), which no exit hook can: setpriv sets the parent-death
 * signal and execs the command, which keeps the pid. As given where there is no such setpriv, or
 * for a command that is not an absolute path (a failed exec would then be setpriv's exit code
 * rather than a spawn error). A child that changes user itself (the capture test's setpriv
 * --reuid) loses the signal: the kernel clears it then.
 */
function diesWithParent(command: string, args: string[]): [string, string[]] {
  const tool = path.isAbsolute(command) ? pdeathsigTool() : null;
  return tool ? [tool, ['--pdeathsig', 'KILL', '--', command, ...args]] : [command, args];
}

/** The last lines of a process's output, kept for error messages. */
class OutputTail {
  private readonly lines: string[] = [];
  private partial = '';

  constructor(private readonly max: number) {}

  push(chunk: Buffer): void {
    const parts = (this.partial + chunk.toString('utf8')).split('\n');
    this.partial = parts.pop() ?? '';
    this.lines.push(...parts);
    if (this.lines.length > this.max) this.lines.splice(0, this.lines.length - this.max);
  }

  text(): string {
    return [...this.lines, this.partial].filter(Boolean).join('\n');
  }
}

export interface LabChildOptions {
  /** Name in messages ("etcd", "envoy"). */
  name: string;
  command: string;
  args: string[];
  /** Append output here; otherwise only the last lines are kept in memory. */
  logFile?: string;
  env?: NodeJS.ProcessEnv;
}

const TAIL_LINES = 200;

/** One spawned process: registered for cleanup, its output tailed, its exit observable. */
export class LabChild {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly tail = new OutputTail(TAIL_LINES);
  private exitedYet = false;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    private readonly logFile: string | undefined,
  ) {
    child.stdout?.on('data', (chunk: Buffer) => this.tail.push(chunk));
    child.stderr?.on('data', (chunk: Buffer) => this.tail.push(chunk));
    this.exited = new Promise((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.exitedYet) return;
        this.exitedYet = true;
        running.delete(child);
        resolve({ code, signal });
      };
      child.once('exit', finish);
      // A failed spawn (ENOENT, EACCES) reports 'error' and never 'exit'.
      child.on('error', (err) => {
        this.tail.push(Buffer.from(`${err.message}\n`));
        if (child.pid === undefined) finish(null, null);
      });
    });
  }

  static spawn(opts: LabChildOptions): LabChild {
    installCleanup();
    const log = opts.logFile ? fs.openSync(opts.logFile, 'a') : undefined;
    const [command, args] = diesWithParent(opts.command, opts.args);
    const child = spawn(command, args, {
      env: opts.env ?? process.env,
      stdio: ['ignore', log ?? 'pipe', log ?? 'pipe'],
    });
    // The child holds its own copy of the descriptor.
    if (log !== undefined) fs.closeSync(log);
    if (child.pid !== undefined) running.add(child);
    return new LabChild(opts.name, child, opts.logFile);
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} has no pid (spawn failed)`);
    return this.child.pid;
  }

  get running(): boolean {
    return !this.exitedYet;
  }

  signal(signal: NodeJS.Signals): void {
    if (!this.exitedYet) this.child.kill(signal);
  }

  /**
   * SIGSTOP, resolved once the kernel reports the process stopped (state T in /proc/<pid>/stat).
   * The signal takes effect asynchronously: a busy machine was seen to let a stopped etcd answer
   * one more request (20 of 150 right after kill(), none once T showed, under CPU load).
   */
  async suspend(): Promise<void> {
    this.signal('SIGSTOP');
    const stat = `/proc/${this.pid}/stat`;
    if (!fs.existsSync(stat)) return; // not Linux: nothing to wait on
    await waitFor(async () => this.exitedYet || fs.readFileSync(stat, 'utf8').split(') ')[1]?.startsWith('T') === true, {
      timeoutMs: 2000,
      intervalMs: 2,
      what: `${this.name} stopped by SIGSTOP`,
    });
  }

  /** The last lines the process printed (read back from the log file when there is one). */
  output(): string {
    if (!this.logFile) return this.tail.text();
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-TAIL_LINES).join('\n');
    } catch {
      return this.tail.text();
    }
  }

  /**
   * Waits until `ready` holds. If the process exits first or the timeout passes, kills it and
   * fails with its last output, which is where the reason is.
   */
  async waitReady(ready: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
    try {
      await waitFor(async () => this.exitedYet || (await ready()), { timeoutMs, what, intervalMs: 100 });
      if (this.exitedYet) {
        const { code, signal } = await this.exited;
        throw new Error(`${this.name} exited (code ${code}, signal ${signal}) before ${what}`);
      }
    } catch (err) {
      await this.kill();
      throw new Error(`${(err as Error).message}\n--- last output of ${this.name} ---\n${this.output()}`);
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.exitedYet) return;
    this.child.kill('SIGCONT'); // a frozen process cannot act on SIGTERM
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** SIGKILL; resolves once the process is gone. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.exited;
  }
}
