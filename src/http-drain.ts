// Graceful close of a node:http(s) server (the injection webhook's), and what every server here
// needs to end its connections when a drain runs out: the sockets, and a bound on TLS handshakes.
import type { Server } from 'node:http';
import type { Server as NetServer, Socket } from 'node:net';

/** How long a TLS handshake may take before the connection is closed (each TLS listener here). */
export const TLS_HANDSHAKE_TIMEOUT_MS = 5000;

/**
 * Every connection `server` accepts, from its first byte (a TLS handshake under way included, which
 * neither a session nor closeAllConnections() knows of), until it closes: what a cut must end.
 */
export function trackSockets(server: NetServer): Set<Socket> {
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return sockets;
}

/**
 * Stops accepting, closes keep-alive connections as soon as they sit idle, lets requests in flight
 * finish, and after `drainMs` cuts what is left (calling `onCut` first): every socket of `sockets`
 * (trackSockets), those still in their TLS handshake included, which closeAllConnections() misses.
 */
export function drainHttpServer(server: Server, sockets: Set<Socket>, drainMs: number, onCut: () => void): Promise<void> {
  return new Promise<void>((resolve) => {
    const cut = setTimeout(() => {
      onCut();
      server.closeAllConnections();
      for (const socket of sockets) socket.destroy();
    }, drainMs);
    // Keep-alive connections that sit idle between requests would hold close() up.
    const idle = setInterval(() => server.closeIdleConnections(), 100);
    server.close(() => {
      clearTimeout(cut);
      clearInterval(idle);
      resolve();
    });
    server.closeIdleConnections();
  });
}
