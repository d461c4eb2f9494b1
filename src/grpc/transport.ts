// The gRPC server transport: gRPC over Node's own HTTP/2 server, for the services this process
// serves (Authorization, ExternalProcessor, Health).
//
// Why not @grpc/grpc-js's Server: every ext_authz Check costs grpc-js about twice the CPU of Node's
// HTTP/2 stream underneath it (per-call interceptor chain, metadata objects, stream pipelines), and
// adds about a millisecond of median latency (measured side by side behind one Envoy: 142 against
// 80 µs of CPU per call for a bare node:http2 handler answering OK; bench/latency.ts's floor row
// measures this transport doing the same). The wire
// protocol a server needs is small (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
// length-prefixed messages in DATA frames, a status in trailers. Messages are encoded and decoded
// by the service definitions registered (@grpc/proto-loader's; Check's by protobufjs directly, see
// protos.ts), and clients (the lab, the tests, etcd3) still use grpc-js.
//
// What it does: unary, server-streaming and bidirectional-streaming methods; services registered
// as grpc-js ones are (addService takes a grpc-js ServiceDefinition and the same handlers);
// plaintext, TLS and mTLS; a size limit on messages both ways (RESOURCE_EXHAUSTED); statuses in
// trailers, "trailers-only" for errors before any message; graceful shutdown with GOAWAY. What it
// does not: compressed messages (refused with UNIMPLEMENTED; Envoy does not compress gRPC calls
// unless told to), and server-side deadlines: the caller's deadline (Envoy's timeout) ends the
// stream, which the handler sees as `cancelled`.
import { EventEmitter } from 'node:events';
import http2 from 'node:http2';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { TLS_HANDSHAKE_TIMEOUT_MS, trackSockets } from '../http-drain';
import type * as grpc from '@grpc/grpc-js';

/** The gRPC status codes this transport sends itself. */
export const Status = {
  OK: 0,
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  RESOURCE_EXHAUSTED: 8,
  INTERNAL: 13,
  UNIMPLEMENTED: 12,
  UNAVAILABLE: 14,
} as const;

/** A status a handler fails a call with, as grpc-js handlers give it. */
export interface StatusObject {
  code: number;
  details?: string;
}

type UnaryCallback = (err: StatusObject | Error | null, value?: unknown) => void;

/**
 * Where services register: this transport, or grpc-js's Server (tests run services on either).
 * Handlers take the calls typed below, which both give.
 */
export interface ServiceHost {
  addService(service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void;
}

/** A unary call as a handler sees it. */
export interface UnaryCall<Req> {
  readonly request: Req;
  /** The call's metadata (grpc-js's Metadata has this shape). */
  readonly metadata?: { get(key: string): (string | Buffer)[] };
}

export type UnaryCallbackOf<Res> = (err: StatusObject | null, value?: Res) => void;

/** A bidirectional stream as a handler sees it (grpc-js's ServerDuplexStream has the same members). */
export interface DuplexCall<Req, Res> {
  readonly cancelled: boolean;
  readonly writableEnded: boolean;
  write(message: Res): boolean;
  end(): void;
  on(event: 'data', listener: (message: Req) => void): unknown;
  on(event: 'end' | 'cancelled', listener: () => void): unknown;
  on(event: 'error', listener: (e: unknown) => void): unknown;
  /** emit('error', status) ends the call with that status. */
  emit(event: 'error', status: StatusObject): boolean;
  /** The call's metadata (grpc-js's Metadata has this shape). */
  readonly metadata?: { get(key: string): (string | Buffer)[] };
}

const {
  HTTP2_HEADER_STATUS,
  HTTP2_HEADER_CONTENT_TYPE,
  HTTP2_HEADER_PATH,
  HTTP2_HEADER_METHOD,
} = http2.constants;

const GRPC_CONTENT_TYPE = 'application/grpc';
const OK_TRAILERS = Object.freeze({ 'grpc-status': '0' });
const FRAME_HEADER_BYTES = 5;
/** Per connection (Node's maxSessionMemory, in megabytes). */
const SESSION_MEMORY_MB = 64;

interface Method {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  deserialize: (b: Buffer) => unknown;
  serialize: (v: unknown) => Buffer;
  handler: (...args: never[]) => void;
}

export interface TransportOptions {
  /** Largest message received; bigger ones fail the call with RESOURCE_EXHAUSTED before decoding. */
  maxReceiveMessageBytes: number;
  /** Largest message sent; a bigger answer fails the call with RESOURCE_EXHAUSTED. */
  maxSendMessageBytes: number;
  /** Called with errors on sessions and streams (resets by the peer, protocol errors); default ignored. */
  onError?: (err: Error) => void;
}

export interface TransportTls {
  cert: Buffer;
  key: Buffer;
  /** Given, client certificates are required and must chain to it (mTLS). */
  clientCa?: Buffer;
}

/**
 * Percent-encodes grpc-message as the protocol asks: printable ASCII other than '%' as it is,
 * everything else as %XX of its UTF-8 bytes.
 */
export function encodeGrpcMessage(details: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(details)) return details;
  let out = '';
  for (const byte of Buffer.from(details, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function frame(message: Buffer): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  message.copy(out, FRAME_HEADER_BYTES);
  return out;
}

function asStatus(err: StatusObject | Error): StatusObject {
  const code = (err as StatusObject).code;
  if (typeof code === 'number' && Number.isInteger(code) && code > 0 && code <= 16) {
    return { code, details: (err as StatusObject).details ?? (err as Error).message ?? '' };
  }
  return { code: Status.INTERNAL, details: 'internal error' };
}

/**
 * Splits a request body into length-prefixed messages as its DATA frames arrive; a message may
 * span frames and a frame may hold several. Fails the call on a compressed message or one over the
 * size limit, before buffering it.
 */
class MessageReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxBytes: number) {}

