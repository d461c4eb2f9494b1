// A middlebox replica as a real child process (`middlebox serve`), for tests and the demo, and a
// gRPC health client to watch it; its admin port (/healthz, /readyz, /metrics) is on a free port.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { quietIpServerNameWarning } from '../state/etcd/client';
import { freePort } from './ports';
import { LabChild } from './processes';

const CLI = path.join(__dirname, '..', 'cli', 'main.js');

export interface MiddleboxStartOptions {
  etcd: string;
  prefix?: string;
  /** host:port or unix:/path; default a free loopback port. */
  listen?: string;
  /** --http-authz-listen: also answer Envoy's HTTP ext_authz here ('auto': a free loopback port). */
  httpAuthzListen?: string | 'auto';
  logFile?: string;
  /** More `serve` flags, appended as given. */
  extraArgs?: string[];
  /** Flags for node itself, before the script (e.g. --cpu-prof to profile the replica). */
  nodeArgs?: string[];
  logLevel?: string;
  shutdownDelayMs?: number;
  drainMs?: number;
  /** Membership lease TTL in seconds (how soon a dead replica stops counting). */
  memberTtlS?: number;
  /** --etcd-timeout-ms: one etcd operation's deadline before the local fallback answers. */
  etcdTimeoutMs?: number;
  /** --state-dir: keep the last good policies and NAT table here, and start from them. */
  stateDir?: string;
  /** --on-no-state: what decisions do with neither etcd nor a state file (default fail-closed). */
  onNoState?: 'fail-closed' | 'fail-open';
  /** Wait for this health status of service "" before returning (default SERVING; false: do not wait). */
  waitFor?: HealthStatus | false;
  /** --admin-listen: host:port or 'off'; default a free loopback port. */
  adminListen?: string;
  /** Serve gRPC over TLS (--tls-cert, --tls-key) and, with clientCaFile, require client certificates (--tls-client-ca). */
  tls?: { certFile: string; keyFile: string; clientCaFile?: string };
  /** How the lab's health client connects to a TLS replica: the CA to trust and, for mTLS, its certificate. */
  healthTls?: ClientTlsFiles;
  /** TLS to an https:// etcd: --etcd-cacert, --etcd-cert, --etcd-key. */
  etcdTls?: { caFile?: string; certFile?: string; keyFile?: string };
  /** etcd user (--etcd-user); the password goes through MIDDLEBOX_ETCD_PASSWORD, as in production. */
  etcdAuth?: { username: string; password: string };
}

/** PEM files a gRPC client uses to reach a TLS server: the CA that signed it, and a client certificate for mTLS. */
export interface ClientTlsFiles {
  caFile: string;
  certFile?: string;
  keyFile?: string;
}

/** gRPC channel credentials: plaintext, or TLS trusting `tls.caFile` (with a client certificate when given). */
export function clientCredentials(tls?: ClientTlsFiles): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  // The lab dials replicas by IP: see quietIpServerNameWarning.
  quietIpServerNameWarning();
  const read = (f: string | undefined) => (f === undefined ? null : fs.readFileSync(f));
  return grpc.credentials.createSsl(read(tls.caFile), read(tls.keyFile), read(tls.certFile));
}

const HEALTH_CHANNEL_OPTIONS: grpc.ChannelOptions = { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 500 };

export type HealthStatus = 'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'SERVICE_UNKNOWN';

const STATUS_NAMES: Record<number, HealthStatus> = { 0: 'UNKNOWN', 1: 'SERVING', 2: 'NOT_SERVING', 3: 'SERVICE_UNKNOWN' };

export class HealthClient {
  private readonly client: grpc.Client & { Check: Function };

  /** Plaintext by default; `tls` for a replica served with --tls-cert (and a client certificate for mTLS). */
  constructor(readonly address: string, tls?: ClientTlsFiles) {
    const Ctor = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
    // Made before the replica listens: grpc-js's default reconnect backoff (1 s, growing by 1.6 ×)
    // would see it serving seconds late, past a start-up deadline on a busy machine.
    this.client = new Ctor(address, clientCredentials(tls), HEALTH_CHANNEL_OPTIONS) as never;
  }

  check(service = '', timeoutMs = 1000): Promise<HealthStatus> {
    return new Promise((resolve, reject) => {
      this.client.Check({ service }, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: { status: number | string }) => {
        if (err) return err.code === grpc.status.NOT_FOUND ? resolve('SERVICE_UNKNOWN') : reject(err);
        resolve(typeof res.status === 'number' ? STATUS_NAMES[res.status]! : (res.status as HealthStatus));
      });
    });
  }

  close(): void {
    this.client.close();
  }
}

export class MiddleboxProcess {
  readonly health: HealthClient;

  private constructor(
    readonly address: string,
    private readonly child: LabChild,
    /** The admin port's host:port; undefined when started with adminListen 'off'. */
    readonly adminAddress?: string,
    healthTls?: ClientTlsFiles,
    /** The HTTP ext_authz listener, when started with one. */
    readonly httpAuthzAddress?: string,
  ) {
    this.health = new HealthClient(address, healthTls);
  }

