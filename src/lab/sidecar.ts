// A whole sidecar setup on loopback, as tests, the demo and benchmarks need it: a real etcd, N
// middlebox replicas, an app (HTTP echo and TCP echo) and a real Envoy whose bootstrap comes from
// the same renderer as `middlebox envoy bootstrap`.
import fs from 'node:fs';
import path from 'node:path';
import { renderBootstrapYaml, type BootstrapOptions } from '../envoy/bootstrap';
import type { PolicyDocument } from '../policy/types';
import type { TestPki } from './certs';
import { connectEtcd } from '../state/etcd/client';
import { putPolicies } from '../state/etcd/policies';
import { EnvoyProcess } from './envoy';
import { EtcdProcess } from './etcd';
import { MiddleboxProcess, type MiddleboxStartOptions } from './middlebox';
import { makeTempDir, removeTempDir, retryWhileAddressInUse } from './processes';
import { freePort, waitFor } from './ports';
import { startHttpUpstream, startTcpEcho, type Upstream } from './upstream';

export interface SidecarLabOptions {
  /**
   * Replicas serve gRPC over TLS with the PKI's server certificate (IP:127.0.0.1), and Envoy's
   * middlebox cluster verifies it against the PKI's CA; with `mtls`, replicas also require a client
   * certificate (--tls-client-ca) and Envoy presents the PKI's client certificate.
   */
  middleboxTls?: { pki: TestPki; mtls?: boolean };
  replicas?: number;
  /** Also start a TCP listener with the network ext_authz filter. */
  tcp?: boolean;
  /** Keep every process's log here (default: a temp dir removed by stop()). */
  logDir?: string;
  prefix?: string;
  bootstrap?: Partial<BootstrapOptions>;
  /** Replica listen addresses (default: free loopback ports). */
  listen?: string[];
  /** Membership lease TTL of every replica, in seconds. */
  memberTtlS?: number;
  /**
   * Every replica's --etcd-timeout-ms. The lab's default (LAB_ETCD_TIMEOUT_MS) is longer than the
   * product's: etcd, Envoy, three replicas and the load all share two busy cores here, and a slow
   * answer must not pass for an outage in tests about accuracy.
   */
  etcdTimeoutMs?: number;
  /** Also start the outbound listener (HTTP: ext_proc with NAT; other TCP: network ext_authz; then ORIGINAL_DST). */
  outbound?: boolean;
  /** Give replica i the state dir `<stateDir>/replica-<i+1>` (--state-dir); default none. */
  stateDir?: string;
  /** --on-no-state of every replica. */
  onNoState?: 'fail-closed' | 'fail-open';
  /** More `serve` flags for every replica. */
  serveArgs?: string[];
  /**
   * Replicas also serve HTTP ext_authz (--http-authz-listen on a free port) and Envoy's HTTP
   * ext_authz filter asks them over HTTP/1.1 (bootstrap middleboxHttp) instead of gRPC.
   */
  httpAuthz?: boolean;
}

export const LAB_ETCD_TIMEOUT_MS = 300;

/** How replica i is started, the first time and on a restart alike; only where it listens differs. */
function replicaStartOptions(
  opts: SidecarLabOptions,
  etcd: string,
  prefix: string,
  logDir: string,
  i: number,
  where: Pick<MiddleboxStartOptions, 'listen' | 'httpAuthzListen'>,
): MiddleboxStartOptions {
  return {
    etcd,
    prefix,
    ...where,
    memberTtlS: opts.memberTtlS,
    etcdTimeoutMs: opts.etcdTimeoutMs ?? LAB_ETCD_TIMEOUT_MS,
    logFile: replicaLogFile(logDir, i),
    stateDir: replicaStateDir(opts, i),
    onNoState: opts.onNoState,
    ...replicaTls(opts),
    extraArgs: opts.serveArgs,
  };
}

function replicaLogFile(logDir: string, i: number): string {
  return path.join(logDir, `middlebox-${i + 1}.log`);
}

export class SidecarLab {
  private constructor(
    readonly etcd: EtcdProcess,
    readonly replicas: MiddleboxProcess[],
    readonly envoy: EnvoyProcess,
    readonly app: Upstream,
    readonly tcpApp: Upstream | undefined,
    readonly httpPort: number,
    readonly tcpPort: number | undefined,
    readonly outboundPort: number | undefined,
    readonly logDir: string,
    readonly prefix: string,
    private readonly ownsLogDir: boolean,
    private readonly opts: SidecarLabOptions,
  ) {}