  /**
   * The complete messages `chunk` finishes, or the status that ends the call. A message that spans
   * chunks is joined once, when its last byte arrives (not on every chunk: a 4 MiB message comes in
   * 16 KiB frames).
   */
  push(chunk: Buffer): Buffer[] | StatusObject {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    const out: Buffer[] = [];
    while (this.pendingBytes >= FRAME_HEADER_BYTES) {
      if (this.pending[0]!.length < FRAME_HEADER_BYTES) this.pending = [Buffer.concat(this.pending, this.pendingBytes)];
      const head = this.pending[0]!;
      const length = head.readUInt32BE(1);
      if (head[0] !== 0) return { code: Status.UNIMPLEMENTED, details: 'compressed messages are not supported' };
      if (length > this.maxBytes) {
        return { code: Status.RESOURCE_EXHAUSTED, details: `Received message larger than max (${length} vs ${this.maxBytes})` };
      }
      const end = FRAME_HEADER_BYTES + length;
      if (this.pendingBytes < end) break;
      const buf = head.length >= end ? head : Buffer.concat(this.pending, this.pendingBytes);
      out.push(buf.subarray(FRAME_HEADER_BYTES, end));
      this.pending = buf.length > end ? [buf.subarray(end)] : [];
      this.pendingBytes = buf.length - end;
    }
    return out;
  }

  /** Bytes of a message begun and not finished. */
  get leftover(): number {
    return this.pendingBytes;
  }
}

/**
 * One streaming call as a handler sees it, shaped like grpc-js's: `data` per message, `end` when
 * the client half-closes, `cancelled` when the stream goes before the call finished; write() and
 * end() to answer; emit('error', status) to end the call with that status.
 */
export class StreamingCall extends EventEmitter {
  cancelled = false;
  writableEnded = false;
  private headersSent = false;
  private finalStatus: StatusObject = { code: Status.OK };

  constructor(
    private readonly stream: http2.ServerHttp2Stream,
    private readonly method: Method,
    private readonly maxSendBytes: number,
    readonly request?: unknown,
    private readonly headers: http2.IncomingHttpHeaders = {},
  ) {
    super();
    // A handler ends the call with a status by emitting it as an error (as in grpc-js).
    this.on('error', (e: StatusObject | Error) => this.finish(asStatus(e)));
  }

  /** The call's metadata, read from its headers when asked. */
  readonly metadata = { get: (key: string): string[] => metadataValues(this.headers[key]) };

  write(message: unknown): boolean {
    if (this.writableEnded || this.cancelled || gone(this.stream)) return false;
    let bytes: Buffer;
    try {
      bytes = this.method.serialize(message);
    } catch {
      this.finish({ code: Status.INTERNAL, details: 'the response message does not encode' });
      return false;
    }
    if (bytes.length > this.maxSendBytes) {
      this.finish({ code: Status.RESOURCE_EXHAUSTED, details: `Sent message larger than max (${bytes.length} vs ${this.maxSendBytes})` });
      return false;
    }
    try {
      this.sendHeaders();
      return this.stream.write(frame(bytes));
    } catch {
      // The stream went between the check and the write (a reset): the call is over.
      return false;
    }
  }

