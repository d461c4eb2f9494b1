// The gRPC server: binds, registers the services, and shuts down gracefully.
import { X509Certificate } from 'node:crypto';
import { lstatSync, readFileSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { createSecureContext } from 'node:tls';
import { MiddleboxError } from '../errors';
import type { DecisionPorts } from '../middlebox/pipeline';
import type { Logger } from '../observability/logger';
import type { DecisionMetrics } from '../observability/metrics';
import type { PolicySource } from '../state/port';
import type { EtcdBreaker } from '../state/resilient/breaker';
import { startHttpAuthzListener, type HttpAuthzListener } from './authz/http';
import { DEFAULT_TRANSLATION_LIMITS, type TranslationLimits } from './authz/request';
import { AuthorizationService } from './authz/service';
import { ExternalProcessorService } from './extproc/service';
import { ServerHealth } from './health';
import { GrpcTransport, type TransportTls } from './transport';
import { watchFiles } from '../file-watch';
import type { DecisionLog } from '../observability/decision-log';

export interface ServerOptions {
  listen: string;
  policies: PolicySource;
  ports: DecisionPorts;
  logger: Logger;
  /** Reported in health as the etcd component. */
  breaker?: EtcdBreaker;
  /** Told about every decision (count by verdict and reason, latency). */
  metrics?: DecisionMetrics;
  /** Which decisions get a log line (default: denials, every one). */
  decisionLog?: DecisionLog;
  /** Serve TLS (and, with clientCa, require client certificates: mTLS); default plaintext. */
  tls?: ServerTls;
  /** Header bytes examined per request (ext_authz and ext_proc); past them 431 headers_too_large. */
  limits?: TranslationLimits;
  /**
   * Largest gRPC message received or sent (default DEFAULT_MAX_MESSAGE_BYTES); gRPC refuses a
   * bigger one with RESOURCE_EXHAUSTED before it is decoded, and the call alone fails.
   */
  maxMessageBytes?: number;
  /** How often TLS files (tls.files) are checked for a change; default DEFAULT_CERT_CHECK_MS. */
  certCheckMs?: number;
  /**
   * Also answer Envoy's ext_authz filter over plain HTTP (its http_service) here: host:port,
   * [v6]:port or unix:/path, with the same TLS as the gRPC listener. Default: off.
   */
  httpAuthzListen?: string;
}

/** gRPC's own default, 4 MiB: far above any request header block Envoy sends. */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** PEM contents of `serve --tls-cert`, `--tls-key` and `--tls-client-ca`. */
export interface ServerTls {
  cert: Buffer;
  key: Buffer;
  /** CA bundle that client certificates must chain to; given, a client without one is refused. */
  clientCa?: Buffer;
  /**
   * The files they came from: given, they are watched and read again when they change (a rotated
   * certificate), for connections made from then on. A set that does not load is logged and the
   * current one kept.
   */
  files?: { cert: string; key: string; clientCa?: string };
}

/** How often the TLS files are checked for a change. */
export const DEFAULT_CERT_CHECK_MS = 1000;

/** Plaintext by default; TLS with a certificate; mTLS (client certificates required and verified) with a client CA. */
export function transportTls(tls: ServerTls | undefined): TransportTls | undefined {
  if (!tls) return undefined;
  try {
    // Loads them as the server will, so that a bad file is a clear error before anything listens.
    createSecureContext({ cert: tls.cert, key: tls.key, ...(tls.clientCa ? { ca: tls.clientCa } : {}) });
  } catch (e) {
    throw new MiddleboxError('bad_listen_address', `the TLS certificate and key do not load: ${(e as Error).message}`);
  }
  return { cert: tls.cert, key: tls.key, clientCa: tls.clientCa };
}

export interface RunningServer {
  /** The bound address: host:port with the real port, or unix:/path. */
  address: string;
  /** The HTTP ext_authz listener's bound address, when one was asked for. */
  httpAuthzAddress?: string;
  health: ServerHealth;
  /** NOT_SERVING, wait `delayMs` for health checkers to notice, then finish in-flight calls (cut after `drainMs`). */
  shutdown(opts: { delayMs: number; drainMs: number }): Promise<void>;
}

/** Validates and normalises a listen address: host:port, [v6]:port, or unix:/absolute/path. */
export function parseListen(listen: string): { target: string; unixPath?: string; host?: string; port?: number } {
  if (listen.startsWith('unix:')) {
    const p = listen.slice('unix:'.length);
    if (!p.startsWith('/')) throw new MiddleboxError('bad_listen_address', `listen address ${listen}: a unix socket path must be absolute (unix:/path)`);
    return { target: `unix:${p}`, unixPath: p };
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d+)$/.exec(listen);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) {
    throw new MiddleboxError('bad_listen_address', `listen address ${JSON.stringify(listen)} is not host:port, [ipv6]:port or unix:/path`);
  }
  return { target: listen, host: m[1]!, port };
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { target, unixPath, host, port: wantedPort } = parseListen(opts.listen);
  const tls = transportTls(opts.tls);
  if (unixPath) await clearStaleSocket(unixPath, opts.listen);

  const maxMessageBytes = opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const server = new GrpcTransport({
    maxReceiveMessageBytes: maxMessageBytes,
    maxSendMessageBytes: maxMessageBytes,
    // Peers resetting streams (Envoy at its deadline, ext_proc at the end of every request) and
    // connections dropped are routine; they cost the call, not the server.
    onError: (e) => opts.logger.debug({ err: e.message }, 'gRPC stream or connection error'),
  });
  const health = new ServerHealth(opts.policies, opts.breaker);
  health.addToServer(server);
  const deps = { policies: opts.policies, ports: opts.ports, logger: opts.logger, metrics: opts.metrics, decisionLog: opts.decisionLog, limits: opts.limits };
  const authorization = new AuthorizationService(deps);
  authorization.addToServer(server);
  new ExternalProcessorService(deps).addToServer(server);

  const port = await server.listen(unixPath ? { path: unixPath } : { host: host!, port: wantedPort! }, tls).catch((e: Error) => {
    throw new MiddleboxError('bad_listen_address', `cannot listen on ${opts.listen}: ${e.message}`);
  });
  const address = unixPath ? target : target.replace(/:\d+$/, `:${port}`);
  const httpAuthz = opts.httpAuthzListen === undefined ? undefined : await startHttpAuthz(opts.httpAuthzListen, tls, authorization, health, deps.limits ?? DEFAULT_TRANSLATION_LIMITS, opts.logger).catch(async (e: unknown) => {
    // (Closing the listener removes its socket file.)
    server.forceShutdown();
    throw e;
  });
  const certWatch = opts.tls?.files && watchCertificate([server, ...(httpAuthz ? [httpAuthz.listener] : [])], opts.tls.files, opts.certCheckMs ?? DEFAULT_CERT_CHECK_MS, opts.logger);

  return {
    address,
    ...(httpAuthz ? { httpAuthzAddress: httpAuthz.address } : {}),
    health,
    async shutdown({ delayMs, drainMs }) {
      certWatch?.stop();
      health.drain();
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      const httpClosed = httpAuthz?.close(drainMs);
      health.close();
      await new Promise<void>((resolve) => {
        const cut = setTimeout(() => {
          opts.logger.warn({ drainMs }, 'in-flight calls did not finish in time; cutting them off');
          server.forceShutdown();
          resolve();
        }, drainMs);
        server.tryShutdown(() => {
          clearTimeout(cut);
          resolve();
        });
      });
      // A unix socket's file goes with its listener: removing it again here could remove the one a
      // new process has bound meanwhile.
      await httpClosed;
    },
  };
}

