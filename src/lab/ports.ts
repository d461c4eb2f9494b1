// Ports and waiting, for tests and the demo that start real processes on the local machine.
import net from 'node:net';

/** A port that was free a moment ago: the OS picks it for a socket bound to port 0, then we close it. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  // The kernel may hand a port out again as soon as the probe closes it, so two calls before either
  // port is bound (a replica's gRPC and admin ports, say) could get the same one: never return a
  // port this process was given recently.
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await probePort(host);
    if (!recentlyGiven.includes(port)) {
      recentlyGiven.push(port);
      if (recentlyGiven.length > RECENT_PORTS) recentlyGiven.shift();
      return port;
    }
  }
  throw new Error(`no free port on ${host} that this process was not given recently`);
}

const RECENT_PORTS = 256;
const recentlyGiven: number[] = [];

function probePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

export interface WaitOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** What is awaited, for the timeout message ("etcd health on :2379"). */
  what: string;
}

/**
 * Polls `fn` until it returns true. A throwing `fn` counts as "not yet"; its last error is named in
 * the timeout message, since that usually says why.
 */
export async function waitFor(fn: () => Promise<boolean> | boolean, opts: WaitOptions): Promise<void> {
  const intervalMs = opts.intervalMs ?? 50;
  const deadline = Date.now() + opts.timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      if (await fn()) return;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const cause = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${opts.what}${cause}`);
    }
    await sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())));
  }
}

/** Resolves once a TCP connection to host:port succeeds. */
export function waitForPort(host: string, port: number, timeoutMs: number): Promise<void> {
  return waitFor(() => canConnect(host, port), { timeoutMs, what: `a listener on ${host}:${port}` });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