  end(): void {
    this.finish({ code: Status.OK });
  }

  /** The stream closed before the call finished (client cancelled, deadline, connection lost). */
  markCancelled(): void {
    if (this.writableEnded || this.cancelled) return;
    this.cancelled = true;
    this.emit('cancelled');
  }

  private sendHeaders(): void {
    if (this.headersSent) return;
    this.headersSent = true;
    this.stream.respond({ [HTTP2_HEADER_STATUS]: 200, [HTTP2_HEADER_CONTENT_TYPE]: GRPC_CONTENT_TYPE }, { waitForTrailers: true });
    this.stream.once('wantTrailers', () => sendTrailers(this.stream, statusTrailers(this.finalStatus)));
  }

  private finish(status: StatusObject): void {
    if (this.writableEnded) return;
    this.writableEnded = true;
    if (this.cancelled || gone(this.stream)) return;
    if (!this.headersSent) {
      respondTrailersOnly(this.stream, status);
      return;
    }
    this.finalStatus = status;
    try {
      this.stream.end();
    } catch {
      // Reset meanwhile: nothing left to end.
    }
  }
}

function statusTrailers(status: StatusObject): http2.OutgoingHttpHeaders {
  if (status.code === Status.OK) return OK_TRAILERS;
  return { 'grpc-status': String(status.code), 'grpc-message': encodeGrpcMessage(status.details ?? '') };
}

/** A request header as grpc-js's Metadata.get gives it: every value, in order (none: empty). */
function metadataValues(value: string | string[] | undefined): string[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value];
}

/**
 * The stream can take no more frames: destroyed, or closed by the peer. A peer's RST_STREAM with
 * NO_ERROR (Envoy resets its streams so) closes a stream without destroying it, and Node throws on
 * respond() or write() then.
 */
function gone(stream: http2.ServerHttp2Stream): boolean {
  return stream.destroyed || stream.closed;
}

function sendTrailers(stream: http2.ServerHttp2Stream, trailers: http2.OutgoingHttpHeaders): void {
  try {
    stream.sendTrailers(trailers);
  } catch {
    // Reset while the last frame was going out.
  }
}

function respondTrailersOnly(stream: http2.ServerHttp2Stream, status: StatusObject): void {
  if (gone(stream) || stream.headersSent) return;
  try {
    stream.respond(
      { [HTTP2_HEADER_STATUS]: 200, [HTTP2_HEADER_CONTENT_TYPE]: GRPC_CONTENT_TYPE, ...statusTrailers(status) },
      { endStream: true },
    );
  } catch {
    // Reset between the check and the answer: nobody is left to read it.
  }
}

/** A gRPC server on node:http2. Register services, listen, shut down. */
export class GrpcTransport implements ServiceHost {
  private readonly methods = new Map<string, Method>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private sockets = new Set<Socket>();
  private server: http2.Http2Server | http2.Http2SecureServer | undefined;
  private closing = false;

  constructor(private readonly opts: TransportOptions) {}

