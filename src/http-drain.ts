// Graceful close of a node:http(s) server (the injection webhook's).
import type { Server } from 'node:http';
import type { Server as NetServer, Socket } from 'node:net';

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
 * finish, and after `drainMs` cuts what is left (calling `onCut` first).
 */
export function drainHttpServer(server: Server, drainMs: number, onCut: () => void): Promise<void> {
  return new Promise<void>((resolve) => {
    const cut = setTimeout(() => {
      onCut();
      server.closeAllConnections();
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
