// NAT end to end: a real etcd, two replicas, a real Envoy whose outbound listener runs ext_proc
// and an ORIGINAL_DST cluster, and real backends.
import assert from 'node:assert/strict';
import { Etcd3 } from 'etcd3';
import { flowKey } from '../../src/state/etcd/nat';
import * as grpc from '@grpc/grpc-js';
import { httpRequest } from '../../src/lab/client';
import { sleep, waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { startHttpUpstream, type Upstream } from '../../src/lab/upstream';
import { rendezvous } from '../../src/middlebox/nat/rendezvous';
import { parsePolicies } from '../../src/policy/parse';
import { externalProcessorClient } from '../../src/grpc/protos';
import { middlebox } from '../harness/cli';

describe('NAT through a real Envoy (ext_proc + ORIGINAL_DST) with two replicas and etcd', function () {
  this.timeout(120_000);
  let lab: SidecarLab;
  const backends: Upstream[] = [];
  let evil: Upstream;
  const addr = (u: Upstream) => `127.0.0.1:${u.port}`;

  function natPolicy(pool: Upstream[]) {
    const to = JSON.stringify(pool.map(addr));
    const text = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: vip }
spec:
  firewall: { rules: [ { name: no-private, action: deny, paths: ["/private/*"] } ] }
  rateLimits:
    - { name: slow, match: { paths: ["/slow/*"] }, limit: 2, per: 1h, algorithm: fixed-window, consistency: strict }
  nat:
    - { name: web, match: { hosts: ["vip.local"] }, to: ${to}, affinity: sourceIp }
    - { name: spread, match: { hosts: ["rr.local"] }, to: ${to}, affinity: none }
    - { name: users, match: { hosts: ["user.local"] }, to: ${to}, affinity: "header:x-user", rewriteHost: true, sourceAs: 192.0.2.10 }
    - { name: brief, match: { hosts: ["idle.local"] }, to: ${to}, affinity: sourceIp, idleTimeout: 2s }
`;
    const { documents, errors } = parsePolicies(text, 'nat');
    assert.deepEqual(errors, []);
    return documents[0]!;
  }

  const out = (host: string, opts: { from?: string; path?: string; headers?: Record<string, string> } = {}) =>
    httpRequest({ port: lab.outboundPort!, path: opts.path ?? '/', headers: { host, ...opts.headers }, localAddress: opts.from });
  const landed = async (host: string, opts: { from?: string; path?: string; headers?: Record<string, string> } = {}) => {
    const r = await out(host, opts);
    assert.equal(r.status, 200, r.body);
    return JSON.parse(r.body) as { upstream: string; headers: Record<string, string>; path: string };
  };

  before(async () => {
    for (const name of ['b1', 'b2', 'b3', 'b4']) backends.push(await startHttpUpstream({ name }));
    evil = await startHttpUpstream({ name: 'evil' });
    lab = await SidecarLab.start({ replicas: 2, outbound: true, bootstrap: { inboundFilter: 'ext_proc' } });
    await lab.applyPolicies([natPolicy(backends.slice(0, 3))]);
    await waitFor(async () => (await out('vip.local')).status === 200, { timeoutMs: 5000, what: 'the NAT policy to be in force' });
  });

  after(async () => {
    await lab?.stop();
    for (const b of [...backends, evil]) await b?.close();
  });

  it('sends a request for the virtual host to a backend of its pool, and says so on the response', async () => {
    const r = await out('vip.local', { path: '/hello' });
    assert.equal(r.status, 200);
    const echo = JSON.parse(r.body);
    assert.ok(['b1', 'b2', 'b3'].includes(echo.upstream), echo.upstream);
    assert.equal(echo.path, '/hello');
    assert.equal(r.headers['x-middlebox-nat'], 'vip/web');
  });

  it('Envoy closes an idle connection to a backend itself, before the backend\'s keep-alive timeout (Node\'s 5 s) would', async () => {
    // Had the backend closed it, a request Envoy sent on it at that moment would fail with a 503.
    const before = backends.map((b) => b.closedByPeer());
    const echo = await landed('vip.local');
    const i = ['b1', 'b2', 'b3', 'b4'].indexOf(echo.upstream);
    await waitFor(() => backends[i]!.closedByPeer() > before[i]!, { timeoutMs: 3500, what: `Envoy to close its idle connection to ${echo.upstream} (after 1 s)` });
  });

  it('keeps a source on one backend across both replicas (sourceIp affinity)', async () => {
    for (const from of ['127.0.0.21', '127.0.0.22', '127.0.0.23']) {
      const seen = new Set<string>();
      for (let i = 0; i < 8; i++) seen.add((await landed('vip.local', { from })).upstream);
      assert.equal(seen.size, 1, `${from} landed on ${[...seen]}`);
    }
  });

  it('spreads round robin with affinity none', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 12; i++) seen.add((await landed('rr.local')).upstream);
    assert.equal(seen.size, 3);
  });

  it('never obeys a client-supplied x-envoy-original-dst-host', async () => {
    for (let i = 0; i < 5; i++) {
      const echo = await landed('vip.local', { headers: { 'x-envoy-original-dst-host': addr(evil) } });
      assert.notEqual(echo.upstream, 'evil');
      assert.ok(['b1', 'b2', 'b3'].includes(echo.upstream));
    }
  });

  it('translates a location header that names the backend back to the virtual host', async () => {
    const r = await out('vip.local', { path: '/old?redirect' });
    assert.equal(r.status, 302);
    assert.equal(r.headers.location, 'http://vip.local/next');
  });

  it('header affinity with rewriteHost and sourceAs', async () => {
    const first = await landed('user.local', { headers: { 'x-user': 'ada' } });
    for (let i = 0; i < 5; i++) assert.equal((await landed('user.local', { headers: { 'x-user': 'ada' } })).upstream, first.upstream);
    const backend = backends[['b1', 'b2', 'b3', 'b4'].indexOf(first.upstream)]!;
    assert.equal(first.headers.host, addr(backend), ':authority rewritten to the backend');
    assert.equal(first.headers['x-forwarded-for'], '192.0.2.10');
    assert.equal(first.headers['x-real-ip'], '192.0.2.10');
  });

  it('applies no NAT on the inbound listener, whose route goes to the app: a request for a NAT rule\'s host reaches the app as sent', async () => {
    for (const host of ['vip.local', 'user.local']) {
      const r = await httpRequest({ port: lab.httpPort, path: '/in', headers: { host, 'x-user': 'ada' } });
      assert.equal(r.status, 200);
      const echo = JSON.parse(r.body);
      assert.equal(echo.upstream, 'app');
      assert.equal(echo.headers.host, host, ':authority as the client sent it');
      assert.equal(echo.headers['x-envoy-original-dst-host'], undefined);
      assert.equal(echo.headers['x-real-ip'], undefined, 'no sourceAs rewriting');
      assert.equal(r.headers['x-middlebox-nat'], undefined);
    }
  });

  it('leaves unmatched traffic untouched (inbound through ext_proc), and strips a forged destination', async () => {
    const r = await httpRequest({ port: lab.httpPort, path: '/plain', headers: { host: 'shop.local', 'x-envoy-original-dst-host': addr(evil), 'x-custom': 'kept' } });
    assert.equal(r.status, 200);
    const echo = JSON.parse(r.body);
    assert.equal(echo.upstream, 'app');
    assert.equal(echo.headers.host, 'shop.local');
    assert.equal(echo.headers['x-custom'], 'kept');
    assert.equal(echo.headers['x-envoy-original-dst-host'], undefined);
    assert.equal(r.headers['x-middlebox-nat'], undefined);
  });

  it('runs the firewall and rate limits inside ext_proc too (one filter)', async () => {
    const denied = await httpRequest({ port: lab.httpPort, path: '/private/x' });
    assert.equal(denied.status, 403);
    assert.equal(JSON.parse(denied.body).rule, 'no-private');
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await httpRequest({ port: lab.httpPort, path: '/slow/x' })).status);
    assert.deepEqual(statuses, [200, 200, 429, 429]);
    const limited = await httpRequest({ port: lab.httpPort, path: '/slow/x' });
    assert.ok(Number(limited.headers['retry-after']) >= 1);
  });

  it('keeps flows on their backends when the pool grows and across replica restarts (the shared table)', async () => {
    const pool3 = backends.slice(0, 3).map(addr);
    const pool4 = backends.map(addr);
    // Sources whose rendezvous choice changes when b4 joins: only the table can keep them put.
    const movers: string[] = [];
    for (let i = 30; movers.length < 3 && i < 250; i++) {
      const ip = `127.0.0.${i}`;
      if (rendezvous(ip, pool3) !== rendezvous(ip, pool4)) movers.push(ip);
    }
    assert.equal(movers.length, 3);
    const first = new Map<string, string>();
    for (const ip of movers) first.set(ip, (await landed('vip.local', { from: ip })).upstream);
    await lab.applyPolicies([natPolicy(backends)]);
    await sleep(300);
    await lab.restartReplica(0);
    await lab.restartReplica(1);
    await lab.waitMiddleboxHealthy(2);
    for (const ip of movers) {
      for (let i = 0; i < 4; i++) assert.equal((await landed('vip.local', { from: ip })).upstream, first.get(ip), ip);
    }
    // New flows may use b4 now.
    const fresh = new Set<string>();
    for (let i = 100; i < 140; i++) fresh.add((await landed('vip.local', { from: `127.0.1.${i}` })).upstream);
    assert.ok(fresh.has('b4'), `new flows never reached b4: ${[...fresh]}`);
  });

  it('nat list shows the table; nat drain moves flows and keeps new ones away; undrain restores', async () => {
    const from = '127.0.0.90';
    const before = (await landed('vip.local', { from })).upstream;
    const drained = backends[['b1', 'b2', 'b3', 'b4'].indexOf(before)]!;
    const list = await middlebox(['nat', 'list', '--etcd', lab.etcd.endpoint, '-o', 'json']);
    assert.equal(list.code, 0, list.stderr);
    const table = JSON.parse(list.stdout) as { flows: Array<{ flow: string; backend: string; rule: string }> };
    assert.ok(table.flows.some((f) => f.flow === from && f.backend === addr(drained) && f.rule === 'vip/web'));

    const r = await middlebox(['nat', 'drain', addr(drained), '--etcd', lab.etcd.endpoint]);
    let undrain: Awaited<ReturnType<typeof middlebox>>;
    try {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`backend/${addr(drained).replace(/\./g, '\\.')} drained; \\d+ flows? moved`));
      await sleep(300);
      const after = (await landed('vip.local', { from })).upstream;
      assert.notEqual(after, before, 'the drained backend\'s flow moved');
      for (let i = 150; i < 170; i++) assert.notEqual((await landed('vip.local', { from: `127.0.1.${i}` })).upstream, before);
    } finally {
      // Asserted below, not here: a failure above must not be hidden by this one.
      undrain = await middlebox(['nat', 'undrain', addr(drained), '--etcd', lab.etcd.endpoint]);
    }
    assert.equal(undrain.code, 0, undrain.stderr);
    // New flows may use it again.
    await sleep(300);
    const fresh = new Set<string>();
    for (let i = 1; i < 41 && !fresh.has(before); i++) fresh.add((await landed('vip.local', { from: `127.0.3.${i}` })).upstream);
    assert.ok(fresh.has(before), `no new flow reached the undrained ${before}: ${[...fresh]}`);
  });

  it('an idle flow\'s mapping expires from etcd by itself (lease of the rule\'s idle timeout)', async function () {
    this.timeout(40_000);
    const etcd = new Etcd3({ hosts: lab.etcd.endpoint });
    try {
      const key = flowKey(lab.prefix, { policy: 'vip', name: 'brief' }, '127.0.0.77');
      await landed('idle.local', { from: '127.0.0.77' });
      assert.ok(await etcd.get(key).string(), 'the mapping is in etcd');
      // A 2 s idle timeout rides on a lease of at least 5 s, granted for twice that.
      await waitFor(async () => (await etcd.get(key).string()) === null, { timeoutMs: 30_000, intervalMs: 500, what: 'the idle mapping to expire' });
    } finally {
      etcd.close();
    }
  });

  it('refuses a malformed or out-of-order stream without harm to others', async () => {
    const Client = externalProcessorClient();
    const client = new Client(lab.replicas[0]!.address, grpc.credentials.createInsecure()) as unknown as grpc.Client & { Process: Function };
    const run = (messages: object[]) =>
      new Promise<{ answers: object[]; code: number }>((resolve) => {
        const answers: object[] = [];
        const call = client.Process({ deadline: Date.now() + 5000 });
        call.on('data', (m: object) => answers.push(m));
        call.on('error', (e: grpc.ServiceError) => resolve({ answers, code: e.code }));
        call.on('end', () => resolve({ answers, code: 0 }));
        for (const m of messages) call.write(m);
        call.end();
      });
    const good = {
      request_headers: { headers: { headers: [{ key: ':authority', raw_value: Buffer.from('rr.local') }, { key: ':path', raw_value: Buffer.from('/') }, { key: ':method', raw_value: Buffer.from('GET') }] } },
      attributes: { 'envoy.filters.http.ext_proc': { fields: { 'source.address': { stringValue: '127.0.0.1:4000' } } } },
    };
    try {
      const [outOfOrder, empty, twice, fine, localReply] = await Promise.all([
        run([{ request_body: { body: Buffer.from('x') } }]),
        run([{}]),
        run([good, good]),
        run([good, { response_headers: { headers: { headers: [] } } }]),
        // Response headers first: a local reply (an earlier filter denied), let through untouched.
        run([{ response_headers: { headers: { headers: [] } } }]),
      ]);
      assert.equal(outOfOrder.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(localReply.code, 0);
      assert.equal(localReply.answers.length, 1);
      assert.equal(empty.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(twice.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(twice.answers.length, 1, 'the first request_headers was answered');
      assert.equal(fine.code, 0);
      assert.equal(fine.answers.length, 2);
      assert.equal(await lab.replicas[0]!.health.check(''), 'SERVING');
    } finally {
      client.close();
    }
  });
});
