// The HTTP/1.1 server under the HTTP ext_authz listener: Node's own parser (llhttp, exactly as
// node:http runs it) on plain or TLS sockets, without node:http's per-request stream objects. Its
// only clients are Envoy's ext_authz calls (a request line and headers, no body) and health checks;
// it answers each with a status, headers and a small body. A server answering 200 this way spent
// 17-20 us of CPU per call where one on node:http spent 26-28 (README, "Measured numbers").
//
// What node:http would otherwise do for it, it does too: requests on one connection are answered in
// order (at most 16 unanswered before it stops reading), `connection: close` and HTTP/1.0 close
// after the answer (a peer that closes its side gets no more answers: no half-open connections),
// HEAD answers have no body, a request must arrive whole within
// a deadline, headers past a size are refused (431), anything that does not parse is refused (400)
// and the connection closed, and close() drains: no new connections, idle ones closed, answers in
// flight finished, the rest cut after a deadline.
import net from 'node:net';
import tls from 'node:tls';
import { TLS_HANDSHAKE_TIMEOUT_MS, trackSockets } from '../../http-drain';

/** The parser binding node:http uses; internal to Node, but stable since Node 12 (checked at start). */
interface Parser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | Error;
  finish(): number | Error | undefined;
  close(): void;
  [k: number]: unknown;
}
interface ParserClass {
  new (): Parser;
  REQUEST: number;
  kOnMessageBegin: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kOnExecute: number;
}

function loadParser(): { HTTPParser: ParserClass; methods: string[] } | undefined {
  try {
    const common = require('node:_http_common') as { HTTPParser?: ParserClass; methods?: string[] };
    const P = common.HTTPParser;
    const ok = typeof P === 'function' && typeof P.prototype.execute === 'function' && typeof P.kOnHeadersComplete === 'number' && Array.isArray(common.methods);
    return ok ? { HTTPParser: P, methods: common.methods! } : undefined;
  } catch {
    return undefined;
  }
}

const loaded = loadParser();

/** Whether this Node has the parser binding as expected (the listener refuses to start without it). */
export function parserAvailable(): boolean {
  return loaded !== undefined;
}

export interface Http1Request {
  method: string;
  /** The request target as sent (path and query). */
  url: string;
  /** Names and values in order, as sent: [name, value, name, value, ...]. */
  rawHeaders: string[];
}

export interface Http1Response {
  status: number;
  /** [name, value, ...]; content-length and, when closing, connection are added. */
  headers: string[];
  body?: string;
}

export interface Http1ServerOptions {
  tls?: { cert: Buffer | string; key: Buffer | string; clientCa?: Buffer | string };
  /** Bytes of request line and headers; past them 431 and the connection closed. */
  maxHeaderBytes: number;
  /** An idle connection is closed after this long (Envoy closes its own idle ones first). */
  keepAliveMs: number;
  /** A request begun must have arrived whole within this long; else 408 and closed. */
  requestTimeoutMs: number;
  handler(req: Http1Request): Http1Response | Promise<Http1Response>;
  /** Connection-level trouble (parse errors, resets, TLS handshakes), for a debug log. */
  onConnectionError(e: Error): void;
}

const REASONS: Record<number, string> = {
  200: 'OK', 400: 'Bad Request', 403: 'Forbidden', 404: 'Not Found', 408: 'Request Timeout', 429: 'Too Many Requests',
  431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 503: 'Service Unavailable',
};

/** The answer as written; to HEAD, without its body (its content-length still says how long). */
function serialize(r: Http1Response, close: boolean, headOnly: boolean): string {
  const body = r.body ?? '';
  let head = `HTTP/1.1 ${r.status} ${REASONS[r.status] ?? 'Unknown'}\r\n`;
  for (let i = 0; i + 1 < r.headers.length; i += 2) head += `${r.headers[i]}: ${r.headers[i + 1]}\r\n`;
  head += `content-length: ${Buffer.byteLength(body)}\r\n`;
  if (close) head += 'connection: close\r\n';
  return `${head}\r\n${headOnly ? '' : body}`;
}

/** One slot per request on a connection, filled when its answer is ready: answers go out in order. */
interface Slot {
  text?: string;
  close: boolean;
}

/** Requests read but not yet answered on one connection; past it, the socket is not read (backpressure). */
const MAX_PENDING = 16;

/** A handler that throws or rejects (the listener's own handler answers its errors itself): a bare 500. */
const INTERNAL: Http1Response = { status: 500, headers: [] };

