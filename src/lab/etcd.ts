// A real single-member etcd on loopback, for tests and the demo: free ports, its own data dir,
// and the failure moves the resilience tests need (kill, freeze, restart on the same data).
// Optionally its client URL speaks TLS (https://), with client certificates required.
import fs from 'node:fs';
import https from 'node:https';
import { freePort } from './ports';
import { findExecutable, LabChild, makeTempDir, removeTempDir, retryWhileAddressInUse } from './processes';

export interface EtcdStartOptions {
  /** Use (and keep) this data dir; otherwise a fresh temp dir is made and removed by stop(). */
  dataDir?: string;
  /** Member name; default "lab". */
  name?: string;
  /** Append etcd's output here instead of keeping only its last lines in memory. */
  logFile?: string;
  /** Serve the client URL over TLS (https://); default plaintext http://. */
  tls?: EtcdTlsOptions;
}

/** etcd's client TLS: --cert-file, --key-file, --trusted-ca-file, --client-cert-auth. */
export interface EtcdTlsOptions {
  certFile: string;
  keyFile: string;
  /** CA that signed the server certificate (the lab's checks trust it) and, with clientCertAuth, client certificates. */
  trustedCaFile: string;
  /** Require a client certificate signed by trustedCaFile on every client connection. */
  clientCertAuth?: boolean;
  /** The certificate the lab's own checks (health, revision) present; needed with clientCertAuth. */
  clientCertFile?: string;
  clientKeyFile?: string;
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
    private readonly tls: EtcdTlsOptions | undefined = undefined,
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
      opts.tls,
    );
    try {
      await etcd.waitHealthy();
    } catch (err) {
      etcd.removeDataDir();
      throw err;
    }
    return etcd;
  }

  /** Client URL, e.g. "http://127.0.0.1:40123" (https:// with TLS). */
  get endpoint(): string {
    return `${this.tls ? 'https' : 'http'}://${HOST}:${this.clientPort}`;
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

  /**
   * SIGSTOP: etcd keeps its connections but answers nothing, like a hung or partitioned node.
   * Resolves once the kernel reports it stopped.
   */
  freeze(): Promise<void> {
    return this.child.suspend();
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
    const request = JSON.stringify({ key: Buffer.from('\0').toString('base64') });
    let body: { header?: { revision?: string } };
    if (this.tls) {
      const res = await tlsRequest(`${this.endpoint}/v3/kv/range`, this.tls, request);
      if (res.status !== 200) throw new Error(`etcd /v3/kv/range: ${res.status}`);
      body = JSON.parse(res.body) as typeof body;
    } else {
      const res = await fetch(`${this.endpoint}/v3/kv/range`, {
        method: 'POST',
        body: request,
        signal: AbortSignal.timeout(2000),
      });
      if (!res.ok) throw new Error(`etcd /v3/kv/range: ${res.status}`);
      body = (await res.json()) as typeof body;
    }
    const revision = Number(body.header?.revision);
    if (!Number.isFinite(revision)) throw new Error(`etcd /v3/kv/range: no revision in ${JSON.stringify(body)}`);
    return revision;
  }

  /** Starts etcd again on the same ports and data dir (stopping it first if it still runs). */
  async restart(): Promise<void> {
    await this.child.stop(3000);
    await retryWhileAddressInUse(async () => {
      this.child = this.launch();
      await this.waitHealthy();
    });
  }

  private launch(): LabChild {
    const client = this.endpoint;
    const peer = `http://${HOST}:${this.peerPort}`;
    const tls = this.tls
      ? [
          '--cert-file', this.tls.certFile,
          '--key-file', this.tls.keyFile,
          '--trusted-ca-file', this.tls.trustedCaFile,
          ...(this.tls.clientCertAuth ? ['--client-cert-auth'] : []),
        ]
      : [];
    return LabChild.spawn({
      name: 'etcd',
      command: etcdExecutable(),
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
        ...tls,
      ],
      env: etcdEnv(),
      logFile: this.logFile,
    });
  }

  private waitHealthy(): Promise<void> {
    const tls = this.tls;
    return this.child.waitReady(
      () => (tls ? isHealthyTls(this.endpoint, tls) : isHealthy(this.endpoint)),
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

/** /health over https, trusting the lab's CA and presenting its client certificate. */
export async function isHealthyTls(endpoint: string, tls: EtcdTlsOptions): Promise<boolean> {
  const res = await tlsRequest(`${endpoint}/health`, tls);
  if (res.status !== 200) return false;
  return (JSON.parse(res.body) as { health?: string }).health === 'true';
}

/** A GET (or, with a body, a POST) over https with the lab's TLS material; fails after 2 s. */
function tlsRequest(url: string, tls: EtcdTlsOptions, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: body === undefined ? 'GET' : 'POST',
        ca: fs.readFileSync(tls.trustedCaFile),
        cert: tls.clientCertFile ? fs.readFileSync(tls.clientCertFile) : undefined,
        key: tls.clientKeyFile ? fs.readFileSync(tls.clientKeyFile) : undefined,
        agent: false,
        timeout: 2000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from ${url} within 2000 ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** The etcd binary (PATH, then Debian's place), or an error that says to run `make deps`. */
export function etcdExecutable(): string {
  return findExecutable('etcd', ['/usr/bin/etcd']);
}
