// A real single-member etcd on loopback, for tests and the demo: free ports, its own data dir,
// and the failure moves the resilience tests need (kill, freeze, restart on the same data).
import { freePort } from './ports';
import { findExecutable, LabChild, makeTempDir, removeTempDir } from './processes';

export interface EtcdStartOptions {
  /** Use (and keep) this data dir; otherwise a fresh temp dir is made and removed by stop(). */
  dataDir?: string;
  /** Member name; default "lab". */
  name?: string;
  /** Append etcd's output here instead of keeping only its last lines in memory. */
  logFile?: string;
}

const HOST = '127.0.0.1';
const READY_TIMEOUT_MS = 15_000;

export class EtcdProcess {
  private child: LabChild;

  private constructor(
    private readonly name: string,
    readonly dataDir: string,
    private readonly ownsDataDir: boolean,
    private readonly clientPort: number,
    private readonly peerPort: number,
    private readonly logFile: string | undefined,
  ) {
    this.child = this.launch();
  }

  static async start(opts: EtcdStartOptions = {}): Promise<EtcdProcess> {
    const clientPort = await freePort(HOST);
    let peerPort = await freePort(HOST);
    // The OS may hand the same port out twice since the first was already closed.
    while (peerPort === clientPort) peerPort = await freePort(HOST);
    const dataDir = opts.dataDir ?? makeTempDir('middlebox-etcd-');
    const etcd = new EtcdProcess(
      opts.name ?? 'lab',
      dataDir,
      opts.dataDir === undefined,
      clientPort,
      peerPort,
      opts.logFile,
    );
    try {
      await etcd.waitHealthy();
    } catch (err) {
      etcd.removeDataDir();
      throw err;
    }
    return etcd;
  }

  /** Client URL, e.g. "http://127.0.0.1:40123". */
  get endpoint(): string {
    return `http://${HOST}:${this.clientPort}`;
  }

  get pid(): number {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.running;
  }

  /** The last lines etcd printed. */
  output(): string {
    return this.child.output();
  }

  /** SIGTERM, SIGKILL after 3 s; removes the data dir if start() made it. */
  async stop(): Promise<void> {
    await this.child.stop(3000);
    this.removeDataDir();
  }

  /** SIGKILL, keeping the data dir: a crash. */
  async kill(): Promise<void> {
    await this.child.kill();
  }

  /** SIGSTOP: etcd keeps its connections but answers nothing, like a hung or partitioned node. */
  freeze(): void {
    this.child.signal('SIGSTOP');
  }

  /** SIGCONT after freeze(). */
  thaw(): void {
    this.child.signal('SIGCONT');
  }

  /**
   * The store's current revision. Every write transaction raises it by one (lease grants and
   * keep-alives do not), so the difference over a run counts etcd writes from outside.
   */
  async revision(): Promise<number> {
    const res = await fetch(`${this.endpoint}/v3/kv/range`, {
      method: 'POST',
      body: JSON.stringify({ key: Buffer.from('\0').toString('base64') }),
      signal: AbortSignal.timeout(2000),
    });
    if (!res.ok) throw new Error(`etcd /v3/kv/range: ${res.status}`);
    const body = (await res.json()) as { header?: { revision?: string } };
    const revision = Number(body.header?.revision);
    if (!Number.isFinite(revision)) throw new Error(`etcd /v3/kv/range: no revision in ${JSON.stringify(body)}`);
    return revision;
  }

  /** Starts etcd again on the same ports and data dir (stopping it first if it still runs). */
  async restart(): Promise<void> {
    await this.child.stop(3000);
    this.child = this.launch();
    await this.waitHealthy();
  }

  private launch(): LabChild {
    const client = `http://${HOST}:${this.clientPort}`;
    const peer = `http://${HOST}:${this.peerPort}`;
    return LabChild.spawn({
      name: 'etcd',
      command: findExecutable('etcd', ['/usr/bin/etcd']),
      args: [
        '--name', this.name,
        '--data-dir', this.dataDir,
        '--listen-client-urls', client,
        '--advertise-client-urls', client,
        '--listen-peer-urls', peer,
        '--initial-advertise-peer-urls', peer,
        '--initial-cluster', `${this.name}=${peer}`,
        // etcd 3.4's default logger is deprecated and says so on every start.
        '--logger', 'zap',
      ],
      env: etcdEnv(),
      logFile: this.logFile,
    });
  }

  private waitHealthy(): Promise<void> {
    return this.child.waitReady(
      () => isHealthy(this.endpoint),
      READY_TIMEOUT_MS,
      `etcd to report healthy at ${this.endpoint}/health`,
    );
  }

  private removeDataDir(): void {
    if (this.ownsDataDir) removeTempDir(this.dataDir);
  }
}

/**
 * The environment without ETCD_* variables: etcd reads its flags from them too, and refuses to
 * start when one conflicts with a flag given here.
 */
export function etcdEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('ETCD_')));
}

export async function isHealthy(endpoint: string): Promise<boolean> {
  const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
  if (!res.ok) return false;
  const body = (await res.json()) as { health?: string };
  return body.health === 'true';
}
