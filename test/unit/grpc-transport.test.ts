// The server's gRPC transport (node:http2) against grpc-js clients and hand-made HTTP/2 frames:
// the protocol details a gRPC server owes its callers.
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { encodeGrpcMessage, GrpcTransport, Status, type StreamingCall } from '../../src/grpc/transport';

const identity = (b: Buffer) => b;

/** A test service with raw-bytes messages: Echo (unary), Split (server streaming), Chat (bidi). */
function method(name: string, requestStream: boolean, responseStream: boolean): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path: `/test.Bytes/${name}`,
    requestStream,
    responseStream,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: name.toLowerCase(),
  };
}

const SERVICE: grpc.ServiceDefinition = {
  Echo: method('Echo', false, false),
  Split: method('Split', false, true),
  Chat: method('Chat', true, true),
  Throws: method('Throws', false, false),
  Fails: method('Fails', false, false),
  Slow: method('Slow', false, false),
};

const MAX = 1024;

/** Handlers typed by what this transport passes them (grpc-js's handler types name its own call classes). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
function handlers(h: Record<string, (...args: any[]) => void>): grpc.UntypedServiceImplementation {
  return h as grpc.UntypedServiceImplementation;
}

function frame(payload: Buffer, compressed = 0): Buffer {
  const out = Buffer.alloc(5 + payload.length);
  out[0] = compressed;
  out.writeUInt32BE(payload.length, 1);
  payload.copy(out, 5);
  return out;
}

interface RawAnswer {
  status: number | undefined;
  grpcStatus: string | undefined;
  grpcMessage: string | undefined;
  body: Buffer;
}

/** One call as raw HTTP/2: the given chunks written one by one, the answer's headers, body and trailers. */
async function rawCall(port: number, p: string, chunks: Buffer[], headers: http2.OutgoingHttpHeaders = {}): Promise<RawAnswer> {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  try {
    return await new Promise<RawAnswer>((resolve, reject) => {
      const req = session.request({ ':method': 'POST', ':path': p, 'content-type': 'application/grpc', te: 'trailers', ...headers });
      const answer: RawAnswer = { status: undefined, grpcStatus: undefined, grpcMessage: undefined, body: Buffer.alloc(0) };
      const take = (h: http2.IncomingHttpHeaders) => {
        if (h['grpc-status'] !== undefined) answer.grpcStatus = String(h['grpc-status']);
        if (h['grpc-message'] !== undefined) answer.grpcMessage = String(h['grpc-message']);
      };
      req.on('response', (h) => {
        answer.status = Number(h[':status']);
        take(h);
      });
      req.on('trailers', take);
      req.on('data', (d: Buffer) => (answer.body = Buffer.concat([answer.body, d])));
      req.on('end', () => resolve(answer));
      req.on('error', reject);
      const timer = setTimeout(() => reject(new Error('no answer in 5 s')), 5000);
      req.on('close', () => clearTimeout(timer));
      void (async () => {
        for (const c of chunks) {
          req.write(c);
          // Separate DATA frames: the server must reassemble.
          await new Promise((r) => setImmediate(r));
        }
        req.end();
      })();
    });
  } finally {
    session.close();
  }
}

/** One HTTP/2 frame: 9-byte header (length, type, flags, stream id), then the payload. */
function h2frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

/** HPACK "literal header field without indexing, new name", no Huffman coding (short strings only). */
function hpack(headers: Array<[string, string]>): Buffer {
  return Buffer.concat(headers.flatMap(([k, v]) => [Buffer.from([0, k.length]), Buffer.from(k), Buffer.from([v.length]), Buffer.from(v)]));
}

/** Opens stream 1 (HEADERS without END_STREAM), sends `data`, then RST_STREAM(NO_ERROR), on a raw socket. */
async function resetWithNoError(port: number, p: string, data: Buffer): Promise<void> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  socket.on('data', () => undefined);
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const headers = hpack([[':method', 'POST'], [':scheme', 'http'], [':path', p], [':authority', 'localhost'], ['content-type', 'application/grpc'], ['te', 'trailers']]);
  socket.write(
    Buffer.concat([
      Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'),
      h2frame(0x4, 0, 0, Buffer.alloc(0)), // SETTINGS
      h2frame(0x1, 0x4, 1, headers), // HEADERS, END_HEADERS
      ...(data.length > 0 ? [h2frame(0x0, 0, 1, data)] : []), // DATA, no END_STREAM
      h2frame(0x3, 0, 1, Buffer.alloc(4)), // RST_STREAM, NO_ERROR
    ]),
  );
  await new Promise((r) => setTimeout(r, 100));
  socket.destroy();
}

