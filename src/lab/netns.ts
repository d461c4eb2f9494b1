// Linux network namespaces for tests that need a network of their own (the capture test runs the
// init container's iptables script in one): made with `ip netns`, joined by veth pairs, and
// processes run inside them, optionally as another user (setpriv). Everything here needs root;
// `netnsUnavailable()` says why it cannot be used on this machine, for tests to skip.
import { execFile, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import { findExecutable, LabChild, setprivExecutable } from './processes';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A user to run a process as; without one it runs as the caller (root). */
export interface RunAs {
  uid: number;
  gid: number;
}

const DEFAULT_RUN_TIMEOUT_MS = 15_000;

/** Why network namespaces cannot be used here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return `not Linux (${process.platform})`;
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'not running as root';
  for (const tool of ['ip', 'setpriv']) {
    try {
      findExecutable(tool, [`/usr/sbin/${tool}`, `/sbin/${tool}`, `/usr/bin/${tool}`]);
    } catch {
      return `${tool} is not installed`;
    }
  }
  // Make and remove one namespace: containers without CAP_SYS_ADMIN fail here.
  const name = `mbx-probe-${crypto.randomBytes(3).toString('hex')}`;
  const add = spawnSync(ipPath(), ['netns', 'add', name], { encoding: 'utf8', timeout: 10_000 });
  if (add.status !== 0) return `ip netns add failed: ${(add.stderr || add.error?.message || '').trim()}`;
  spawnSync(ipPath(), ['netns', 'del', name], { timeout: 10_000 });
  return undefined;
}

/** Runs a command to completion (bounded by timeoutMs; killed after it) and collects its output. */
export function run(command: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      command,
      args,
      { timeout: opts.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024, env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null;
        resolve({ code, stdout, stderr: err && code === null ? `${stderr}${err.message}` : stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Like run(), but fails with the command's output unless it exits 0. */
export async function runOk(command: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await run(command, args, opts);
  if (r.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

/** One named network namespace (`ip netns add`), removed by delete(). */
export class NetworkNamespace {
  private readonly children = new Set<LabChild>();
  private deleted = false;

  private constructor(readonly name: string) {}

  /** A new namespace named `<prefix>-<random>` with its loopback up. */
  static async create(prefix: string): Promise<NetworkNamespace> {
    const name = `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
    await runOk(ipPath(), ['netns', 'add', name]);
    const ns = new NetworkNamespace(name);
    try {
      await ns.execOk('ip', ['link', 'set', 'lo', 'up']);
    } catch (e) {
      await ns.delete();
      throw e;
    }
    return ns;
  }

  /** The argv that runs `command` inside this namespace, as `as` when given. */
  argv(command: string, args: string[], as?: RunAs): string[] {
    const user = as ? [setprivExecutable(), `--reuid=${as.uid}`, `--regid=${as.gid}`, '--clear-groups'] : [];
    return ['netns', 'exec', this.name, ...user, command, ...args];
  }

  /** Runs a command inside the namespace to completion (bounded). */
  exec(command: string, args: string[], opts: { as?: RunAs; timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<RunResult> {
    return run(ipPath(), this.argv(command, args, opts.as), opts);
  }

  async execOk(command: string, args: string[], opts: { as?: RunAs; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
    const r = await this.exec(command, args, opts);
    if (r.code !== 0) throw new Error(`[netns ${this.name}] ${command} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout;
  }

  /**
   * Starts a long-running process inside the namespace. `ip netns exec` and setpriv both exec()
   * the next program in place, so the child's pid is the process itself: killing it by pid kills
   * what runs in the namespace. delete() kills whatever is still running.
   */
  spawn(name: string, command: string, args: string[], opts: { as?: RunAs; env?: NodeJS.ProcessEnv; logFile?: string } = {}): LabChild {
    const child = LabChild.spawn({ name, command: ipPath(), args: this.argv(command, args, opts.as), env: opts.env, logFile: opts.logFile });
    this.children.add(child);
    void child.exited.then(() => this.children.delete(child));
    return child;
  }

  /** Kills every process spawn() started that is still running, then removes the namespace. */
  async delete(): Promise<void> {
    await Promise.all([...this.children].map((c) => c.stop(2000).catch(() => undefined)));
    if (this.deleted) return;
    this.deleted = true;
    const r = await run(ipPath(), ['netns', 'del', this.name]);
    if (r.code !== 0 && !/No such file/.test(r.stderr)) throw new Error(`ip netns del ${this.name}: ${r.stderr.trim()}`);
  }
}

/**
 * A veth pair between two namespaces, each end with an address (CIDR notation, e.g.
 * "10.0.0.1/29" or "fd00::1/64"; more than one gives it extra addresses) and up. The ends are
 * created inside the namespaces, so their names never meet the root namespace's interfaces; they
 * disappear with the namespaces.
 */
export async function connectVeth(
  a: { ns: NetworkNamespace; ifname: string; addresses: string[] },
  b: { ns: NetworkNamespace; ifname: string; addresses: string[] },
): Promise<void> {
  await runOk(ipPath(), ['link', 'add', a.ifname, 'netns', a.ns.name, 'type', 'veth', 'peer', 'name', b.ifname, 'netns', b.ns.name]);
  for (const end of [a, b]) {
    // IPv6 addresses without duplicate address detection: usable at once, not seconds later.
    for (const address of end.addresses) await end.ns.execOk('ip', ['addr', 'add', address, 'dev', end.ifname, ...(address.includes(':') ? ['nodad'] : [])]);
    await end.ns.execOk('ip', ['link', 'set', end.ifname, 'up']);
  }
}

function ipPath(): string {
  return findExecutable('ip', ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip']);
}
