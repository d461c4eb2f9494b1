// `middlebox serve` as a process: health per service, SIGTERM drain, malformed CheckRequests,
// unix sockets, startup before etcd has any policy, and the bounds set by flags.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { EtcdProcess } from '../../src/lab/etcd';
import { MiddleboxProcess, sumMetric } from '../../src/lab/middlebox';
import { waitFor } from '../../src/lab/ports';
import { formatPolicyError, parsePolicies } from '../../src/policy/parse';
import { connectEtcd } from '../../src/state/etcd/client';
import { policyKey, putPolicies } from '../../src/state/etcd/policies';
import { CheckClient, httpCheck, statusOf } from '../harness/check';
import { CLI, middlebox } from '../harness/cli';
import { spawn } from 'node:child_process';

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
    // A delay long enough that the Check below lands inside it, however slow the machine.
    const m = await replica({ shutdownDelayMs: 4000 });
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
      const exit = await Promise.race([m.exited, new Promise((r) => setTimeout(() => r('timeout'), 12_000))]);
      assert.deepEqual(exit, { code: 0, signal: null });
    } finally {
      client.close();
    }
  });

  it('serves on a unix socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-sock-'));
    const sock = path.join(dir, 'mb.sock');
    try {
      const m = await replica({ listen: `unix:${sock}` });
      const client = new CheckClient(`unix:${sock}`);
      try {
        assert.equal(statusOf(await client.check(httpCheck())), 200);
      } finally {
        client.close();
        await m.kill();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
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

  describe('bounds set by flags: each enforced, and the server keeps serving', () => {
    const PREFIX = '/bounds';
    const PER_KEY = '{ name: per-key, match: { paths: ["/search"] }, limit: 100, per: 1m, by: ["header:x-key"], consistency: local }';
    /** A policy with `rules` deny rules on /admin/<i>, and a local limit on /search per x-key header value. */
    const shop = (rules: number) => {
      const list = Array.from({ length: rules }, (_, i) => `{ name: admin-${i}, action: deny, paths: ["/admin/${i}"] }`).join(', ');
      const text = `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: shop }\nspec:\n  firewall: { rules: [ ${list} ] }\n  rateLimits: [ ${PER_KEY} ]\n`;
      const { documents, errors } = parsePolicies(text, 'shop.yaml');
      assert.deepEqual(errors.map(formatPolicyError), []);
      return documents[0]!;
    };
    let m: MiddleboxProcess;
    let client: CheckClient;
    let etcdClient: Etcd3;

    before(async () => {
      etcdClient = connectEtcd({ endpoints: [etcd.endpoint] });
      await putPolicies(etcdClient, PREFIX, [shop(1)]);
      m = await replica({
        prefix: PREFIX,
        extraArgs: ['--max-header-bytes', '2048', '--max-message-bytes', '65536', '--max-policy-bytes', '4096', '--max-keys-per-rate-limit', '2'],
      });
      client = new CheckClient(m.address);
    });
    after(() => {
      client?.close();
      etcdClient?.close();
    });

    it('--max-header-bytes: headers over it → 431 headers_too_large, counted', async () => {
      assert.equal(statusOf(await client.check(httpCheck({ headers: { 'x-a': 'a'.repeat(1500) } }))), 200);
      const res = await client.check(httpCheck({ headers: { 'x-a': 'a'.repeat(3000) } }));
      assert.equal(statusOf(res), 431);
      assert.equal(JSON.parse(res.denied_response!.body).reason, 'headers_too_large');
      assert.equal(sumMetric(await m.metrics(), 'middlebox_decisions_total', { reason: 'headers_too_large' }), 1);
      await waitFor(async () => /request headers exceed 2048 bytes \(--max-header-bytes\)/.test(m.output()), { timeoutMs: 3000, what: 'the log line' });
    });

    it('--max-message-bytes: a bigger message is refused by gRPC with RESOURCE_EXHAUSTED, and the server lives on', async () => {
      // 100 KB: within gRPC's default 4 MiB, over the setting.
      await assert.rejects(client.check(httpCheck({ headers: { 'x-a': 'a'.repeat(100_000) } })), (e: Error & { code?: number }) => {
        assert.equal(e.code, 8, `RESOURCE_EXHAUSTED, got ${e.message}`);
        assert.match(e.message, /larger than max \(\d+ vs 65536\)/);
        return true;
      });
      assert.equal(statusOf(await client.check(httpCheck())), 200);
      assert.equal(await m.health.check(''), 'SERVING');
    });

    it('--max-keys-per-rate-limit: keys past it share the overflow bucket, counted and logged', async () => {
      for (const key of ['k1', 'k2', 'k3', 'k4', 'k3']) {
        assert.equal(statusOf(await client.check(httpCheck({ path: '/search', headers: { 'x-key': key } }))), 200);
      }
      assert.equal(sumMetric(await m.metrics(), 'middlebox_ratelimit_keys_overflow_total', { consistency: 'local' }), 3);
      await waitFor(async () => /"rule":"shop\/per-key".*more distinct keys than --max-keys-per-rate-limit/.test(m.output()), { timeoutMs: 3000, what: 'the log line' });
    });

    it('--max-policy-bytes: a stored policy over it is refused; the last good one stays in force', async () => {
      assert.equal(statusOf(await client.check(httpCheck({ path: '/admin/0' }))), 403);
      assert.equal(statusOf(await client.check(httpCheck({ path: '/admin/50' }))), 200);
      const big = JSON.stringify(shop(100));
      assert.ok(big.length > 4096);
      await etcdClient.put(policyKey(PREFIX, 'shop')).value(big);
      await waitFor(async () => (await m.health.check('middlebox.policy')) === 'NOT_SERVING', { timeoutMs: 3000, what: 'the oversized policy to be refused' });
      assert.equal(await m.health.check(''), 'SERVING');
      // The log line comes through the child's stdout, which may trail the health change a little.
      const refused = /too large: \d+ bytes, more than 4096 \(--max-policy-bytes, env MIDDLEBOX_MAX_POLICY_BYTES\).*stored policy rejected; the last good version stays in force/;
      await waitFor(async () => refused.test(m.output()), { timeoutMs: 3000, what: 'the refusal in the log' });
      const samples = await m.metrics();
      assert.equal(sumMetric(samples, 'middlebox_policy_rejected'), 1);
      assert.equal(sumMetric(samples, 'middlebox_policy_last_reload_success'), 0);
      // The last good version: /admin/0 denied, /admin/50 (only in the refused one) allowed.
      assert.equal(statusOf(await client.check(httpCheck({ path: '/admin/0' }))), 403);
      assert.equal(statusOf(await client.check(httpCheck({ path: '/admin/50' }))), 200);
      // Within the limit again: accepted.
      await putPolicies(etcdClient, PREFIX, [shop(2)]);
      await waitFor(async () => (await m.health.check('middlebox.policy')) === 'SERVING', { timeoutMs: 3000, what: 'the policy within the limit to be accepted' });
      assert.equal(statusOf(await client.check(httpCheck({ path: '/admin/1' }))), 403);
    });

    it('refuses a drain or shutdown delay past what a timer can wait (it would fire at once), an empty state dir or replica id, as usage errors', async () => {
      const tooLong = '3000000000';
      for (const [args, env, message] of [
        [['serve', '--drain-ms', tooLong], {}, /--drain-ms must be a whole number from 0 to 2147483647/],
        [['serve'], { MIDDLEBOX_SHUTDOWN_DELAY_MS: tooLong }, /MIDDLEBOX_SHUTDOWN_DELAY_MS must be a whole number from 0 to 2147483647/],
        [['inject', 'serve', '--tls-cert', '/nonexistent', '--tls-key', '/nonexistent', '--drain-ms', tooLong], {}, /--drain-ms must be a whole number from 0 to 2147483647/],
        // Empty values that would otherwise mean the current directory, or one membership key for all.
        [['serve', '--state-dir', ''], {}, /--state-dir must name a directory/],
        [['serve', '--replica-id', ''], {}, /--replica-id must be 1 to 253 characters/],
        [['serve'], { MIDDLEBOX_REPLICA_ID: 'a b' }, /MIDDLEBOX_REPLICA_ID must be 1 to 253 characters/],
      ] as const) {
        const r = await middlebox([...args], { env: { ...env } });
        assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, message);
      }
    });

    it('exits on SIGTERM when its stdout has gone (a log reader that died)', async () => {
      const child = spawn(process.execPath, [CLI, 'serve', '--etcd', etcd.endpoint, '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--shutdown-delay-ms', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
      try {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no "middlebox serving" within 20 s')), 20_000);
          child.stdout.on('data', (d: Buffer) => /"middlebox serving"/.test(d.toString()) && (clearTimeout(timer), resolve()));
          child.once('exit', (code) => (clearTimeout(timer), reject(new Error(`exited early (${code})`))));
        });
        child.stdout.destroy();
        child.stderr.destroy();
        const exited = new Promise<number | string | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
        child.kill('SIGTERM');
        const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running 15 s after SIGTERM'), 15_000).unref())]);
        assert.equal(code, 0);
      } finally {
        child.kill('SIGKILL');
      }
    });

    it('refuses a bound out of range as a usage error (exit 2)', async () => {
      const bad = await MiddleboxProcess.start({ etcd: etcd.endpoint, extraArgs: ['--max-message-bytes', '10'], waitFor: false });
      started.push(bad);
      assert.equal((await bad.exited).code, 2);
      assert.match(bad.output(), /--max-message-bytes must be a whole number from 4096 to 2147483647, got "10"/);
    });
  });

  it('refuses a bad listen address as a usage error (exit 2) naming the flag', async () => {
    const m = await MiddleboxProcess.start({ etcd: etcd.endpoint, listen: 'not a listen address', waitFor: false });
    started.push(m);
    const exit = await m.exited;
    assert.equal(exit.code, 2);
    assert.match(m.output(), /--listen: listen address "not a listen address" is not host:port/);
    assert.doesNotMatch(m.output(), /at .*\.js:\d+/, 'no stack trace');
  });

  it('refuses --http-authz-listen that is not an address or is the gRPC listener\'s, with one line each', async () => {
    const sock = `unix:${path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mb-sock-')), 'mb.sock')}`;
    for (const [args, code, message] of [
      [['--http-authz-listen', 'nope'], 2, /--http-authz-listen: listen address "nope" is not host:port/],
      [['--listen', sock, '--http-authz-listen', sock], 2, /--http-authz-listen must differ from --listen/],
    ] as const) {
      const m = await MiddleboxProcess.start({ etcd: etcd.endpoint, extraArgs: [...args], waitFor: false });
      started.push(m);
      assert.equal((await m.exited).code, code, m.output());
      assert.match(m.output(), message);
      assert.doesNotMatch(m.output(), /at .*\.js:\d+/, 'no stack trace');
    }
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