describe('gRPC transport (node:http2)', function () {
  this.timeout(10_000);
  let server: GrpcTransport;
  let port: number;
  let client: grpc.Client;
  const seen: { cancelledSlow: boolean; chatMessages: string[] } = { cancelledSlow: false, chatMessages: [] };

  before(async () => {
    server = new GrpcTransport({ maxReceiveMessageBytes: MAX, maxSendMessageBytes: MAX });
    server.addService(SERVICE, handlers({
      echo: (call: { request: Buffer }, cb: (e: unknown, v?: Buffer) => void) => cb(null, call.request),
      Split: (call: StreamingCall) => {
        for (const part of (call.request as Buffer).toString().split(',')) call.write(Buffer.from(part));
        call.end();
      },
      Chat: (call: StreamingCall) => {
        call.on('data', (m: Buffer) => {
          seen.chatMessages.push(m.toString());
          if (m.toString() === 'fail') call.emit('error', { code: Status.INVALID_ARGUMENT, details: 'told to fail: ünïcode, 100%' });
          else call.write(Buffer.from(m.toString().toUpperCase()));
        });
        call.on('end', () => call.end());
      },
      Throws: () => {
        throw new Error('a bug');
      },
      Fails: (_call: unknown, cb: (e: unknown) => void) => cb({ code: Status.NOT_FOUND, details: 'no such thing' }),
      Slow: (call: { request: Buffer; cancelled: boolean }, cb: (e: unknown, v?: Buffer) => void) =>
        setTimeout(() => {
          seen.cancelledSlow = call.cancelled;
          cb(null, call.request);
        }, 300),
    }));
    port = await server.listen({ host: '127.0.0.1', port: 0 });
    client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  });

  after(() => {
    client?.close();
    server?.forceShutdown();
  });

  const unary = (name: string, body: Buffer, options: grpc.CallOptions = {}) =>
    new Promise<Buffer>((resolve, reject) =>
      client.makeUnaryRequest(`/test.Bytes/${name}`, identity, identity, body, options, (e, v) => (e ? reject(e) : resolve(v!))),
    );

  it('answers a unary call (handler found by its proto name too)', async () => {
    assert.equal((await unary('Echo', Buffer.from('hello'))).toString(), 'hello');
    assert.equal((await unary('Echo', Buffer.alloc(0))).length, 0);
  });

  it('a handler error is the call status; a thrown handler is INTERNAL and the server lives on', async () => {
    await assert.rejects(unary('Fails', Buffer.from('x')), (e: grpc.ServiceError) => e.code === Status.NOT_FOUND && e.details === 'no such thing');
    await assert.rejects(unary('Throws', Buffer.from('x')), (e: grpc.ServiceError) => e.code === Status.INTERNAL);
    assert.equal((await unary('Echo', Buffer.from('still here'))).toString(), 'still here');
  });

  it('an unknown method is UNIMPLEMENTED', async () => {
    await assert.rejects(unary('Nope', Buffer.from('x')), (e: grpc.ServiceError) => e.code === Status.UNIMPLEMENTED && /unknown method/.test(e.details));
  });

  it('a message over the limit is RESOURCE_EXHAUSTED both ways, before it is buffered', async () => {
    await assert.rejects(unary('Echo', Buffer.alloc(MAX + 1)), (e: grpc.ServiceError) => {
      assert.equal(e.code, Status.RESOURCE_EXHAUSTED);
      assert.match(e.details, new RegExp(`larger than max \\(${MAX + 1} vs ${MAX}\\)`));
      return true;
    });
    // Only the header of a huge message arrives: refused at once, not after 1 GiB.
    const raw = await rawCall(port, '/test.Bytes/Echo', [frame(Buffer.alloc(0)).subarray(0, 1), Buffer.from([0x40, 0, 0, 0])]);
    assert.equal(raw.grpcStatus, String(Status.RESOURCE_EXHAUSTED));
    assert.equal((await unary('Echo', Buffer.alloc(MAX))).length, MAX);
  });

  it('reassembles a message split over DATA frames, down to one byte per frame', async () => {
    const whole = frame(Buffer.from('split across frames'));
    const bytes = [...whole].map((b) => Buffer.from([b]));
    const raw = await rawCall(port, '/test.Bytes/Echo', bytes);
    assert.equal(raw.status, 200);
    assert.equal(raw.grpcStatus, '0');
    assert.equal(raw.body.subarray(5).toString(), 'split across frames');
  });

  it('refuses compressed messages, bodies that are not one message, other methods and content types', async () => {
    assert.equal((await rawCall(port, '/test.Bytes/Echo', [frame(Buffer.from('x'), 1)])).grpcStatus, String(Status.UNIMPLEMENTED));
    assert.equal((await rawCall(port, '/test.Bytes/Echo', [])).grpcStatus, String(Status.UNIMPLEMENTED));
    assert.equal((await rawCall(port, '/test.Bytes/Echo', [frame(Buffer.from('a')), frame(Buffer.from('b'))])).grpcStatus, String(Status.UNIMPLEMENTED));
    assert.equal((await rawCall(port, '/test.Bytes/Echo', [frame(Buffer.from('abc')).subarray(0, 6)])).grpcStatus, String(Status.UNIMPLEMENTED));
    assert.equal((await rawCall(port, '/test.Bytes/Echo', [frame(Buffer.from('x'))], { 'content-type': 'application/json' })).status, 415);
    assert.equal((await rawCall(port, '/test.Bytes/Echo', [], { ':method': 'GET' })).status, 405);
  });

  it('server streaming: every message, then OK', async () => {
    const got: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const call = client.makeServerStreamRequest('/test.Bytes/Split', identity, identity, Buffer.from('a,b,c'));
      call.on('data', (m: Buffer) => got.push(m.toString()));
      call.on('error', reject);
      call.on('status', (s) => (s.code === Status.OK ? resolve() : reject(new Error(s.details))));
    });
    assert.deepEqual(got, ['a', 'b', 'c']);
  });

  it('bidi: messages in order, several per DATA frame; emit("error", status) ends the call with it, percent-encoded', async () => {
    seen.chatMessages = [];
    const raw = await rawCall(port, '/test.Bytes/Chat', [Buffer.concat([frame(Buffer.from('one')), frame(Buffer.from('two'))]), frame(Buffer.from('three'))]);
    assert.equal(raw.grpcStatus, '0');
    assert.deepEqual(seen.chatMessages, ['one', 'two', 'three']);
    assert.equal(raw.body.toString().replace(/[\x00-\x08]/g, ''), 'ONETWOTHREE');

    const status = await new Promise<grpc.StatusObject>((resolve) => {
      const call = client.makeBidiStreamRequest('/test.Bytes/Chat', identity, identity);
      call.on('data', () => undefined);
      call.on('error', () => undefined);
      call.on('status', resolve);
      call.write(Buffer.from('hi'));
      call.write(Buffer.from('fail'));
    });
    assert.equal(status.code, Status.INVALID_ARGUMENT);
    assert.equal(status.details, 'told to fail: ünïcode, 100%');
  });

  it('a call whose client goes away is seen as cancelled, and its answer is dropped without harm', async () => {
    await assert.rejects(unary('Slow', Buffer.from('x'), { deadline: Date.now() + 50 }), (e: grpc.ServiceError) => e.code === grpc.status.DEADLINE_EXCEEDED);
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(seen.cancelledSlow, true);
    assert.equal((await unary('Echo', Buffer.from('after'))).toString(), 'after');
  });

  it('a stream the peer resets with NO_ERROR before it half-closes is dropped, and the server lives on', async () => {
    // Envoy resets its streams with NO_ERROR; Node then closes the stream without destroying it and
    // still ends its readable side, where answering would throw. Node's own client cannot send such
    // a reset (its close() half-closes first), so the frames are written by hand.
    const sent = [Buffer.alloc(0), frame(Buffer.from('half a message')).subarray(0, 9), frame(Buffer.from('a whole message'))];
    for (const name of ['Echo', 'Chat']) {
      for (const data of sent) await resetWithNoError(port, `/test.Bytes/${name}`, data);
    }
    assert.equal((await unary('Echo', Buffer.from('alive'))).toString(), 'alive');
  });

  it('reassembles a message of megabytes sent in many DATA frames', async () => {
    const s = new GrpcTransport({ maxReceiveMessageBytes: 4 << 20, maxSendMessageBytes: 4 << 20 });
    s.addService(SERVICE, handlers({ Echo: (call: { request: Buffer }, cb: (e: unknown, v?: Buffer) => void) => cb(null, call.request) }));
    const p = await s.listen({ host: '127.0.0.1', port: 0 });
    const c = new grpc.Client(`127.0.0.1:${p}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 4 << 20 });
    try {
      const big = Buffer.alloc(3 << 20);
      for (let i = 0; i < big.length; i += 4096) big[i] = i % 251;
      const back = await new Promise<Buffer>((resolve, reject) =>
        c.makeUnaryRequest('/test.Bytes/Echo', identity, identity, big, (e, v) => (e ? reject(e) : resolve(v!))),
      );
      assert.equal(back.equals(big), true);
    } finally {
      c.close();
      s.forceShutdown();
    }
  });

  it('grpc-message is percent-encoded as the protocol asks', () => {
    assert.equal(encodeGrpcMessage('plain text, ok'), 'plain text, ok');
    assert.equal(encodeGrpcMessage('100%'), '100%25');
    assert.equal(encodeGrpcMessage('é\n'), '%C3%A9%0A');
  });

  it('tryShutdown lets a call in flight finish, then calls back; nothing new is accepted', async () => {
    const s = new GrpcTransport({ maxReceiveMessageBytes: MAX, maxSendMessageBytes: MAX });
    s.addService(SERVICE, handlers({
      Slow: (call: { request: Buffer }, cb: (e: unknown, v?: Buffer) => void) => setTimeout(() => cb(null, call.request), 200),
    }));
    const p = await s.listen({ host: '127.0.0.1', port: 0 });
    const c = new grpc.Client(`127.0.0.1:${p}`, grpc.credentials.createInsecure());
    try {
      const inFlight = new Promise<Buffer>((resolve, reject) =>
        c.makeUnaryRequest('/test.Bytes/Slow', identity, identity, Buffer.from('finish me'), (e, v) => (e ? reject(e) : resolve(v!))),
      );
      await new Promise((r) => setTimeout(r, 50));
      const closed = new Promise<void>((resolve) => s.tryShutdown(resolve));
      assert.equal((await inFlight).toString(), 'finish me');
      await closed;
      const c2 = new grpc.Client(`127.0.0.1:${p}`, grpc.credentials.createInsecure());
      await assert.rejects(
        new Promise((resolve, reject) =>
          c2.makeUnaryRequest('/test.Bytes/Slow', identity, identity, Buffer.from('x'), { deadline: Date.now() + 1000 }, (e, v) => (e ? reject(e) : resolve(v))),
        ),
        (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED,
      );
      c2.close();
    } finally {
      c.close();
      s.forceShutdown();
    }
  });

  it('listens on a unix socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'transport-'));
    const sock = path.join(dir, 'grpc.sock');
    const s = new GrpcTransport({ maxReceiveMessageBytes: MAX, maxSendMessageBytes: MAX });
    s.addService(SERVICE, handlers({ Echo: (call: { request: Buffer }, cb: (e: unknown, v?: Buffer) => void) => cb(null, call.request) }));
    assert.equal(await s.listen({ path: sock }), 0);
    const c = new grpc.Client(`unix:${sock}`, grpc.credentials.createInsecure());
    try {
      const v = await new Promise<Buffer>((resolve, reject) =>
        c.makeUnaryRequest('/test.Bytes/Echo', identity, identity, Buffer.from('over a socket'), (e, r) => (e ? reject(e) : resolve(r!))),
      );
      assert.equal(v.toString(), 'over a socket');
    } finally {
      c.close();
      s.forceShutdown();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
