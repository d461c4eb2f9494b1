// `middlebox serve` as a process: health per service, SIGTERM drain, malformed CheckRequests,
// unix sockets, and startup before etcd has any policy.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EtcdProcess } from '../../src/lab/etcd';
import { MiddleboxProcess } from '../../src/lab/middlebox';
import { waitFor } from '../../src/lab/ports';
import { CheckClient, httpCheck, statusOf } from '../harness/check';

describe('middlebox serve: health, drain and bad input (real etcd)', function () {
  this.timeout(60_000);
  let etcd: EtcdProcess;
  const started: MiddleboxProcess[] = [];

  before(async () => {
    etcd = await EtcdProcess.start();
  });

  after(async () => {
    for (const m of started) await m.kill().catch(() => undefined);
    await etcd?.stop();
  });

  async function replica(opts: Partial<Parameters<typeof MiddleboxProcess.start>[0]> = {}): Promise<MiddleboxProcess> {
    const m = await MiddleboxProcess.start({ etcd: etcd.endpoint, ...opts });
    started.push(m);
    return m;
  }

  it('reports SERVING for the server and each service, NOT_SERVING on SIGTERM, then exits 0', async () => {
    const m = await replica({ shutdownDelayMs: 1500 });
    assert.equal(await m.health.check(''), 'SERVING');
    assert.equal(await m.health.check('envoy.service.auth.v3.Authorization'), 'SERVING');
    assert.equal(await m.health.check('middlebox.policy'), 'SERVING');
    assert.equal(await m.health.check('middlebox.etcd'), 'SERVING');
    assert.equal(await m.health.check('no.such.Service'), 'SERVICE_UNKNOWN');

    const client = new CheckClient(m.address);
    try {
      m.signal('SIGTERM');
      await waitFor(async () => (await m.health.check('')) === 'NOT_SERVING', { timeoutMs: 1000, what: 'NOT_SERVING after SIGTERM' });
      assert.equal(await m.health.check('envoy.service.auth.v3.Authorization'), 'NOT_SERVING');
      // While health checkers take the replica out, calls that still arrive are answered.
      assert.equal(statusOf(await client.check(httpCheck())), 200);
      const exit = await Promise.race([m.exited, new Promise((r) => setTimeout(() => r('timeout'), 8000))]);
      assert.deepEqual(exit, { code: 0, signal: null });
    } finally {
      client.close();
    }
  });

  it('serves on a unix socket', async () => {
    const sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mb-sock-')), 'mb.sock');
    const m = await replica({ listen: `unix:${sock}` });
    const client = new CheckClient(`unix:${sock}`);
    try {
      assert.equal(statusOf(await client.check(httpCheck())), 200);
    } finally {
      client.close();
    }
  });

  describe('malformed CheckRequests get a deliberate answer', () => {
    let m: MiddleboxProcess;
    let client: CheckClient;
    before(async () => {
      m = await replica();
      client = new CheckClient(m.address);
    });
    after(() => client.close());

    it('no attributes → 400 missing_attributes', async () => {
      const res = await client.check({});
      assert.equal(statusOf(res), 400);
      assert.equal(JSON.parse(res.denied_response!.body).reason, 'missing_attributes');
    });

    it('an unparseable source address → 400 invalid_source_address', async () => {
      const req = httpCheck();
      req.attributes!.source!.address!.socket_address!.address = 'not-an-ip';
      const res = await client.check(req);
      assert.equal(statusOf(res), 400);
      assert.equal(JSON.parse(res.denied_response!.body).reason, 'invalid_source_address');
    });

    it('enormous headers → 431 headers_too_large', async () => {
      const res = await client.check(httpCheck({ headers: { 'x-big': 'a'.repeat(200_000) } }));
      assert.equal(statusOf(res), 431);
      assert.equal(JSON.parse(res.denied_response!.body).reason, 'headers_too_large');
    });

    it('a message over the gRPC size limit is refused by gRPC, and the server lives on', async () => {
      await assert.rejects(client.check(httpCheck({ headers: { 'x-huge': 'a'.repeat(5 * 1024 * 1024) } })), /RESOURCE_EXHAUSTED|larger than max/);
      assert.equal(statusOf(await client.check(httpCheck())), 200);
      assert.equal(await m.health.check(''), 'SERVING');
    });
  });

  it('refuses a bad listen address with a clear message and exit 1', async () => {
    const m = await MiddleboxProcess.start({ etcd: etcd.endpoint, listen: 'not a listen address', waitFor: false });
    started.push(m);
    const exit = await m.exited;
    assert.equal(exit.code, 1);
    assert.match(m.output(), /listen address "not a listen address" is not host:port/);
    assert.doesNotMatch(m.output(), /at .*\.js:\d+/, 'no stack trace');
  });

  it('fails closed (503) and NOT_SERVING while etcd is unreachable at startup', async () => {
    const m = await MiddleboxProcess.start({ etcd: 'http://127.0.0.1:1', waitFor: 'NOT_SERVING' });
    started.push(m);
    const client = new CheckClient(m.address);
    try {
      const res = await client.check(httpCheck());
      assert.equal(statusOf(res), 503);
      assert.equal(JSON.parse(res.denied_response!.body).reason, 'policy_not_loaded');
    } finally {
      client.close();
    }
  });
});