async function startHttpAuthz(
  listen: string,
  tls: TransportTls | undefined,
  authorization: AuthorizationService,
  health: ServerHealth,
  limits: TranslationLimits,
  logger: Logger,
): Promise<{ address: string; listener: HttpAuthzListener; close(drainMs: number): Promise<void> }> {
  const { target, unixPath, host, port: wantedPort } = parseListen(listen);
  if (unixPath) await clearStaleSocket(unixPath, listen);
  const listener = await startHttpAuthzListener({
    where: unixPath ? { path: unixPath } : { host: host!, port: wantedPort! },
    tls,
    limits,
    decide: (t, started) => authorization.decideTranslated(t, started),
    readiness: () => health.readiness(),
    logger,
  }).catch((e: Error) => {
    throw new MiddleboxError('bad_listen_address', `cannot listen on ${listen} (HTTP ext_authz): ${e.message}`);
  });
  return {
    address: unixPath ? target : target.replace(/:\d+$/, `:${listener.port}`),
    listener,
    close: (drainMs) => listener.close(drainMs),
  };
}

/**
 * Makes way for a unix socket at `path`: a socket file left by a process that was killed is
 * removed; anything else there is refused, as is a socket a live process listens on.
 */
async function clearStaleSocket(path: string, listen: string): Promise<void> {
  let stat;
  try {
    stat = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new MiddleboxError('bad_listen_address', `cannot listen on ${listen}: ${(e as Error).message}`);
  }
  if (!stat.isSocket()) throw new MiddleboxError('bad_listen_address', `cannot listen on ${listen}: ${path} exists and is not a socket (not removed)`);
  // Only a refused connection means nothing listens; any other answer (a full backlog, a socket
  // of another user) leaves the file alone.
  const refusedWith = await new Promise<string | undefined>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve('it accepted a connection');
    });
    probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? undefined : `connecting to it failed with ${e.code ?? e.message}`));
  });
  if (refusedWith !== undefined) throw new MiddleboxError('bad_listen_address', `cannot listen on ${listen}: another process listens on ${path} (${refusedWith}); not removed`);
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new MiddleboxError('bad_listen_address', `cannot listen on ${listen}: ${(e as Error).message}`);
  }
}

/** Reloads the server's certificate, key and client CA when their files change. */
function watchCertificate(servers: Array<{ setSecureContext(tls: TransportTls): void }>, files: NonNullable<ServerTls['files']>, intervalMs: number, logger: Logger): { stop(): void } {
  const list = [files.cert, files.key, ...(files.clientCa ? [files.clientCa] : [])];
  return watchFiles(list, intervalMs, () => {
    try {
      const read = (f: string) => readFileSync(f);
      const next = transportTls({ cert: read(files.cert), key: read(files.key), clientCa: files.clientCa ? read(files.clientCa) : undefined })!;
      for (const server of servers) server.setSecureContext(next);
      logger.info({ cert: files.cert, fingerprint256: new X509Certificate(next.cert).fingerprint256 }, 'TLS certificate reloaded');
    } catch (e) {
      logger.warn({ cert: files.cert, err: (e as Error).message }, 'TLS certificate reload failed; keeping the current certificate');
    }
  });
}
