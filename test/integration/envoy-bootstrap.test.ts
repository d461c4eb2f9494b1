// The rendered bootstrap in a real Envoy: it validates, ext_authz really sits in the path of HTTP
// and TCP traffic (fail closed / fail open when the middlebox is unreachable), and the gRPC health
// check takes replicas in and out.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { renderBootstrapYaml, type BootstrapOptions } from '../../src/envoy/bootstrap';
import { EnvoyProcess, validateConfig } from '../../src/lab/envoy';
import { freePort, waitFor } from '../../src/lab/ports';
import { startHttpUpstream, startTcpEcho, type Upstream, type UpstreamEcho } from '../../src/lab/upstream';

/** test/golden in the source tree, found by walking up to package.json (this runs from dist/). */
function goldenDir(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return path.join(dir, 'test', 'golden');
}

interface Sidecar {
  envoy: EnvoyProcess;
  httpPort: number;
  tcpPort: number;
}

/** An Envoy on free ports in front of the given apps, asking the middlebox at `middlebox`. */
async function startSidecar(
  app: Upstream,
  echo: Upstream,
  options: Pick<BootstrapOptions, 'middlebox' | 'failureModeAllow'>,
): Promise<Sidecar> {
  const [adminPort, httpPort, tcpPort] = [await freePort(), await freePort(), await freePort()];
  const config = renderBootstrapYaml({
    adminPort,
    inboundHttp: { address: '127.0.0.1', port: httpPort, appAddress: '127.0.0.1', appPort: app.port },
    inboundTcp: { address: '127.0.0.1', port: tcpPort, appAddress: '127.0.0.1', appPort: echo.port },
    ...options,
  });
  return { envoy: await EnvoyProcess.start({ config, adminPort }), httpPort, tcpPort };
}

function get(port: number, urlPath = '/'): Promise<Response> {
  return fetch(`http://127.0.0.1:${port}${urlPath}`, { signal: AbortSignal.timeout(5000) });
}