  static async start(opts: MiddleboxStartOptions): Promise<MiddleboxProcess> {
    const listen = opts.listen ?? `127.0.0.1:${await freePort()}`;
    const adminListen = opts.adminListen ?? `127.0.0.1:${await freePort()}`;
    const args = [...(opts.nodeArgs ?? []), CLI, 'serve', '--listen', listen, '--etcd', opts.etcd, '--log-level', opts.logLevel ?? 'info', '--admin-listen', adminListen];
    if (opts.prefix) args.push('--prefix', opts.prefix);
    const httpAuthz = opts.httpAuthzListen === 'auto' ? `127.0.0.1:${await freePort()}` : opts.httpAuthzListen;
    if (httpAuthz !== undefined) args.push('--http-authz-listen', httpAuthz);
    args.push('--shutdown-delay-ms', String(opts.shutdownDelayMs ?? 0));
    if (opts.drainMs !== undefined) args.push('--drain-ms', String(opts.drainMs));
    if (opts.memberTtlS !== undefined) args.push('--member-ttl', String(opts.memberTtlS));
    if (opts.etcdTimeoutMs !== undefined) args.push('--etcd-timeout-ms', String(opts.etcdTimeoutMs));
    if (opts.stateDir !== undefined) args.push('--state-dir', opts.stateDir);
    if (opts.onNoState !== undefined) args.push('--on-no-state', opts.onNoState);
    args.push(...(opts.extraArgs ?? []));
    if (opts.tls) {
      args.push('--tls-cert', opts.tls.certFile, '--tls-key', opts.tls.keyFile);
      if (opts.tls.clientCaFile) args.push('--tls-client-ca', opts.tls.clientCaFile);
    }
    if (opts.etcdTls?.caFile) args.push('--etcd-cacert', opts.etcdTls.caFile);
    if (opts.etcdTls?.certFile) args.push('--etcd-cert', opts.etcdTls.certFile);
    if (opts.etcdTls?.keyFile) args.push('--etcd-key', opts.etcdTls.keyFile);
    if (opts.etcdAuth) args.push('--etcd-user', opts.etcdAuth.username);
    const env = opts.etcdAuth ? { ...process.env, MIDDLEBOX_ETCD_PASSWORD: opts.etcdAuth.password } : undefined;
    const child = LabChild.spawn({ name: `middlebox ${listen}`, command: process.execPath, args, logFile: opts.logFile, env });
    const mb = new MiddleboxProcess(listen, child, adminListen === 'off' ? undefined : adminListen, opts.healthTls, httpAuthz);
    const want = opts.waitFor ?? 'SERVING';
    if (want) {
      try {
        await child.waitReady(async () => (await mb.health.check('')) === want, 15_000, `health ${want} on ${listen}`);
      } catch (e) {
        mb.health.close();
        throw e;
      }
    }
    return mb;
  }

  get pid(): number {
    return this.child.pid;
  }

  get exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.child.exited;
  }

  output(): string {
    return this.child.output();
  }

  /** GET on the admin port: /healthz, /readyz or /metrics. */
  admin(path: string, timeoutMs = 2000): Promise<{ status: number; contentType: string; body: string }> {
    const address = this.adminAddress;
    if (!address) return Promise.reject(new Error(`replica ${this.address} runs without an admin port`));
    return adminGet(address, path, timeoutMs);
  }

  /** One scrape of /metrics, parsed. */
  async metrics(timeoutMs = 2000): Promise<MetricSample[]> {
    const r = await this.admin('/metrics', timeoutMs);
    if (r.status !== 200) throw new Error(`GET /metrics on ${this.adminAddress}: ${r.status}`);
    return parseMetrics(r.body);
  }

  signal(signal: NodeJS.Signals): void {
    this.child.signal(signal);
  }

  /** Resolves with the exit code and signal once the process has ended. */
  exitStatus(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.child.exited;
  }

  async stop(graceMs = 5000): Promise<void> {
    this.health.close();
    await this.child.stop(graceMs);
  }

  async kill(): Promise<void> {
    this.health.close();
    await this.child.kill();
  }
}

/** A GET on an admin port (host:port). */
export function adminGet(address: string, path: string, timeoutMs = 2000): Promise<{ status: number; contentType: string; body: string }> {
  const at = address.lastIndexOf(':');
  const host = address.slice(0, at).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(at + 1));
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path, agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer from ${address}${path} within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** One sample line of the Prometheus text format: name{labels} value. */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * The samples of a Prometheus text exposition (version 0.0.4): comment lines are skipped, label
 * values unescaped, timestamps ignored. Enough for tests and the demo to read a replica's metrics.
 */
export function parseMetrics(text: string): MetricSample[] {
  const out: MetricSample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const body = m[3] ?? '';
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/g;
    let consumed = 0;
    for (let l = label.exec(body); l; l = label.exec(body)) {
      if (l.index !== consumed) break;
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      consumed = label.lastIndex;
    }
    if (consumed !== body.length) throw new Error(`bad labels in ${JSON.stringify(line)}`);
    out.push({ name: m[1]!, labels, value: parseValue(m[4]!) });
  }
  return out;
}

function parseValue(text: string): number {
  // Case-insensitive, as Prometheus reads them (prom-client writes "Nan").
  const lower = text.toLowerCase();
  if (lower === '+inf' || lower === 'inf') return Infinity;
  if (lower === '-inf') return -Infinity;
  if (lower === 'nan') return NaN;
  const v = Number(text);
  if (Number.isNaN(v)) throw new Error(`not a sample value: ${JSON.stringify(text)}`);
  return v;
}

/** The sum of the samples named `name` whose labels include every one of `match` (0 if none). */
export function sumMetric(samples: readonly MetricSample[], name: string, match: Record<string, string> = {}): number {
  let sum = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) sum += s.value;
  }
  return sum;
}