  /** Registers a service as grpc-js's Server.addService does: handlers by method name or by the proto's name. */
  addService(service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void {
    for (const [name, def] of Object.entries(service)) {
      const handler = (implementation[name] ?? implementation[(def as { originalName?: string }).originalName ?? '']) as Method['handler'] | undefined;
      if (!handler) continue;
      this.methods.set(def.path, {
        path: def.path,
        requestStream: def.requestStream,
        responseStream: def.responseStream,
        deserialize: def.requestDeserialize as Method['deserialize'],
        serialize: def.responseSerialize as Method['serialize'],
        handler,
      });
    }
  }

  /** Listens on host:port (port 0: a free one) or a unix socket path; resolves to the bound port (0 for a socket). */
  async listen(where: { host: string; port: number } | { path: string }, tls?: TransportTls): Promise<number> {
    // Node refuses new streams on a connection once it holds 10 MB (its default) of stream state
    // and buffers; one Envoy connection may carry hundreds of calls at once while etcd is slow,
    // each up to the message limit.
    const sessionOptions = { maxSessionMemory: SESSION_MEMORY_MB };
    const server = tls
      ? http2.createSecureServer({
          ...sessionOptions,
          cert: tls.cert,
          key: tls.key,
          ...(tls.clientCa ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
          ALPNProtocols: ['h2'],
          // A connection stuck in its handshake is no session yet, and would hold close() up.
          handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
        })
      : http2.createServer(sessionOptions);
    this.server = server;
    // Sessions or not yet (a TLS handshake under way): forceShutdown ends them all.
    this.sockets = trackSockets(server);
    // Answers are small and go at once; Nagle's algorithm would hold them for the peer's ACK.
    server.on(tls ? 'secureConnection' : 'connection', (socket: Socket | TLSSocket) => socket.setNoDelay(true));
    server.on('session', (session: http2.ServerHttp2Session) => {
      this.sessions.add(session);
      // A connection whose TLS handshake ends after shutdown began gets its GOAWAY too.
      if (this.closing) session.close();
      session.on('close', () => this.sessions.delete(session));
      session.on('error', (e: Error) => this.opts.onError?.(e));
    });
    server.on('stream', (stream, headers) => this.onStream(stream, headers));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = () => {
        server.off('error', reject);
        server.on('error', (e: Error) => this.opts.onError?.(e));
        resolve();
      };
      if ('path' in where) server.listen(where.path, done);
      else server.listen(where.port, where.host.replace(/^\[(.*)\]$/, '$1'), done);
    });
    const address = server.address();
    return typeof address === 'object' && address ? address.port : 0;
  }

  /** Replaces the certificate, key and client CA for connections made from now on (TLS only). */
  setSecureContext(tls: TransportTls): void {
    const server = this.server;
    if (!server || !('setSecureContext' in server)) throw new Error('setSecureContext: the server does not serve TLS');
    server.setSecureContext({ cert: tls.cert, key: tls.key, ...(tls.clientCa ? { ca: tls.clientCa } : {}) });
  }

  /** Stops accepting, sends GOAWAY so peers open no new streams, and calls back once every stream has finished. */
  tryShutdown(callback: () => void): void {
    this.closing = true;
    const server = this.server;
    if (!server) return callback();
    let pending = 1 + this.sessions.size;
    const done = () => {
      if (--pending === 0) callback();
    };
    server.close(() => done());
    for (const session of this.sessions) {
      if (session.closed || session.destroyed) done();
      else {
        session.once('close', done);
        session.close();
      }
    }
  }

  /** Ends every connection now, calls in flight included. */
  forceShutdown(): void {
    for (const session of this.sessions) session.destroy();
    for (const socket of this.sockets) socket.destroy();
    this.server?.close();
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', (e: Error) => this.opts.onError?.(e));
    if (headers[HTTP2_HEADER_METHOD] !== 'POST') {
      stream.respond({ [HTTP2_HEADER_STATUS]: 405, allow: 'POST' }, { endStream: true });
      return;
    }
    const contentType = headers[HTTP2_HEADER_CONTENT_TYPE];
    if (typeof contentType !== 'string' || !contentType.startsWith(GRPC_CONTENT_TYPE)) {
      stream.respond({ [HTTP2_HEADER_STATUS]: 415 }, { endStream: true });
      return;
    }
    const method = this.methods.get(headers[HTTP2_HEADER_PATH] as string);
    if (!method) {
      respondTrailersOnly(stream, { code: Status.UNIMPLEMENTED, details: `unknown method ${String(headers[HTTP2_HEADER_PATH])}` });
      // Whatever the client still sends is dropped.
      stream.resume();
      return;
    }
    if (method.requestStream && method.responseStream) this.bidi(stream, method, headers);
    else this.singleRequest(stream, method, headers);
  }