/** Sends `text` and resolves with what came back, or null if the connection closed first. */
function tcpRoundTrip(port: number, text: string): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let received = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer on :${port} within 5 s`));
    }, 5000);
    const finish = (result: string | null) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    socket.on('connect', () => socket.write(text));
    socket.on('data', (chunk) => {
      received += chunk.toString();
      if (received.length >= text.length) finish(received);
    });
    socket.on('close', () => finish(null));
    socket.on('error', () => finish(null));
  });
}

/** A port where nothing listens: the unreachable middlebox. */
async function deadEndpoint(): Promise<string> {
  return `127.0.0.1:${await freePort()}`;
}

describe('envoy bootstrap in a real Envoy', function () {
  this.timeout(60_000);

  let app: Upstream;
  let echo: Upstream;

  before(async () => {
    app = await startHttpUpstream({ name: 'app' });
    echo = await startTcpEcho();
  });

  after(async () => {
    await app?.close();
    await echo?.close();
  });

  describe('envoy --mode validate', () => {
    for (const file of ['bootstrap-basic.yaml', 'bootstrap-full.yaml', 'bootstrap-http-authz.yaml', 'bootstrap-authz-headers.yaml']) {
      it(`accepts ${file}`, async () => {
        const result = await validateConfig(fs.readFileSync(path.join(goldenDir(), file), 'utf8'));
        assert.ok(result.ok, result.output);
      });
    }

    it('rejects a broken config, so the check above means something', async () => {
      const broken = renderBootstrapYaml().replace(/status_on_error:\n(\s+)code: 403/, 'status_on_error:\n$1code: 999');
      assert.notEqual(broken, renderBootstrapYaml(), 'the test must actually break the config');
      const result = await validateConfig(broken);
      assert.equal(result.ok, false);
      assert.match(result.output, /status_?on_?error/i);
    });
  });

  describe('middlebox unreachable, fail closed (default)', () => {
    let sidecar: Sidecar;

    before(async () => {
      sidecar = await startSidecar(app, echo, { middlebox: [await deadEndpoint()] });
    });

    after(async () => {
      await sidecar?.envoy.stop();
    });

    it('answers HTTP requests with 403 without reaching the app', async () => {
      const res = await get(sidecar.httpPort, '/orders');
      assert.equal(res.status, 403);
      assert.equal(await res.text(), '');
      const stats = await sidecar.envoy.stats('ext_authz');
      assert.ok((stats.get('http.inbound_http.ext_authz.error') ?? 0) >= 1, `stats: ${[...stats]}`);
      assert.equal((await sidecar.envoy.stats('^cluster\\.app\\.upstream_rq_total$')).get('cluster.app.upstream_rq_total'), 0);
    });

    it('closes TCP connections before any of their bytes reach the app', async () => {
      assert.equal(await tcpRoundTrip(sidecar.tcpPort, 'ping'), null);
      const stats = await sidecar.envoy.stats('ext_authz');
      assert.ok((stats.get('ext_authz.inbound_tcp.error') ?? 0) >= 1, `stats: ${[...stats]}`);
    });

    it('reports no healthy middlebox host and a healthy app', async () => {
      assert.equal(await sidecar.envoy.clusterHealthy('middlebox'), 0);
      assert.equal(await sidecar.envoy.clusterHealthy('app'), 1);
    });
  });

  describe('middlebox unreachable, failureModeAllow: true', () => {
    let sidecar: Sidecar;

    before(async () => {
      sidecar = await startSidecar(app, echo, { middlebox: [await deadEndpoint()], failureModeAllow: true });
    });

    after(async () => {
      await sidecar?.envoy.stop();
    });

    it('lets HTTP requests through, with a request id and the client address appended', async () => {
      const res = await fetch(`http://127.0.0.1:${sidecar.httpPort}/orders?id=7`, {
        headers: { 'x-forwarded-for': '203.0.113.9' },
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 200);
      const body = (await res.json()) as UpstreamEcho;
      assert.equal(body.upstream, 'app');
      assert.equal(body.path, '/orders?id=7');
      assert.match(String(body.headers['x-request-id']), /^[0-9a-f-]{36}$/);
      // Envoy appends the address it saw. For a loopback peer it appends its own local address
      // instead of 127.0.0.1, so only check that one real address follows the client's claim.
      const [claimed, seen, ...rest] = String(body.headers['x-forwarded-for']).split(/,\s*/);
      assert.equal(claimed, '203.0.113.9');
      assert.ok(seen !== undefined && net.isIP(seen) !== 0, `x-forwarded-for: ${body.headers['x-forwarded-for']}`);
      assert.deepEqual(rest, []);
      const stats = await sidecar.envoy.stats('ext_authz');
      assert.ok((stats.get('http.inbound_http.ext_authz.failure_mode_allowed') ?? 0) >= 1, `stats: ${[...stats]}`);
    });

    it('lets TCP connections through', async () => {
      assert.equal(await tcpRoundTrip(sidecar.tcpPort, 'ping'), 'ping');
    });

    it('drops a client\'s copies of the headers the middlebox vouches for: the app cannot take them for its', async () => {
      const res = await fetch(`http://127.0.0.1:${sidecar.httpPort}/orders`, {
        headers: { 'x-middlebox-decision': 'forged', 'x-middlebox-shadow-deny': 'firewall/p/r', 'x-other': 'kept' },
        signal: AbortSignal.timeout(5000),
      });
      assert.equal(res.status, 200);
      const body = (await res.json()) as UpstreamEcho;
      assert.equal(body.headers['x-middlebox-decision'], undefined);
      assert.equal(body.headers['x-middlebox-shadow-deny'], undefined);
      assert.equal(body.headers['x-other'], 'kept');
    });
  });

  describe('gRPC health checks of the middlebox replicas', () => {
    let sidecar: Sidecar;
    let replica: grpc.Server;

    before(async () => {
      const port = await freePort();
      replica = new grpc.Server();
      new HealthImplementation({ 'envoy.service.auth.v3.Authorization': 'SERVING' }).addToServer(replica);
      await new Promise<void>((resolve, reject) =>
        replica.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) =>
          err ? reject(err) : resolve(),
        ),
      );
      sidecar = await startSidecar(app, echo, { middlebox: [`127.0.0.1:${port}`, await deadEndpoint()] });
    });

    after(async () => {
      replica?.forceShutdown();
      await sidecar?.envoy.stop();
    });

    it('counts the serving replica healthy and the dead one not', async () => {
      await waitFor(async () => (await sidecar.envoy.clusterHealthy('middlebox')) === 1, {
        timeoutMs: 10_000,
        what: 'one healthy middlebox host',
      });
    });

    it('takes a replica that dies out of rotation within a few seconds', async () => {
      replica.forceShutdown();
      await waitFor(async () => (await sidecar.envoy.clusterHealthy('middlebox')) === 0, {
        timeoutMs: 5_000,
        intervalMs: 200,
        what: 'the stopped replica to be marked unhealthy',
      });
    });
  });
});
