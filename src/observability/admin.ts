// The admin HTTP port: what Kubernetes probes and Prometheus scrape.
//   GET /healthz   liveness: 200 while the process runs
//   GET /readyz    readiness: 200 when grpc.health.v1 says SERVING for "" (policy loaded, not
//                  draining), else 503 with the reason
//   GET /metrics   Prometheus exposition
// Plain HTTP on its own port, apart from the gRPC listener, so a scrape never competes with Envoy's
// calls for a connection and a probe needs no gRPC client.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { MiddleboxError } from '../errors';
import type { Logger } from './logger';

export interface Readiness {
  ready: boolean;
  /** Why not, in a word or two (draining, policy_not_loaded, starting). */
  reason?: string;
}

export interface AdminServerOptions {
  /** host:port or [ipv6]:port; port 0 picks a free one. */
  listen: string;
  metrics: { readonly contentType: string; render(): Promise<string> };
  readiness: () => Readiness;
  logger: Logger;
}

export interface AdminServer {
  /** The bound address, host:port with the real port. */
  address: string;
  port: number;
  close(): Promise<void>;
}

/** `off` disables the admin port. */
export const ADMIN_OFF = 'off';

/** host:port or [ipv6]:port → its parts; undefined when it is neither. */
export function parseAdminListen(listen: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]\s]+)):(\d{1,5})$/.exec(listen);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host: m[1] ?? m[2]!, port };
}

export async function startAdminServer(opts: AdminServerOptions): Promise<AdminServer> {
  const parsed = parseAdminListen(opts.listen);
  if (!parsed) throw new MiddleboxError('bad_listen_address', `admin address ${JSON.stringify(opts.listen)} is not host:port or [ipv6]:port`);
  const server = http.createServer((req, res) => void handle(opts, req, res));
  // A slow or stuck client must not hold a socket for ever.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: Error) => reject(new MiddleboxError('bad_listen_address', `cannot listen on admin address ${opts.listen}: ${e.message}`)));
    server.listen(parsed.port, parsed.host, () => resolve());
  });
  server.on('error', (e) => opts.logger.error({ err: e.message }, 'admin server error'));
  const port = (server.address() as AddressInfo).port;
  const host = parsed.host.includes(':') ? `[${parsed.host}]` : parsed.host;
  return {
    address: `${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Prometheus keeps its connection open between scrapes: close idle ones now.
        server.closeAllConnections();
      }),
  };
}

async function handle(opts: AdminServerOptions, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?', 1)[0];
  const send = (status: number, body: string, headers: http.OutgoingHttpHeaders = {}) => {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', ...headers });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  if (path !== '/healthz' && path !== '/readyz' && path !== '/metrics') return send(404, 'not found: try /healthz, /readyz or /metrics\n');
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n', { allow: 'GET, HEAD' });
  try {
    if (path === '/healthz') return send(200, 'ok\n');
    if (path === '/readyz') {
      const r = opts.readiness();
      return r.ready ? send(200, 'ready\n') : send(503, `not ready: ${r.reason ?? 'unknown'}\n`);
    }
    const text = await opts.metrics.render();
    send(200, text, { 'content-type': opts.metrics.contentType });
  } catch (e) {
    opts.logger.error({ err: (e as Error).message, path }, 'admin request failed');
    if (!res.headersSent) send(500, 'internal error\n');
    else res.destroy();
  }
}
