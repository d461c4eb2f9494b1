// Clients that send real traffic through Envoy for tests and the demo, from a chosen loopback
// source address so that source-CIDR rules can be exercised.
import http from 'node:http';
import net from 'node:net';

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface HttpRequestOptions {
  port: number;
  host?: string;
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  /** Source address to send from (any 127.x.y.z works on Linux loopback). */
  localAddress?: string;
  timeoutMs?: number;
  /** A request body, sent with its content-length. */
  body?: string;
}

export function httpRequest(opts: HttpRequestOptions): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: opts.host ?? '127.0.0.1',
        port: opts.port,
        method: opts.method ?? 'GET',
        path: opts.path ?? '/',
        headers: opts.headers,
        localAddress: opts.localAddress,
        agent: false,
        timeout: opts.timeoutMs ?? 5000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from 127.0.0.1:${opts.port} within ${opts.timeoutMs ?? 5000} ms`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

export interface TcpProbeResult {
  /** The payload came back through the proxy. */
  echoed: boolean;
  /** How the connection ended when it did not echo. */
  detail: string;
}

/** Connects, sends a line, and reports whether the echo came back before the connection closed. */
export function tcpProbe(opts: { port: number; localAddress?: string; timeoutMs?: number }): Promise<TcpProbeResult> {
  const payload = `ping ${Date.now()}\n`;
  return new Promise((resolve) => {
    let received = '';
    let settled = false;
    const finish = (r: TcpProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const socket = net.connect({ host: '127.0.0.1', port: opts.port, localAddress: opts.localAddress }, () => socket.write(payload));
    const timer = setTimeout(() => finish({ echoed: false, detail: 'timed out' }), opts.timeoutMs ?? 3000);
    socket.on('data', (d: Buffer) => {
      received += d.toString('utf8');
      if (received === payload) finish({ echoed: true, detail: 'echoed' });
    });
    socket.on('close', () => finish({ echoed: false, detail: 'closed by the proxy' }));
    socket.on('error', (e) => finish({ echoed: false, detail: e.message }));
  });
}
