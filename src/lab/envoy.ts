// A real Envoy for tests and the demo: started from a rendered bootstrap, ready when its admin
// says LIVE, inspected through the admin API (stats, cluster health).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { findExecutable, LabChild, makeTempDir, removeTempDir } from './processes';

export interface EnvoyStartOptions {
  /** Bootstrap YAML; its admin must listen on 127.0.0.1:adminPort. */
  config: string;
  adminPort: number;
  /** Append Envoy's output here instead of keeping only its last lines in memory. */
  logFile?: string;
  /** Envoy --log-level; default "warn". */
  logLevel?: string;
  /**
   * Envoy --base-id. Not needed to run several Envoys at once: hot restart is disabled, so no
   * shared memory region is claimed.
   */
  baseId?: number;
  /** More command-line options (`--concurrency 1`). */
  extraArgs?: string[];
}

const ADMIN_HOST = '127.0.0.1';
const READY_TIMEOUT_MS = 20_000;

export class EnvoyProcess {
  private constructor(
    private readonly child: LabChild,
    private readonly configDir: string,
    readonly adminPort: number,
  ) {}

  static async start(opts: EnvoyStartOptions): Promise<EnvoyProcess> {
    const configDir = makeTempDir('middlebox-envoy-');
    const configFile = path.join(configDir, 'envoy.yaml');
    fs.writeFileSync(configFile, opts.config);
    const args = ['-c', configFile, '--log-level', opts.logLevel ?? 'warn', '--disable-hot-restart'];
    if (opts.baseId !== undefined) args.push('--base-id', String(opts.baseId));
    if (opts.extraArgs) args.push(...opts.extraArgs);
    const child = LabChild.spawn({ name: 'envoy', command: envoyExecutable(), args, logFile: opts.logFile });
    const envoy = new EnvoyProcess(child, configDir, opts.adminPort);
    try {
      await child.waitReady(() => envoy.isLive(), READY_TIMEOUT_MS, `envoy admin /ready on :${opts.adminPort}`);
    } catch (err) {
      envoy.removeConfig();
      throw err;
    }
    return envoy;
  }

  get pid(): number {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.running;
  }

  /** The last lines Envoy printed. */
  output(): string {
    return this.child.output();
  }

  /** SIGTERM, SIGKILL after 3 s; removes the config file. */
  async stop(): Promise<void> {
    await this.child.stop(3000);
    this.removeConfig();
  }

  /**
   * Counters and gauges whose names match `filter` (a regular expression, as Envoy's admin takes
   * it). Histograms are left out: they are not single numbers.
   */
  async stats(filter?: string): Promise<Map<string, number>> {
    const query = filter === undefined ? '' : `?filter=${encodeURIComponent(filter)}`;
    const stats = new Map<string, number>();
    for (const line of (await this.admin(`/stats${query}`)).split('\n')) {
      const m = /^(\S+): (-?\d+)$/.exec(line);
      if (m) stats.set(m[1]!, Number(m[2]));
    }
    return stats;
  }

  /** How many hosts of `cluster` Envoy considers healthy right now. */
  async clusterHealthy(cluster: string): Promise<number> {
    // Lines read "cluster::host::health_flags::healthy"; the host may contain "::" (IPv6), so
    // match the ends of the line rather than splitting it.
    return (await this.admin('/clusters'))
      .split('\n')
      .filter((line) => line.startsWith(`${cluster}::`) && line.endsWith('::health_flags::healthy')).length;
  }

  /** GET on the admin API; fails on a non-200 answer. */
  async admin(pathAndQuery: string): Promise<string> {
    const res = await fetch(`http://${ADMIN_HOST}:${this.adminPort}${pathAndQuery}`, {
      signal: AbortSignal.timeout(2000),
    });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`envoy admin ${pathAndQuery}: ${res.status} ${body.trim()}`);
    return body;
  }

  private async isLive(): Promise<boolean> {
    const res = await fetch(`http://${ADMIN_HOST}:${this.adminPort}/ready`, { signal: AbortSignal.timeout(1000) });
    return res.status === 200 && (await res.text()).trim() === 'LIVE';
  }

  private removeConfig(): void {
    removeTempDir(this.configDir);
  }
}

/** Runs `envoy --mode validate` on a bootstrap; `output` says what is wrong when `ok` is false. */
export async function validateConfig(yamlText: string): Promise<{ ok: boolean; output: string }> {
  const dir = makeTempDir('middlebox-envoy-validate-');
  const file = path.join(dir, 'envoy.yaml');
  fs.writeFileSync(file, yamlText);
  try {
    return await new Promise((resolve) => {
      execFile(
        envoyExecutable(),
        ['--mode', 'validate', '-c', file, '--disable-hot-restart', '--log-level', 'warn'],
        { timeout: 30_000, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => resolve({ ok: err === null, output: `${stdout}${stderr}` }),
      );
    });
  } finally {
    removeTempDir(dir);
  }
}

/**
 * Where `make deps` puts Envoy when the system Python refuses to install it (PEP 668): the
 * project's own virtualenv.
 */
export const TOOLS_VENV = path.join(__dirname, '..', '..', '..', '.tools', 'venv');

/** Names the envoy binary the lab runs (the demo, the tests, the benchmarks), e.g. another release's. */
export const ENVOY_BIN_ENV = 'MIDDLEBOX_ENVOY_BIN';

/**
 * The envoy binary: $MIDDLEBOX_ENVOY_BIN when set; else the project virtualenv's when there is one
 * (make deps checked its release), else the first on PATH; else an error that says what to do.
 */
export function envoyExecutable(): string {
  const given = process.env[ENVOY_BIN_ENV];
  if (given) {
    try {
      fs.accessSync(given, fs.constants.X_OK);
      if (fs.statSync(given).isFile()) return given;
    } catch {
      // said below
    }
    throw new Error(`${ENVOY_BIN_ENV}=${given}: not an executable file`);
  }
  return findExecutable('envoy', [], [path.join(TOOLS_VENV, 'bin', 'envoy')]);
}
