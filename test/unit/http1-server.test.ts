// The HTTP/1.1 server under the HTTP ext_authz listener (src/grpc/authz/http1.ts), spoken to over
// raw sockets: what node:http would have done for it, it must do too.
import assert from 'node:assert/strict';
import net from 'node:net';
import { Http1Server, type Http1Request, type Http1Response } from '../../src/grpc/authz/http1';

interface Exchange {
  /** Everything the server sent. */
  text: string;
  /** Whether the server closed the connection. */
  closed: boolean;
}

/** Writes `chunks` (one write each, `gapMs` apart), then reads until `responses` answers or a close. */
function talk(port: number, chunks: string[], opts: { responses?: number; gapMs?: number; waitMs?: number } = {}): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ text, closed });
    };
    const timer = setTimeout(() => finish(false), opts.waitMs ?? 3000);
    socket.on('data', (d) => {
      text += d.toString('latin1');
      if (opts.responses !== undefined && (text.match(/HTTP\/1\.1 \d{3}/g) ?? []).length >= opts.responses && !/connection: close/.test(text)) finish(false);
    });
    socket.on('close', () => finish(true));
    socket.on('error', reject);
    socket.on('connect', async () => {
      for (const c of chunks) {
        if (socket.destroyed) return;
        socket.write(c);
        if (opts.gapMs) await new Promise((r) => setTimeout(r, opts.gapMs));
      }
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const get = (path: string, extra = '') => `GET ${path} HTTP/1.1\r\nhost: x\r\n${extra}\r\n`;
const statuses = (text: string) => [...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
const bodies = (text: string) => text.split(/HTTP\/1\.1 \d{3}[^\r]*\r\n/).slice(1).map((r) => r.split('\r\n\r\n')[1] ?? '');

describe('HTTP/1.1 server of the HTTP ext_authz listener', () => {
  let server: Http1Server;
  let port: number;
  const seen: Http1Request[] = [];
  const errors: Error[] = [];

  /** Echoes the path in the body; /slow/N answers after N ms; /throw throws; /reject rejects. */
  function handler(req: Http1Request): Http1Response | Promise<Http1Response> {
    seen.push(req);
    if (req.url === '/throw') throw new Error('boom');
    if (req.url === '/reject') return Promise.reject(new Error('boom'));
    const slow = /^\/slow\/(\d+)$/.exec(req.url);
    const answer = { status: 200, headers: ['x-method', req.method], body: req.url };
    return slow ? new Promise((r) => setTimeout(() => r(answer), Number(slow[1]))) : answer;
  }

  beforeEach(async () => {
    seen.length = 0;
    errors.length = 0;
    server = new Http1Server({ maxHeaderBytes: 4096, keepAliveMs: 60_000, requestTimeoutMs: 300, handler, onConnectionError: (e) => errors.push(e) });
    await new Promise<void>((r) => server.server.listen(0, '127.0.0.1', r));
    port = (server.server.address() as net.AddressInfo).port;
  });

  afterEach(() => server.close(500, () => undefined));

  it('answers requests on one kept-alive connection, with content-length and the handler\'s headers', async () => {
    const r = await talk(port, [get('/a'), get('/b')], { responses: 2, gapMs: 50 });
    assert.deepEqual(statuses(r.text), [200, 200]);
    assert.deepEqual(bodies(r.text), ['/a', '/b']);
    assert.match(r.text, /x-method: GET\r\ncontent-length: 2\r\n\r\n\/a/);
    assert.equal(r.closed, false);
  });

  it('stops reading from a peer that does not read its answers, and answers everything once it does', async () => {
    // Answers much larger than the requests: a few hundred fill the socket's buffers.
    const big = 'x'.repeat(64 * 1024);
    server.close(0, () => undefined);
    server = new Http1Server({ maxHeaderBytes: 4096, keepAliveMs: 60_000, requestTimeoutMs: 5000, handler: (req) => (seen.push(req), { status: 200, headers: [], body: big }), onConnectionError: (e) => errors.push(e) });
    await new Promise<void>((r) => server.server.listen(0, '127.0.0.1', r));
    port = (server.server.address() as net.AddressInfo).port;
    const N = 2000;
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.pause();
    // 2,000 requests of about 1 KB: they reach the server in many reads, as buffers allow.
    const pad = `x-pad: ${'p'.repeat(1000)}\r\n`;
    socket.write(Array.from({ length: N }, (_, i) => get(`/${i}`, pad)).join(''));
    await sleep(500);
    const handledWhileBlocked = seen.length;
    assert.ok(handledWhileBlocked < N / 2, `the server stopped reading: ${handledWhileBlocked} of ${N} handled while nothing was read`);
    // Read everything: every request is answered, in order.
    let received = 0;
    let answers = 0;
    const done = new Promise<void>((resolve) =>
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
        answers = Math.floor(received / (big.length + 40));
        if (seen.length === N && received >= N * (big.length + 40)) resolve();
      }),
    );
    socket.resume();
    const finished = await Promise.race([done.then(() => true), sleep(15_000).then(() => false)]);
    socket.destroy();
    assert.equal(seen.length, N, `every request handled (${answers} answers read)`);
    // Handled is not answered: every answer (at least 40 bytes of head, then the body) must have reached the peer too.
    assert.ok(finished && received >= N * (big.length + 40), `every answer read: ${received} bytes, ${answers} of ${N} answers`);
  });

  it('answers pipelined requests in order, even when an earlier one answers later', async () => {
    const r = await talk(port, [get('/slow/150') + get('/fast') + get('/slow/20')], { responses: 3 });
    assert.deepEqual(bodies(r.text), ['/slow/150', '/fast', '/slow/20']);
  });

  it('reads a request sent a byte at a time, and one with more than 32 headers, every header in order', async () => {
    const many = Array.from({ length: 40 }, (_, i) => `x-h${i}: v${i}\r\n`).join('');
    const req = get('/bytes', many);
    const pieces = req.match(/[^]{1,7}/g)!;
    const r = await talk(port, pieces, { responses: 1, gapMs: 1, waitMs: 5000 });
    assert.deepEqual(statuses(r.text), [200]);
    const raw = seen[0]!.rawHeaders;
    assert.equal(raw.length, 2 * 41);
    assert.deepEqual([raw[0], raw[1], raw[80], raw[81]], ['host', 'x', 'x-h39', 'v39']);
    assert.equal(seen[0]!.url, '/bytes');
  });

  it('skips a body, by content-length or chunked, and goes on with the next request', async () => {
    const post = 'POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello';
    const chunked = 'POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n';
    const r = await talk(port, [post + chunked + get('/after')], { responses: 3 });
    assert.deepEqual(bodies(r.text), ['/p', '/c', '/after']);
    assert.deepEqual(seen.map((s) => s.method), ['POST', 'POST', 'GET']);
  });

  it('closes after answering `connection: close` and HTTP/1.0, and reads nothing after it', async () => {
    const r = await talk(port, [get('/last', 'connection: close\r\n') + get('/never')]);
    assert.deepEqual(bodies(r.text), ['/last']);
    assert.match(r.text, /connection: close/);
    assert.equal(r.closed, true);
    const old = await talk(port, ['GET /old HTTP/1.0\r\n\r\n']);
    assert.deepEqual([statuses(old.text), old.closed], [[200], true]);
  });

  it('refuses what does not parse with 400, headers past the limit with 431, a request not whole in time with 408; each closes', async () => {
    const bad = await talk(port, ['GARBAGE\r\n\r\n']);
    assert.deepEqual([statuses(bad.text), bad.closed], [[400], true]);
    const big = await talk(port, [get('/big', `x-big: ${'a'.repeat(5000)}\r\n`)]);
    assert.deepEqual([statuses(big.text), big.closed], [[431], true]);
    const slow = await talk(port, ['GET /half HTTP/1.1\r\nhost: x\r\n']);
    assert.deepEqual([statuses(slow.text), slow.closed], [[408], true]);
    assert.equal(seen.length, 0, 'none of them reached the handler');
  });

  it('answers HEAD without a body, so the connection stays in step', async () => {
    const r = await talk(port, ['HEAD /h HTTP/1.1\r\nhost: x\r\n\r\n' + get('/after')], { responses: 2 });
    assert.deepEqual(statuses(r.text), [200, 200]);
    assert.match(r.text, /^HTTP\/1\.1 200 OK\r\nx-method: HEAD\r\ncontent-length: 2\r\n\r\nHTTP\/1\.1 200 OK/);
    assert.deepEqual(bodies(r.text), ['', '/after']);
  });

  it('after a request that closes, later bytes are not read: its (late) answer, not a 400', async () => {
    const r = await talk(port, [get('/slow/50', 'connection: close\r\n') + 'JUNK MORE JUNK\r\n\r\n']);
    assert.deepEqual([statuses(r.text), bodies(r.text), r.closed], [[200], ['/slow/50'], true]);
  });

  it('a request that does not parse behind one still being answered: that answer first, then 400 and close', async () => {
    const r = await talk(port, [get('/slow/100') + 'GARBAGE\r\n\r\n']);
    assert.deepEqual([statuses(r.text), r.closed], [[200, 400], true]);
    assert.equal(bodies(r.text)[0], '/slow/100');
  });

  it('stops reading at 16 unanswered requests and goes on as they are answered, in order', async () => {
    const release: Array<() => void> = [];
    const held = new Http1Server({
      maxHeaderBytes: 4096,
      keepAliveMs: 60_000,
      requestTimeoutMs: 5000,
      handler: (req) => new Promise((resolve) => release.push(() => resolve({ status: 200, headers: [], body: req.url }))),
      onConnectionError: () => undefined,
    });
    await new Promise<void>((r) => held.server.listen(0, '127.0.0.1', r));
    try {
      const heldPort = (held.server.address() as net.AddressInfo).port;
      const pending = talk(heldPort, Array.from({ length: 30 }, (_, i) => get(`/r${i}`)), { responses: 30, gapMs: 5, waitMs: 5000 });
      // Up to 16 are read however slowly the writes arrive; then none more while they are held.
      for (let i = 0; i < 100 && release.length < 16; i++) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(release.length, 16, 'read up to 16 requests, then waited');
      for (let i = 0; i < 60 && release.length > 0; i++) {
        release.shift()!();
        await new Promise((r) => setTimeout(r, 10));
      }
      const r = await pending;
      assert.deepEqual(bodies(r.text), Array.from({ length: 30 }, (_, i) => `/r${i}`));
    } finally {
      for (const f of release) f();
      await held.close(500, () => undefined);
    }
  });

  it('trailers are not headers: they cannot add to or replace what the call carries', async () => {
    const chunked = 'POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-middlebox-ext-authz-peer: forged\r\n\r\n';
    const r = await talk(port, [chunked], { responses: 1 });
    assert.deepEqual(statuses(r.text), [200]);
    assert.deepEqual(seen[0]!.rawHeaders, ['host', 'x', 'transfer-encoding', 'chunked']);
  });

  it('lets a closed connection go even if the peer never closes its side', async () => {
    const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    socket.on('error', () => undefined);
    socket.on('data', () => undefined);
    socket.on('connect', () => socket.write(get('/bye', 'connection: close\r\n')));
    await new Promise<void>((r) => socket.once('end', () => r()));
    const count = () => new Promise<number>((r) => server.server.getConnections((_e, n) => r(n)));
    for (let i = 0; i < 50 && (await count()) > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(await count(), 0);
    socket.destroy();
  });

  it('a drain lets a request being received arrive, answers it with connection: close, then closes', async () => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    socket.on('data', (d) => (text += d.toString('latin1')));
    const closed = new Promise<void>((r) => socket.on('close', () => r()));
    await new Promise<void>((r) => socket.on('connect', () => r()));
    socket.write('GET /half HTTP/1.1\r\n');
    await new Promise((r) => setTimeout(r, 50));
    const closing = server.close(2000, () => undefined);
    socket.write('host: x\r\n\r\n');
    await closing;
    await closed;
    assert.deepEqual([statuses(text), bodies(text)], [[200], ['/half']]);
    assert.match(text, /connection: close/);
  });

  it('a handler that throws or rejects costs that request a 500, not the connection', async () => {
    const r = await talk(port, [get('/throw') + get('/reject') + get('/ok')], { responses: 3 });
    assert.deepEqual(statuses(r.text), [500, 500, 200]);
    assert.equal(r.closed, false);
  });

  it('close() drains: no new connections, idle ones closed at once, answers in flight finished with connection: close', async () => {
    const idle = await new Promise<net.Socket>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(s));
    });
    const idleClosed = new Promise<void>((r) => idle.on('close', () => r()));
    const busy = talk(port, [get('/slow/200')], { waitMs: 3000 });
    await new Promise((r) => setTimeout(r, 50));
    const t = Date.now();
    let cut = false;
    const closing = server.close(2000, () => (cut = true));
    const refused = await new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => resolve('connected'));
      s.on('error', (e: Error & { code?: string }) => resolve(e.code ?? e.message));
    });
    assert.equal(refused, 'ECONNREFUSED');
    await closing;
    await idleClosed;
    const answer = await busy;
    assert.deepEqual(bodies(answer.text), ['/slow/200']);
    assert.match(answer.text, /connection: close/);
    assert.equal(answer.closed, true);
    assert.equal(cut, false);
    assert.ok(Date.now() - t < 1500, 'closed when the answer went, not at the deadline');
  });

  it('close() cuts what is still running at the deadline, and says so', async () => {
    const busy = talk(port, [get('/slow/2000')], { waitMs: 3000 });
    await new Promise((r) => setTimeout(r, 50));
    let cut = false;
    await server.close(200, () => (cut = true));
    const answer = await busy;
    assert.equal(cut, true);
    assert.equal(answer.closed, true);
    assert.equal(answer.text, '');
  });
});