class Connection {
  private readonly parser = new loaded!.HTTPParser();
  private readonly slots: Slot[] = [];
  private headers: string[] = [];
  private url = '';
  private method = 'GET';
  private keepAlive = true;
  private inMessage = false;
  /** Past the headers of the current message: what kOnHeaders brings now are trailers, not read. */
  private headersDone = false;
  private timer: NodeJS.Timeout | undefined;
  /** No more requests are read: an error, `connection: close`, or the server draining. */
  private ending = false;
  private closed = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly server: Http1Server,
    private readonly opts: Http1ServerOptions,
  ) {
    const p = this.parser;
    const HTTPParser = loaded!.HTTPParser;
    const METHODS = loaded!.methods;
    p.initialize(HTTPParser.REQUEST, {}, opts.maxHeaderBytes, 0);
    p[HTTPParser.kOnMessageBegin] = () => {
      this.inMessage = true;
      this.headersDone = false;
      this.timer = setTimeout(() => this.fail(408), opts.requestTimeoutMs);
    };
    // More than 32 headers arrive in parts before the rest with kOnHeadersComplete.
    p[HTTPParser.kOnHeaders] = (headers: string[], url: string) => {
      if (this.headersDone) return;
      this.headers.push(...headers);
      this.url += url;
    };
    p[HTTPParser.kOnHeadersComplete] = (_major: number, minor: number, headers: string[] | undefined, method: number, url: string | undefined, _code: unknown, _msg: unknown, upgrade: boolean, keepAlive: boolean) => {
      if (headers) this.headers.push(...headers);
      if (url) this.url += url;
      this.headersDone = true;
      // A method this table lacks is not silently another one: the request is refused at completion.
      this.method = METHODS[method] ?? '';
      this.keepAlive = keepAlive && !upgrade && minor >= 1;
      return 0;
    };
    p[HTTPParser.kOnBody] = () => undefined;
    p[HTTPParser.kOnMessageComplete] = () => this.complete();
    socket.setNoDelay(true);
    socket.setTimeout(opts.keepAliveMs, () => socket.destroy());
    socket.on('data', (chunk: Buffer) => this.read(chunk));
    socket.on('drain', () => this.resumeIfRoom());
    // The peer closed its side: Node closes ours (no half-open connections; Envoy never half-closes,
    // and a call whose caller left needs no answer).
    socket.on('end', () => {
      this.ending = true;
    });
    socket.on('error', (e: Error) => opts.onConnectionError(e));
    socket.on('close', () => {
      this.closed = true;
      clearTimeout(this.timer);
      this.parser.close();
      server.forget(this);
    });
  }

  /** Nothing begun and nothing to answer: can be closed without cutting anything. */
  get idle(): boolean {
    return !this.inMessage && this.slots.length === 0;
  }

  /**
   * Draining: close now if idle; else finish the request being received, answer what is in flight
   * (with connection: close) and close.
   */
  drain(): void {
    if (this.idle) this.close();
    else if (!this.inMessage) this.ending = true;
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Ends our side and lets the socket go once what was written is flushed, whatever the peer does. */
  private close(): void {
    this.ending = true;
    if (this.closed) return;
    this.socket.once('finish', () => this.socket.destroy());
    this.socket.end();
  }

  private read(chunk: Buffer): void {
    if (this.ending) return;
    let r: number | Error;
    try {
      r = this.parser.execute(chunk);
    } catch (e) {
      // A bug in a callback: this connection, not the process.
      this.opts.onConnectionError(e as Error);
      this.socket.destroy();
      return;
    }
    // Bytes after a request that closes the connection are not read (llhttp calls them an error).
    if (r instanceof Error && !this.ending) {
      const code = (r as Error & { code?: string }).code;
      this.opts.onConnectionError(r);
      this.fail(code === 'HPE_HEADER_OVERFLOW' ? 431 : 400);
    }
  }

  private complete(): void {
    clearTimeout(this.timer);
    this.inMessage = false;
    const req: Http1Request = { method: this.method, url: this.url, rawHeaders: this.headers };
    this.headers = [];
    this.url = '';
    if (req.method === '') {
      this.fail(400);
      return;
    }
    const close = !this.keepAlive || this.server.closing;
    if (close) this.ending = true;
    const slot: Slot = { close };
    this.slots.push(slot);
    if (this.slots.length >= MAX_PENDING) this.socket.pause();
    const head = req.method === 'HEAD';
    let answer: Http1Response | Promise<Http1Response>;
    try {
      answer = this.opts.handler(req);
    } catch (e) {
      this.opts.onConnectionError(e as Error);
      answer = INTERNAL;
    }
    if (answer instanceof Promise) {
      answer
        .then(
          (a) => a,
          (e: Error) => {
            this.opts.onConnectionError(e);
            return INTERNAL;
          },
        )
        .then((a) => this.fill(slot, a, head))
        .catch((e: Error) => {
          this.opts.onConnectionError(e);
          this.socket.destroy();
        });
    } else this.fill(slot, answer, head);
  }

  private fill(slot: Slot, answer: Http1Response, head: boolean): void {
    slot.close ||= this.server.closing;
    slot.text = serialize(answer, slot.close, head);
    this.flush();
  }

  /** Writes the answers that are ready, in order; closes once one says so, or when ending and done. */
  private flush(): void {
    while (this.slots.length > 0 && this.slots[0]!.text !== undefined) {
      const slot = this.slots.shift()!;
      if (this.socket.writable) this.socket.write(slot.text!);
      if (slot.close) {
        this.slots.length = 0;
        this.close();
        return;
      }
    }
    if (this.ending && this.idle) this.close();
    // A peer that sends without reading the answers fills the socket's buffer: read nothing more
    // until it drains ('drain' resumes), or the answers would pile up in memory without bound.
    else if (this.socket.writableNeedDrain) this.socket.pause();
    else this.resumeIfRoom();
  }

  private resumeIfRoom(): void {
    if (!this.ending && this.slots.length < MAX_PENDING && !this.socket.writableNeedDrain && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * A request that cannot be answered: a bare status after the answers already due on this
   * connection (so that none is taken for theirs), then the connection closes.
   */
  private fail(status: number): void {
    clearTimeout(this.timer);
    this.inMessage = false;
    this.ending = true;
    this.slots.push({ text: serialize({ status, headers: [] }, true, false), close: true });
    this.flush();
  }
}

export class Http1Server {
  readonly server: net.Server | tls.Server;
  closing = false;
  private readonly connections = new Set<Connection>();
  /** Every socket, handshakes included, so that a drain past its deadline can cut them all. */
  private readonly sockets: Set<net.Socket>;

  constructor(opts: Http1ServerOptions) {
    if (!parserAvailable()) throw new Error(`this Node (${process.version}) lacks the HTTP parser binding the HTTP ext_authz listener uses`);
    const accept = (socket: net.Socket) => {
      if (this.closing) {
        socket.destroy();
        return;
      }
      this.connections.add(new Connection(socket, this, opts));
    };
    if (opts.tls) {
      const server = tls.createServer(
        {
          cert: opts.tls.cert,
          key: opts.tls.key,
          ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
          // A connection stuck in its handshake would hold a shutdown up.
          handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
        },
        accept,
      );
      // A handshake that failed (or a peer gone before it ended) leaves a socket no one else closes.
      server.on('tlsClientError', (e: Error, socket: tls.TLSSocket) => {
        opts.onConnectionError(e);
        socket.destroy();
      });
      this.server = server;
    } else {
      this.server = net.createServer(accept);
    }
    this.sockets = trackSockets(this.server);
  }

  forget(c: Connection): void {
    this.connections.delete(c);
  }

  setSecureContext(t: { cert: Buffer | string; key: Buffer | string; clientCa?: Buffer | string }): void {
    if (!(this.server instanceof tls.Server)) throw new Error('setSecureContext: the listener does not serve TLS');
    this.server.setSecureContext({ cert: t.cert, key: t.key, ...(t.clientCa ? { ca: t.clientCa } : {}) });
  }

  /**
   * Stops accepting, closes idle connections at once and the others after their answers in flight,
   * and after `drainMs` cuts what is left (calling `onCut` first).
   */
  close(drainMs: number, onCut: () => void): Promise<void> {
    this.closing = true;
    return new Promise<void>((resolve) => {
      const cut = setTimeout(() => {
        if (this.connections.size > 0) onCut();
        for (const c of this.connections) c.destroy();
        for (const socket of this.sockets) socket.destroy();
      }, drainMs);
      this.server.close(() => {
        clearTimeout(cut);
        resolve();
      });
      for (const c of this.connections) c.drain();
    });
  }
}
