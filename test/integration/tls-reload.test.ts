// `serve --tls-cert/--tls-key`: a certificate replaced on disk is served to new connections without a
// restart, and a replacement that does not load leaves the current one in force.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { startServer, type RunningServer } from '../../src/grpc/server';
import { makeTestPki, type TestPki } from '../../src/lab/certs';
import { HealthClient } from '../../src/lab/middlebox';
import { waitFor } from '../../src/lab/ports';
import { makeTempDir, removeTempDir } from '../../src/lab/processes';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { StaticPolicySource } from '../../src/state/port';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { captureLogger } from '../harness/log';
import { snapshot } from '../harness/policy';

describe('gRPC server certificate reload', function () {
  this.timeout(60_000);
  let first: TestPki;
  let second: TestPki;
  let dir: string;
  let server: RunningServer | undefined;
  let certFile: string;
  let keyFile: string;
  const clients: HealthClient[] = [];
  const log = captureLogger();

  /** A new client (so a new TLS connection) trusting `pki`'s CA: its health check, or the error. */
  async function ask(pki: TestPki): Promise<string> {
    const client = new HealthClient(server!.address, { caFile: pki.caFile });
    clients.push(client);
    try {
      return await client.check('', 1000);
    } catch (e) {
      return `error: ${(e as Error).message}`;
    } finally {
      client.close();
    }
  }

  /** The same over the HTTP ext_authz listener: its /healthz status, or the error. */
  function askHttp(pki: TestPki): Promise<string> {
    const at = server!.httpAuthzAddress!.lastIndexOf(':');
    return new Promise((resolve) => {
      const req = https.request(
        { host: '127.0.0.1', port: Number(server!.httpAuthzAddress!.slice(at + 1)), path: '/healthz', ca: fs.readFileSync(pki.caFile), agent: false, timeout: 2000 },
        (res) => {
          res.resume();
          resolve(String(res.statusCode));
        },
      );
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve(`error: ${e.message}`));
      req.end();
    });
  }

  before(async () => {
    first = makeTestPki({ caName: 'first CA' });
    second = makeTestPki({ caName: 'second CA' });
    dir = makeTempDir('middlebox-tls-reload-');
    certFile = path.join(dir, 'tls.crt');
    keyFile = path.join(dir, 'tls.key');
    fs.copyFileSync(first.server.certFile, certFile);
    fs.copyFileSync(first.server.keyFile, keyFile);
    server = await startServer({
      listen: '127.0.0.1:0',
      policies: new StaticPolicySource(snapshot({})),
      ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() },
      logger: log.logger,
      tls: { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), files: { cert: certFile, key: keyFile } },
      certCheckMs: 100,
      httpAuthzListen: '127.0.0.1:0',
    });
  });

  after(async () => {
    for (const c of clients) c.close();
    await server?.shutdown({ delayMs: 0, drainMs: 1000 });
    first?.remove();
    second?.remove();
    if (dir) removeTempDir(dir);
  });

  it('serves the certificate it started with', async () => {
    assert.equal(await ask(first), 'SERVING');
    assert.match(await ask(second), /^error/);
    assert.equal(await askHttp(first), '200', 'the HTTP ext_authz listener serves the same certificate');
    assert.match(await askHttp(second), /^error/);
  });

  it('serves a replaced certificate to new connections, without a restart', async () => {
    // As a Secret volume does it: the new files appear at once (renamed into place).
    fs.copyFileSync(second.server.certFile, `${certFile}.new`);
    fs.copyFileSync(second.server.keyFile, `${keyFile}.new`);
    fs.renameSync(`${keyFile}.new`, keyFile);
    fs.renameSync(`${certFile}.new`, certFile);
    await waitFor(async () => (await ask(second)) === 'SERVING', { timeoutMs: 5000, intervalMs: 100, what: 'the second certificate to be served' });
    assert.match(await ask(first), /^error/, 'the first CA no longer verifies the server');
    assert.equal(await askHttp(second), '200', 'the HTTP ext_authz listener got the new certificate too');
    assert.match(await askHttp(first), /^error/);
  });

  it('keeps the current certificate when the new files do not load', async () => {
    const refusedBefore = log.lines.filter((l) => l.msg === 'TLS certificate reload failed; keeping the current certificate').length;
    fs.writeFileSync(certFile, '-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n');
    // The broken file has been seen and refused, not merely not looked at yet.
    await waitFor(() => log.lines.filter((l) => l.msg === 'TLS certificate reload failed; keeping the current certificate').length > refusedBefore, {
      timeoutMs: 5000,
      what: 'the broken certificate to be tried and refused',
    });
    assert.equal(await ask(second), 'SERVING');
    assert.equal(await askHttp(second), '200');
  });
});
