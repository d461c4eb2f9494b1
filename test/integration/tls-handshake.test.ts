// A client that opens a TCP connection to a TLS listener and never starts its handshake must not
// hold a shutdown up: the gRPC transport's forced shutdown and the injection webhook's drain cut end
// such connections too (Node's server.close() waits for them, up to two minutes by default).
import assert from 'node:assert/strict';
import net from 'node:net';
import { GrpcTransport } from '../../src/grpc/transport';
import { injectConfig } from '../../src/inject/config';
import { startWebhook } from '../../src/inject/webhook';
import { makeTestPki, type TestPki } from '../../src/lab/certs';
import { silentLogger } from '../../src/observability/logger';

/** A TCP connection that says nothing; resolves once it is open. */
function silentConnection(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.on('error', reject);
  });
}

/** Resolves true if `done` settles within `ms`, false otherwise. */
function within(ms: number, done: Promise<unknown>): Promise<boolean> {
  return Promise.race([done.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
}

describe('TLS listeners: a connection stuck before its handshake does not hold a shutdown', function () {
  this.timeout(20_000);
  let pki: TestPki;
  const sockets: net.Socket[] = [];

  before(() => {
    pki = makeTestPki();
  });
  after(() => {
    for (const s of sockets) s.destroy();
    pki?.remove();
  });

  it('gRPC transport: forceShutdown ends it, and tryShutdown calls back', async () => {
    const transport = new GrpcTransport({ maxReceiveMessageBytes: 1 << 20, maxSendMessageBytes: 1 << 20 });
    const port = await transport.listen({ host: '127.0.0.1', port: 0 }, { cert: pki.read(pki.server.certFile), key: pki.read(pki.server.keyFile) });
    const socket = await silentConnection(port);
    sockets.push(socket);
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const shutDown = new Promise<void>((resolve) => transport.tryShutdown(resolve));
    assert.equal(await within(300, shutDown), false, 'a graceful shutdown waits for the connection');
    transport.forceShutdown();
    assert.equal(await within(2000, shutDown), true, 'the forced one ends it');
    await closed;
  });

  it('injection webhook: the drain cut ends it', async () => {
    const webhook = await startWebhook({
      listen: '127.0.0.1:0',
      certFile: pki.server.certFile,
      keyFile: pki.server.keyFile,
      config: injectConfig(),
      namespaceLabels: {},
      logger: silentLogger(),
    });
    sockets.push(await silentConnection(webhook.port));
    assert.equal(await within(3000, webhook.shutdown(200)), true, 'shut down soon after the 200 ms drain');
  });
});