  /** Unary and server-streaming calls: exactly one request message, then the handler. */
  private singleRequest(stream: http2.ServerHttp2Stream, method: Method, headers: http2.IncomingHttpHeaders): void {
    const reader = new MessageReader(this.opts.maxReceiveMessageBytes);
    let message: Buffer | undefined;
    let failed = false;
    const fail = (status: StatusObject) => {
      if (failed) return;
      failed = true;
      respondTrailersOnly(stream, status);
    };
    stream.on('data', (chunk: Buffer) => {
      if (failed) return;
      const got = reader.push(chunk);
      if (!Array.isArray(got)) return fail(got);
      for (const m of got) {
        if (message !== undefined) return fail({ code: Status.UNIMPLEMENTED, details: `${method.path} takes one request message, got more` });
        message = m;
      }
    });
    stream.on('end', () => {
      // Reset by the peer (RST_STREAM NO_ERROR also ends the readable side): nobody to answer.
      if (failed || gone(stream)) return;
      if (message === undefined || reader.leftover > 0) {
        return fail({ code: Status.UNIMPLEMENTED, details: `${method.path} takes one request message, got ${message === undefined ? 'none' : 'a truncated one'}` });
      }
      let request: unknown;
      try {
        request = method.deserialize(message);
      } catch {
        return fail({ code: Status.INTERNAL, details: 'the request message does not decode' });
      }
      if (method.responseStream) this.serverStreaming(stream, method, request);
      else this.unary(stream, method, request, headers);
    });
  }

  private unary(stream: http2.ServerHttp2Stream, method: Method, request: unknown, headers: http2.IncomingHttpHeaders): void {
    let answered = false;
    // Read when asked rather than kept up to date by a listener on every stream.
    const call = {
      request,
      metadata: { get: (key: string) => metadataValues(headers[key]) },
      get cancelled(): boolean {
        return !answered && (stream.closed || stream.destroyed);
      },
    };
    const callback: UnaryCallback = (err, value) => {
      if (answered) return;
      answered = true;
      if (gone(stream)) return;
      if (err) return respondTrailersOnly(stream, asStatus(err));
      let bytes: Buffer;
      try {
        bytes = method.serialize(value);
      } catch {
        return respondTrailersOnly(stream, { code: Status.INTERNAL, details: 'the response message does not encode' });
      }
      if (bytes.length > this.opts.maxSendMessageBytes) {
        return respondTrailersOnly(stream, { code: Status.RESOURCE_EXHAUSTED, details: `Sent message larger than max (${bytes.length} vs ${this.opts.maxSendMessageBytes})` });
      }
      try {
        stream.respond({ [HTTP2_HEADER_STATUS]: 200, [HTTP2_HEADER_CONTENT_TYPE]: GRPC_CONTENT_TYPE }, { waitForTrailers: true });
        stream.once('wantTrailers', () => sendTrailers(stream, OK_TRAILERS));
        stream.end(frame(bytes));
      } catch (e) {
        // Reset between the check and the answer.
        this.opts.onError?.(e as Error);
      }
    };
    try {
      (method.handler as (call: unknown, cb: UnaryCallback) => void)(call, callback);
    } catch (e) {
      this.opts.onError?.(e as Error);
      callback({ code: Status.INTERNAL, details: 'internal error' });
    }
  }

  private serverStreaming(stream: http2.ServerHttp2Stream, method: Method, request: unknown): void {
    const call = new StreamingCall(stream, method, this.opts.maxSendMessageBytes, request);
    stream.once('close', () => call.markCancelled());
    this.run(method, call);
  }

  private bidi(stream: http2.ServerHttp2Stream, method: Method, headers: http2.IncomingHttpHeaders): void {
    const call = new StreamingCall(stream, method, this.opts.maxSendMessageBytes, undefined, headers);
    const reader = new MessageReader(this.opts.maxReceiveMessageBytes);
    let failed = false;
    stream.on('data', (chunk: Buffer) => {
      if (failed) return;
      const got = reader.push(chunk);
      if (!Array.isArray(got)) {
        failed = true;
        call.emit('error', got);
        return;
      }
      for (const m of got) {
        let message: unknown;
        try {
          message = method.deserialize(m);
        } catch {
          failed = true;
          call.emit('error', { code: Status.INTERNAL, details: 'a request message does not decode' });
          return;
        }
        call.emit('data', message);
      }
    });
    stream.on('end', () => {
      if (failed) return;
      // A reset is not a half-close: the call is cancelled, not asked to finish.
      if (gone(stream)) call.markCancelled();
      else if (reader.leftover > 0) call.emit('error', { code: Status.INTERNAL, details: 'the stream ended inside a message' });
      else call.emit('end');
    });
    stream.once('close', () => call.markCancelled());
    this.run(method, call);
  }

  private run(method: Method, call: StreamingCall): void {
    try {
      (method.handler as (call: StreamingCall) => void)(call);
    } catch (e) {
      this.opts.onError?.(e as Error);
      call.emit('error', { code: Status.INTERNAL, details: 'internal error' });
    }
  }
}