  static async start(opts: SidecarLabOptions = {}): Promise<SidecarLab> {
    const logDir = opts.logDir ?? makeTempDir('middlebox-lab-');
    fs.mkdirSync(logDir, { recursive: true });
    const prefix = opts.prefix ?? '/middlebox';
    const started: Array<{ stop(): Promise<void> } | { close(): Promise<void> }> = [];
    try {
      const etcd = await EtcdProcess.start({ logFile: path.join(logDir, 'etcd.log') });
      started.push(etcd);
      const replicas: MiddleboxProcess[] = [];
      for (let i = 0; i < (opts.replicas ?? 2); i++) {
        const mb = await MiddleboxProcess.start(
          replicaStartOptions(opts, etcd.endpoint, prefix, logDir, i, { listen: opts.listen?.[i], httpAuthzListen: opts.httpAuthz ? 'auto' : undefined }),
        );
        replicas.push(mb);
        started.push(mb);
      }
      const app = await startHttpUpstream({ name: 'app' });
      started.push(app);
      const tcpApp = opts.tcp ? await startTcpEcho() : undefined;
      if (tcpApp) started.push(tcpApp);
      const httpPort = await freePort();
      const tcpPort = tcpApp ? await freePort() : undefined;
      const outboundPort = opts.outbound ? await freePort() : undefined;
      const adminPort = await freePort();
      const config = renderBootstrapYaml({
        adminPort,
        inboundHttp: { address: '127.0.0.1', port: httpPort, appAddress: '127.0.0.1', appPort: app.port },
        inboundTcp: tcpApp && tcpPort ? { address: '127.0.0.1', port: tcpPort, appAddress: '127.0.0.1', appPort: tcpApp.port } : undefined,
        outbound: outboundPort ? { address: '127.0.0.1', port: outboundPort } : undefined,
        middlebox: replicas.map((r) => r.address),
        middleboxHttp: opts.httpAuthz ? replicas.map((r) => r.httpAuthzAddress!) : undefined,
        // Tests and the demo share a small, busy machine: a slow answer must not read as a denial
        // (Envoy's status_on_error). Latency is measured by the benchmarks, not here.
        timeoutMs: 1000,
        middleboxTls: envoyTls(opts),
        ...opts.bootstrap,
      });
      fs.writeFileSync(path.join(logDir, 'envoy.yaml'), config);
      const envoy = await EnvoyProcess.start({ config, adminPort, logFile: path.join(logDir, 'envoy.log') });
      started.push(envoy);
      const lab = new SidecarLab(etcd, replicas, envoy, app, tcpApp, httpPort, tcpPort, outboundPort, logDir, prefix, opts.logDir === undefined, opts);
      await lab.waitMiddleboxHealthy(replicas.length);
      return lab;
    } catch (e) {
      for (const s of started.reverse()) await ('stop' in s ? s.stop() : s.close()).catch(() => undefined);
      throw e;
    }
  }

  /** Waits until Envoy's health checks see `n` healthy replicas (over HTTP too, with httpAuthz). */
  async waitMiddleboxHealthy(n: number, timeoutMs = 15_000): Promise<void> {
    await waitFor(async () => (await this.envoy.clusterHealthy('middlebox')) === n, {
      timeoutMs,
      what: `Envoy to see ${n} healthy middlebox replicas`,
    });
    if (this.opts.httpAuthz) {
      await waitFor(async () => (await this.envoy.clusterHealthy('middlebox_http')) === n, {
        timeoutMs,
        what: `Envoy to see ${n} healthy middlebox HTTP ext_authz listeners`,
      });
    }
  }

  /** Stops replica i (SIGTERM) and starts a new process on the same address. */
  async restartReplica(i: number): Promise<MiddleboxProcess> {
    const old = this.replicas[i]!;
    await old.stop();
    const mb = await retryWhileAddressInUse(() =>
      MiddleboxProcess.start(
        replicaStartOptions(this.opts, this.etcd.endpoint, this.prefix, this.logDir, i, { listen: old.address, httpAuthzListen: old.httpAuthzAddress }),
      ),
    );
    this.replicas[i] = mb;
    return mb;
  }

  /** Replica i's log (0-based; the file is numbered from 1): its stdout and stderr, restarts appended. */
  replicaLogFile(i: number): string {
    return replicaLogFile(this.logDir, i);
  }

  async applyPolicies(docs: PolicyDocument[]): Promise<void> {
    const client = connectEtcd({ endpoints: [this.etcd.endpoint] });
    try {
      await putPolicies(client, this.prefix, docs);
    } finally {
      client.close();
    }
  }

  async stop(): Promise<void> {
    await this.envoy.stop().catch(() => undefined);
    await Promise.all(this.replicas.map((r) => r.stop().catch(() => undefined)));
    await this.app.close().catch(() => undefined);
    await this.tcpApp?.close().catch(() => undefined);
    await this.etcd.stop().catch(() => undefined);
    if (this.ownsLogDir) removeTempDir(this.logDir);
  }
}

/** Each replica keeps its own state dir, as each pod would. */
function replicaStateDir(opts: SidecarLabOptions, i: number): string | undefined {
  return opts.stateDir === undefined ? undefined : path.join(opts.stateDir, `replica-${i + 1}`);
}

/** The replicas' --tls-* flags and the lab health client's credentials, for SidecarLabOptions.middleboxTls. */
function replicaTls(opts: SidecarLabOptions): Pick<MiddleboxStartOptions, 'tls' | 'healthTls'> {
  const t = opts.middleboxTls;
  if (!t) return {};
  return {
    tls: { certFile: t.pki.server.certFile, keyFile: t.pki.server.keyFile, clientCaFile: t.mtls ? t.pki.caFile : undefined },
    healthTls: { caFile: t.pki.caFile, certFile: t.mtls ? t.pki.client.certFile : undefined, keyFile: t.mtls ? t.pki.client.keyFile : undefined },
  };
}

/** Envoy's side of SidecarLabOptions.middleboxTls. */
function envoyTls(opts: SidecarLabOptions): BootstrapOptions['middleboxTls'] {
  const t = opts.middleboxTls;
  if (!t) return undefined;
  return { caFile: t.pki.caFile, certFile: t.mtls ? t.pki.client.certFile : undefined, keyFile: t.mtls ? t.pki.client.keyFile : undefined };
}
