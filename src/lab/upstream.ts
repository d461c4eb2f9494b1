// Stand-in apps behind Envoy, for tests and the demo: an HTTP server that echoes what reached it
// (so a test sees the headers Envoy and the middlebox added) and a TCP echo server.
import http from 'node:http';
import net from 'node:net';
import { trackSockets } from '../http-drain';

export interface Upstream {
  port: number;
  /** Connections accepted so far. */
  accepted(): number;
  /** Connections the peer closed (its FIN came first) so far. */
  closedByPeer(): number;
  close(): Promise<void>;
}

export interface HttpUpstreamOptions {
  host?: string;
  /** Default: a free port. */
  port?: number;
  /** Reported as `upstream` in every answer, to tell several upstreams apart. */
  name?: string;
}

/** What the HTTP upstream answers, as JSON, to every request. */
export interface UpstreamEcho {
  upstream: string;
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
}

export async function startHttpUpstream(opts: HttpUpstreamOptions = {}): Promise<Upstream> {
  const host = opts.host ?? '127.0.0.1';
  const name = opts.name ?? 'app';
  const server = http.createServer((req, res) => {
    // Drain the body so keep-alive connections stay usable.
    req.resume();
    req.on('end', () => {
      const echo: UpstreamEcho = { upstream: name, method: req.method ?? '', path: req.url ?? '', headers: req.headers };
      // ?redirect: answer as a backend that names itself in a redirect, which NAT must translate.
      const redirect = req.url?.includes('redirect') ? { location: `http://${host}:${(server.address() as net.AddressInfo).port}/next` } : {};
      res.writeHead(redirect.location ? 302 : 200, { 'content-type': 'application/json', ...redirect });
      res.end(JSON.stringify(echo));
    });
  });
  // In this process: the kernel's free port (0), so no other process can take it between a pick and the bind.
  return listen(server, host, opts.port ?? 0);
}

export async function startTcpEcho(opts: { host?: string; port?: number } = {}): Promise<Upstream> {
  const host = opts.host ?? '127.0.0.1';
  const server = net.createServer((socket) => {
    socket.on('error', () => socket.destroy());
    socket.pipe(socket);
  });
  return listen(server, host, opts.port ?? 0);
}

function listen(server: net.Server, host: string, port: number): Promise<Upstream> {
  const sockets = trackSockets(server);
  let accepted = 0;
  let closedByPeer = 0;
  server.on('connection', (socket) => {
    accepted += 1;
    socket.once('end', () => (closedByPeer += 1));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve({
        port: (server.address() as net.AddressInfo).port,
        accepted: () => accepted,
        closedByPeer: () => closedByPeer,
        // Open (keep-alive) connections would hold close() forever; end them.
        close: () =>
          new Promise<void>((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}
