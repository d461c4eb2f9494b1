// A middlebox replica as a real child process (`middlebox serve`), for tests and the demo, and a
// gRPC health client to watch it.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { freePort } from './ports';
import { LabChild } from './processes';

const CLI = path.join(__dirname, '..', 'cli', 'main.js');

export interface MiddleboxStartOptions {
  etcd: string;
  prefix?: string;
  /** host:port or unix:/path; default a free loopback port. */
  listen?: string;
  logFile?: string;
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
}

export type HealthStatus = 'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'SERVICE_UNKNOWN';

const STATUS_NAMES: Record<number, HealthStatus> = { 0: 'UNKNOWN', 1: 'SERVING', 2: 'NOT_SERVING', 3: 'SERVICE_UNKNOWN' };

export class HealthClient {
  private readonly client: grpc.Client & { Check: Function };

  constructor(readonly address: string) {
    const Ctor = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
    this.client = new Ctor(address, grpc.credentials.createInsecure()) as never;
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

  private constructor(readonly address: string, private readonly child: LabChild) {
    this.health = new HealthClient(address);
  }

  static async start(opts: MiddleboxStartOptions): Promise<MiddleboxProcess> {
    const listen = opts.listen ?? `127.0.0.1:${await freePort()}`;
    const args = [CLI, 'serve', '--listen', listen, '--etcd', opts.etcd, '--log-level', opts.logLevel ?? 'info'];
    if (opts.prefix) args.push('--prefix', opts.prefix);
    args.push('--shutdown-delay-ms', String(opts.shutdownDelayMs ?? 0));
    if (opts.drainMs !== undefined) args.push('--drain-ms', String(opts.drainMs));
    if (opts.memberTtlS !== undefined) args.push('--member-ttl', String(opts.memberTtlS));
    if (opts.etcdTimeoutMs !== undefined) args.push('--etcd-timeout-ms', String(opts.etcdTimeoutMs));
    if (opts.stateDir !== undefined) args.push('--state-dir', opts.stateDir);
    if (opts.onNoState !== undefined) args.push('--on-no-state', opts.onNoState);
    const child = LabChild.spawn({ name: `middlebox ${listen}`, command: process.execPath, args, logFile: opts.logFile });
    const mb = new MiddleboxProcess(listen, child);
    const want = opts.waitFor ?? 'SERVING';
    if (want) {
      await child.waitReady(async () => (await mb.health.check('')) === want, 15_000, `health ${want} on ${listen}`);
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

  signal(signal: NodeJS.Signals): void {
    this.child.signal(signal);
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
