// TLS and authentication end to end, with certificates the test makes itself (src/lab/certs.ts):
// (a) etcd serving TLS and requiring client certificates, (b) etcd user and password
// authentication, (c) a real Envoy asking the middlebox over TLS and over mTLS with the rendered
// bootstrap. Every failure the CLI reports must be one clear line, never a stack trace.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Etcd3, Range } from 'etcd3';
import { renderBootstrapYaml } from '../../src/envoy/bootstrap';
import type { CheckRequest, CheckResponse } from '../../src/grpc/envoy-types';
import { authorizationClient } from '../../src/grpc/protos';
import { makeTestPki, type TestPki } from '../../src/lab/certs';
import { httpRequest } from '../../src/lab/client';
import { EnvoyProcess, validateConfig } from '../../src/lab/envoy';
import { EtcdProcess, type EtcdTlsOptions } from '../../src/lab/etcd';
import { clientCredentials, HealthClient, MiddleboxProcess, sumMetric, type ClientTlsFiles } from '../../src/lab/middlebox';
import { freePort, waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { parsePolicies } from '../../src/policy/parse';
import { connectEtcd } from '../../src/state/etcd/client';
import { CheckClient, httpCheck, statusOf } from '../harness/check';
import { middlebox, type CliResult } from '../harness/cli';
import { NO_ADMIN_POLICY } from '../harness/policy';

const POLICY = `${NO_ADMIN_POLICY}  rateLimits:
    - { name: counted, match: { paths: ["/counted/*"] }, limit: 2, per: 1h, by: ["header:x-run"], algorithm: fixed-window, consistency: strict }
`;

/**
 * A strict rate limit counted in etcd over the replica's TLS or authenticated connection: two
 * requests admitted, the third refused, and etcd, not the local fallback, did the counting (its
 * writes committed, no transaction failed).
 */
async function assertCountedInEtcd(mb: MiddleboxProcess, check: CheckClient): Promise<void> {
  const run = Math.random().toString(36).slice(2);
  const statuses: number[] = [];
  for (let i = 0; i < 3; i++) statuses.push(statusOf(await check.check(httpCheck({ path: '/counted/x', headers: { 'x-run': run } }))));
  assert.deepEqual(statuses, [200, 200, 429]);
  const samples = await mb.metrics();
  assert.equal(sumMetric(samples, 'middlebox_ratelimit_etcd_writes_total'), 2, 'two compare-and-swap writes committed');
  assert.equal(sumMetric(samples, 'middlebox_etcd_operation_errors_total', { operation: 'cas' }), 0, 'no rate-limit transaction failed');
}

/** A failure reported as the CLI promises: exactly one line on stderr, matching, no stack trace. */
function assertOneLine(r: CliResult, code: number, pattern: RegExp): void {
  assert.equal(r.code, code, `exit ${r.code}, stderr: ${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |Error: /);
}

/** A Check over TLS (or mTLS), as Envoy sends it. */
async function checkOverTls(address: string, tls: ClientTlsFiles, req: CheckRequest): Promise<CheckResponse> {
  const Ctor = authorizationClient();
  const client = new Ctor(address, clientCredentials(tls)) as unknown as grpc.Client & { Check: Function };
  try {
    return await new Promise((resolve, reject) =>
      client.Check(req, { deadline: Date.now() + 3000 }, (err: grpc.ServiceError | null, res: CheckResponse) => (err ? reject(err) : resolve(res))),
    );
  } finally {
    client.close();
  }
}

describe('TLS and authentication', function () {
  this.timeout(120_000);
  let pki: TestPki;
  let otherPki: TestPki;
  let policyFile: string;

  before(() => {
    pki = makeTestPki();
    // A second, unrelated CA: its certificates must be refused everywhere.
    otherPki = makeTestPki({ caName: 'some other CA' });
    policyFile = path.join(pki.dir, 'policy.yaml');
    fs.writeFileSync(policyFile, POLICY);
  });
  after(() => {
    pki?.remove();
    otherPki?.remove();
  });

  describe('(a) etcd with TLS and client-certificate auth', () => {
    let etcd: EtcdProcess;
    const replicas: MiddleboxProcess[] = [];
    const certFlags = () => ['--etcd', etcd.endpoint, '--etcd-cacert', pki.caFile, '--etcd-cert', pki.client.certFile, '--etcd-key', pki.client.keyFile];

    before(async () => {
      const tls: EtcdTlsOptions = {
        certFile: pki.server.certFile,
        keyFile: pki.server.keyFile,
        trustedCaFile: pki.caFile,
        clientCertAuth: true,
        clientCertFile: pki.client.certFile,
        clientKeyFile: pki.client.keyFile,
      };
      etcd = await EtcdProcess.start({ tls });
      assert.match(etcd.endpoint, /^https:\/\/127\.0\.0\.1:\d+$/);
    });
    after(async () => {
      for (const r of replicas) await r.kill().catch(() => undefined);
      await etcd?.stop();
    });

    it('policy apply with the certificate flags stores the policy; the env vars work as well', async () => {
      const r = await middlebox(['policy', 'apply', '-f', policyFile, ...certFlags()]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'policy/shop created\n');
      assert.equal(r.stderr, '', 'no warnings either');
      const get = await middlebox(['policy', 'get', '--etcd', etcd.endpoint], {
        env: { MIDDLEBOX_ETCD_CACERT: pki.caFile, MIDDLEBOX_ETCD_CERT: pki.client.certFile, MIDDLEBOX_ETCD_KEY: pki.client.keyFile },
      });
      assert.equal(get.code, 0, get.stderr);
      assert.match(get.stdout, /^shop\s/m);
      // localhost is in the server certificate too.
      const byName = await middlebox(['nat', 'list', ...certFlags().slice(2), '--etcd', etcd.endpoint.replace('127.0.0.1', 'localhost')]);
      assert.equal(byName.code, 0, byName.stderr);
    });

    it('without a client certificate, with a foreign one, or without the CA: one clear line, exit 1', async () => {
      assertOneLine(
        await middlebox(['policy', 'apply', '-f', policyFile, '--etcd', etcd.endpoint, '--etcd-cacert', pki.caFile]),
        1,
        /^middlebox policy apply: etcd at https:\/\/127\.0\.0\.1:\d+ requires a client certificate .*give --etcd-cert and --etcd-key$/,
      );
      assertOneLine(
        await middlebox(['policy', 'get', '--etcd', etcd.endpoint, '--etcd-cacert', pki.caFile, '--etcd-cert', otherPki.client.certFile, '--etcd-key', otherPki.client.keyFile]),
        1,
        /refused the client certificate .*signed by a CA that etcd trusts/,
      );
      assertOneLine(await middlebox(['policy', 'get', '--etcd', etcd.endpoint]), 1, /etcd's certificate at .* is not trusted .*--etcd-cacert/);
      assertOneLine(
        await middlebox(['policy', 'get', '--etcd', etcd.endpoint, '--etcd-cacert', otherPki.caFile, '--etcd-cert', pki.client.certFile, '--etcd-key', pki.client.keyFile]),
        1,
        /is not trusted/,
      );
      // explain reads etcd too, and says so with its own exit code (3: could not read).
      assertOneLine(await middlebox(['explain', '--path', '/admin/x', '--etcd', etcd.endpoint, '--etcd-cacert', pki.caFile]), 3, /requires a client certificate/);
    });

    it('refuses contradictory or unreadable TLS flags before connecting', async () => {
      assertOneLine(
        await middlebox(['policy', 'get', '--etcd', etcd.endpoint.replace('https:', 'http:'), '--etcd-cacert', pki.caFile]),
        2,
        /--etcd-cacert needs https:\/\/ etcd endpoints; http:\/\/127\.0\.0\.1:\d+ is plaintext/,
      );
      assertOneLine(await middlebox(['nat', 'list', '--etcd', etcd.endpoint, '--etcd-cert', pki.client.certFile]), 2, /--etcd-cert and --etcd-key go together/);
      assertOneLine(await middlebox(['policy', 'get', '--etcd', etcd.endpoint, '--etcd-cacert', path.join(pki.dir, 'missing.crt')]), 1, /--etcd-cacert .*missing\.crt: cannot read it \(ENOENT\)/);
      assertOneLine(await middlebox(['policy', 'get', '--etcd', etcd.endpoint, '--etcd-cacert', policyFile]), 1, /not a PEM certificate/);
      assertOneLine(
        await middlebox(['policy', 'get', ...certFlags().slice(0, 4), '--etcd-cert', pki.client.certFile, '--etcd-key', pki.server.keyFile]),
        1,
        /etcd TLS files do not load together: .*key values mismatch/,
      );
      // A plaintext URL to a TLS etcd: it cannot work, and the hint says why.
      assertOneLine(await middlebox(['policy', 'get', '--etcd', etcd.endpoint.replace('https:', 'http:')]), 1, /cannot reach etcd .*use an https:\/\/ endpoint/);
    });

    it('serve connects over TLS, loads the policy, and denies its path', async () => {
      const mb = await MiddleboxProcess.start({
        etcd: etcd.endpoint,
        etcdTls: { caFile: pki.caFile, certFile: pki.client.certFile, keyFile: pki.client.keyFile },
      });
      replicas.push(mb);
      assert.equal(await mb.health.check(''), 'SERVING');
      await waitFor(async () => (await mb.health.check('middlebox.etcd')) === 'SERVING', { timeoutMs: 10_000, what: 'the etcd watch to connect' });
      const check = new CheckClient(mb.address);
      try {
        assert.equal(statusOf(await check.check(httpCheck({ path: '/admin/users' }))), 403);
        assert.equal(statusOf(await check.check(httpCheck({ path: '/products/1' }))), 200);
        await assertCountedInEtcd(mb, check);
      } finally {
        check.close();
      }
      assert.match(mb.output(), /"etcdTls":true/);
    });

    it('serve without its client certificate logs one clear error and stays NOT_SERVING (fail closed)', async () => {
      const mb = await MiddleboxProcess.start({ etcd: etcd.endpoint, etcdTls: { caFile: pki.caFile }, waitFor: false });
      replicas.push(mb);
      await waitFor(() => /requires a client certificate/.test(mb.output()), { timeoutMs: 10_000, what: 'the replica to say what is wrong' });
      assert.equal(await mb.health.check(''), 'NOT_SERVING');
      await mb.kill();
    });

    it('with etcd auth on, the certificate CN is the user: a replica certificate serves but cannot change a policy', async () => {
      const replicaCert = pki.issueClient('replica');
      const admin = connectEtcd({ endpoints: [etcd.endpoint], tls: { ca: pki.read(pki.caFile), cert: pki.read(pki.client.certFile), key: pki.read(pki.client.keyFile) } });
      try {
        await admin.user('root').create('unused-root-password');
        await admin.user('root').addRole('root');
        const role = await admin.role('middlebox-replica').create();
        await role.grant([
          { permission: 'Read', range: Range.prefix('/middlebox/policies/') },
          ...['ratelimit', 'nat', 'replicas'].map((p) => ({ permission: 'Readwrite' as const, range: Range.prefix(`/middlebox/${p}/`) })),
        ]);
        await admin.user('replica').create('unused-replica-password');
        await admin.user('replica').addRole('middlebox-replica');
        await admin.auth.authEnable();
      } finally {
        admin.close();
      }
      const asReplica = ['--etcd', etcd.endpoint, '--etcd-cacert', pki.caFile, '--etcd-cert', replicaCert.certFile, '--etcd-key', replicaCert.keyFile];
      assertOneLine(await middlebox(['policy', 'apply', '-f', policyFile, ...asReplica]), 1, /denied the client certificate's user \(its CN\) access \(etcdserver: permission denied\)/);
      const r = await middlebox(['policy', 'apply', '-f', policyFile, ...certFlags()]);
      assert.equal(r.code, 0, r.stderr);
      const mb = await MiddleboxProcess.start({ etcd: etcd.endpoint, etcdTls: { caFile: pki.caFile, certFile: replicaCert.certFile, keyFile: replicaCert.keyFile } });
      replicas.push(mb);
      await waitFor(async () => (await mb.health.check('middlebox.etcd')) === 'SERVING', { timeoutMs: 10_000, what: 'the etcd watch to connect' });
      const check = new CheckClient(mb.address);
      try {
        assert.equal(statusOf(await check.check(httpCheck({ path: '/admin/users' }))), 403);
        await assertCountedInEtcd(mb, check);
      } finally {
        check.close();
      }
      assert.doesNotMatch(mb.output(), /permission denied/);
    });
  });

  describe('(b) etcd user and password', () => {
    let etcd: EtcdProcess;
    let passwordFile: string;
    const replicas: MiddleboxProcess[] = [];
    const PASSWORD = 'correct horse battery staple';
    const REPLICA_PASSWORD = 'replica-secret';

    before(async () => {
      etcd = await EtcdProcess.start();
      const admin = new Etcd3({ hosts: etcd.endpoint });
      try {
        await admin.user('root').create(PASSWORD);
        await admin.user('root').addRole('root');
        // What docs/security.md recommends for replicas: read the policies, write only shared state.
        const replicaRole = await admin.role('middlebox-replica').create();
        await replicaRole.grant([
          { permission: 'Read', range: Range.prefix('/middlebox/policies/') },
          ...['ratelimit', 'nat', 'replicas'].map((p) => ({ permission: 'Readwrite' as const, range: Range.prefix(`/middlebox/${p}/`) })),
        ]);
        await admin.user('replica').create(REPLICA_PASSWORD);
        await admin.user('replica').addRole('middlebox-replica');
        await admin.auth.authEnable();
      } finally {
        admin.close();
      }
      passwordFile = path.join(pki.dir, 'etcd-password');
      fs.writeFileSync(passwordFile, `${PASSWORD}\n`, { mode: 0o600 });
    });
    after(async () => {
      for (const r of replicas) await r.kill().catch(() => undefined);
      await etcd?.stop();
    });

    it('policy apply with --etcd-user and MIDDLEBOX_ETCD_PASSWORD works; so does --etcd-password-file', async () => {
      const r = await middlebox(['policy', 'apply', '-f', policyFile, '--etcd', etcd.endpoint, '--etcd-user', 'root'], { env: { MIDDLEBOX_ETCD_PASSWORD: PASSWORD } });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'policy/shop created\n');
      const get = await middlebox(['policy', 'get', 'shop', '-o', 'json', '--etcd', etcd.endpoint, '--etcd-user', 'root', '--etcd-password-file', passwordFile]);
      assert.equal(get.code, 0, get.stderr);
      assert.equal(JSON.parse(get.stdout).metadata.name, 'shop');
      const byEnv = await middlebox(['nat', 'list', '--etcd', etcd.endpoint], { env: { MIDDLEBOX_ETCD_USER: 'root', MIDDLEBOX_ETCD_PASSWORD_FILE: passwordFile } });
      assert.equal(byEnv.code, 0, byEnv.stderr);
    });

    it('a wrong password, no credentials, or a missing password: one clear line', async () => {
      assertOneLine(
        await middlebox(['policy', 'apply', '-f', policyFile, '--etcd', etcd.endpoint, '--etcd-user', 'root'], { env: { MIDDLEBOX_ETCD_PASSWORD: 'wrong' } }),
        1,
        /^middlebox policy apply: etcd at http:\/\/127\.0\.0\.1:\d+ refused user "root": wrong user name or password/,
      );
      assertOneLine(await middlebox(['policy', 'get', '--etcd', etcd.endpoint]), 1, /requires authentication: give --etcd-user and a password/);
      assertOneLine(await middlebox(['policy', 'get', '--etcd', etcd.endpoint, '--etcd-user', 'root']), 2, /--etcd-user root needs a password: set MIDDLEBOX_ETCD_PASSWORD or give --etcd-password-file/);
      assertOneLine(await middlebox(['policy', 'get', '--etcd', etcd.endpoint, '--etcd-user', 'root', '--etcd-password-file', path.join(pki.dir, 'nope')]), 1, /--etcd-password-file .*nope: cannot read it/);
    });

    it('has no flag that takes the password itself (it would show in ps)', async () => {
      const r = await middlebox(['policy', 'get', '--etcd', etcd.endpoint, '--etcd-user', 'root', '--etcd-password', PASSWORD]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /Unknown option '--etcd-password'/);
    });

    it('serve works with a user and password; with a wrong one it says so and fails closed', async () => {
      const mb = await MiddleboxProcess.start({ etcd: etcd.endpoint, etcdAuth: { username: 'root', password: PASSWORD } });
      replicas.push(mb);
      await waitFor(async () => (await mb.health.check('middlebox.etcd')) === 'SERVING', { timeoutMs: 10_000, what: 'the etcd watch to connect' });
      const check = new CheckClient(mb.address);
      try {
        assert.equal(statusOf(await check.check(httpCheck({ path: '/admin/users' }))), 403);
        assert.equal(statusOf(await check.check(httpCheck({ path: '/products/1' }))), 200);
        await assertCountedInEtcd(mb, check);
      } finally {
        check.close();
      }
      assert.doesNotMatch(mb.output(), new RegExp(PASSWORD), 'the password never reaches the log');

      const wrong = await MiddleboxProcess.start({ etcd: etcd.endpoint, etcdAuth: { username: 'root', password: 'wrong' }, waitFor: false });
      replicas.push(wrong);
      await waitFor(() => /refused user \\"root\\": wrong user name or password/.test(wrong.output()), { timeoutMs: 10_000, what: 'the replica to say what is wrong' });
      assert.equal(await wrong.health.check(''), 'NOT_SERVING');
      await wrong.kill();
    });

    it('a replica user limited by etcd roles serves, but cannot change a policy', async () => {
      assertOneLine(
        await middlebox(['policy', 'delete', 'shop', '--etcd', etcd.endpoint, '--etcd-user', 'replica'], { env: { MIDDLEBOX_ETCD_PASSWORD: REPLICA_PASSWORD } }),
        1,
        /denied user "replica" access \(etcdserver: permission denied\)/,
      );
      const mb = await MiddleboxProcess.start({ etcd: etcd.endpoint, etcdAuth: { username: 'replica', password: REPLICA_PASSWORD } });
      replicas.push(mb);
      await waitFor(async () => (await mb.health.check('middlebox.etcd')) === 'SERVING', { timeoutMs: 10_000, what: 'the etcd watch to connect' });
      const check = new CheckClient(mb.address);
      try {
        assert.equal(statusOf(await check.check(httpCheck({ path: '/admin/users' }))), 403);
        await assertCountedInEtcd(mb, check);
      } finally {
        check.close();
      }
      assert.match(mb.output(), /joined replica membership/, 'it registered under replicas/');
      assert.doesNotMatch(mb.output(), /permission denied/);
    });

    it('a replica with a password keeps following policy changes after etcd restarts (and forgets its tokens)', async () => {
      const mb = await MiddleboxProcess.start({ etcd: etcd.endpoint, etcdAuth: { username: 'replica', password: REPLICA_PASSWORD } });
      replicas.push(mb);
      await waitFor(async () => (await mb.health.check('middlebox.etcd')) === 'SERVING', { timeoutMs: 10_000, what: 'the etcd watch to connect' });
      await etcd.restart();
      const changed = path.join(pki.dir, 'changed.yaml');
      fs.writeFileSync(changed, POLICY.replace('/admin/*', '/reports/*'));
      const r = await middlebox(['policy', 'apply', '-f', changed, '--etcd', etcd.endpoint, '--etcd-user', 'root'], { env: { MIDDLEBOX_ETCD_PASSWORD: PASSWORD } });
      assert.equal(r.code, 0, r.stderr);
      const check = new CheckClient(mb.address);
      try {
        await waitFor(async () => statusOf(await check.check(httpCheck({ path: '/reports/q3' }))) === 403, { timeoutMs: 15_000, what: 'the replica to follow the change' });
        assert.equal(statusOf(await check.check(httpCheck({ path: '/admin/users' }))), 200);
      } finally {
        check.close();
      }
      assert.equal(await mb.health.check('middlebox.etcd'), 'SERVING');
      assert.doesNotMatch(mb.output(), /invalid auth token/);
    });
  });

  describe('(c) Envoy → middlebox over TLS and mTLS, with the rendered bootstrap', () => {
    const labs: SidecarLab[] = [];
    const envoys: EnvoyProcess[] = [];
    after(async () => {
      for (const e of envoys) await e.stop().catch(() => undefined);
      for (const l of labs) await l.stop().catch(() => undefined);
    });

    async function startLab(mtls: boolean, httpAuthz = false): Promise<SidecarLab> {
      const lab = await SidecarLab.start({ replicas: 1, middleboxTls: { pki, mtls }, httpAuthz });
      labs.push(lab);
      await lab.applyPolicies(parsePolicies(POLICY, 'test').documents);
      await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/admin/x' })).status === 403, { timeoutMs: 10_000, what: 'the policy to be in force' });
      return lab;
    }

    async function assertVerdicts(lab: SidecarLab, cluster = 'middlebox'): Promise<void> {
      const denied = await httpRequest({ port: lab.httpPort, path: '/admin/users' });
      assert.equal(denied.status, 403);
      assert.equal(JSON.parse(denied.body).rule, 'no-admin', 'the middlebox decided, not Envoy failing closed');
      const allowed = await httpRequest({ port: lab.httpPort, path: '/products/1' });
      assert.equal(allowed.status, 200);
      assert.match(JSON.parse(allowed.body).headers['x-middlebox-decision'], /\S+/);
      // Calls and health checks really went over TLS.
      const stats = await lab.envoy.stats(`^cluster\\.${cluster}\\.ssl\\.handshake$`);
      assert.ok((stats.get(`cluster.${cluster}.ssl.handshake`) ?? 0) > 0, `Envoy completed TLS handshakes with the middlebox (${cluster})`);
    }

    it('the rendered TLS and mTLS bootstraps pass envoy --mode validate', async () => {
      for (const tls of [
        { caFile: pki.caFile },
        { caFile: pki.caFile, certFile: pki.client.certFile, keyFile: pki.client.keyFile },
        { caFile: pki.caFile, subjectAltNames: ['localhost', '127.0.0.1'], sni: 'localhost' },
      ]) {
        const result = await validateConfig(renderBootstrapYaml({ middlebox: ['127.0.0.1:9001', 'localhost:9002'], middleboxTls: tls }));
        assert.ok(result.ok, result.output);
      }
    });

    it('over TLS: Envoy gets the policy verdicts (403 on the denied path, 200 elsewhere)', async () => {
      const lab = await startLab(false);
      await assertVerdicts(lab);
      const address = lab.replicas[0]!.address;
      // The replica speaks nothing but TLS.
      const plain = new HealthClient(address);
      try {
        await assert.rejects(plain.check('', 2000));
      } finally {
        plain.close();
      }
      assert.equal(statusOf(await checkOverTls(address, { caFile: pki.caFile }, httpCheck({ path: '/admin/users' }))), 403);
      assert.match(lab.replicas[0]!.output(), /"tls":"tls"/);
    });

    it('over mTLS: Envoy with the client certificate gets verdicts; one without it gets none (fails closed, 403 everywhere)', async () => {
      const lab = await startLab(true);
      await assertVerdicts(lab);
      const address = lab.replicas[0]!.address;
      assert.match(lab.replicas[0]!.output(), /"tls":"mtls"/);

      // Clients without a certificate, or with one from another CA, are refused at the handshake.
      for (const tls of [{ caFile: pki.caFile }, { caFile: pki.caFile, certFile: otherPki.client.certFile, keyFile: otherPki.client.keyFile }]) {
        const health = new HealthClient(address, tls);
        try {
          await assert.rejects(health.check('', 2000));
        } finally {
          health.close();
        }
      }
      assert.equal(statusOf(await checkOverTls(address, { caFile: pki.caFile, certFile: pki.client.certFile, keyFile: pki.client.keyFile }, httpCheck({ path: '/p' }))), 200);

      // A second Envoy rendered without the client certificate.
      const [adminPort, httpPort] = [await freePort(), await freePort()];
      const config = renderBootstrapYaml({
        adminPort,
        inboundHttp: { address: '127.0.0.1', port: httpPort, appAddress: '127.0.0.1', appPort: lab.app.port },
        middlebox: [address],
        middleboxTls: { caFile: pki.caFile },
        timeoutMs: 1000,
      });
      const envoy = await EnvoyProcess.start({ config, adminPort });
      envoys.push(envoy);
      await waitFor(async () => ((await envoy.stats('^cluster\\.middlebox\\.health_check\\.failure$')).get('cluster.middlebox.health_check.failure') ?? 0) >= 1, {
        timeoutMs: 10_000,
        what: 'the health check without a client certificate to fail',
      });
      assert.equal(await envoy.clusterHealthy('middlebox'), 0);
      for (const p of ['/products/1', '/admin/users', '/']) {
        const r = await httpRequest({ port: httpPort, path: p });
        assert.equal(r.status, 403, `${p}: Envoy's failure mode (deny), not a verdict`);
        assert.doesNotMatch(r.body, /"policy"/, 'no middlebox verdict reached Envoy');
      }
      // The first Envoy, with its certificate, is unaffected.
      await assertVerdicts(lab);
    });

    it('HTTP ext_authz over mTLS: the same certificates, verdicts over HTTP/1.1; no client certificate, no answer', async () => {
      const lab = await startLab(true, true);
      await assertVerdicts(lab, 'middlebox_http');
      const [host, port] = lab.replicas[0]!.httpAuthzAddress!.split(':');
      const ask = (tls: { cert?: Buffer; key?: Buffer }) =>
        new Promise<number>((resolve, reject) => {
          const req = https.request({ host, port: Number(port), path: '/healthz', ca: fs.readFileSync(pki.caFile), ...tls, timeout: 3000 }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on('error', reject);
          req.on('timeout', () => req.destroy(new Error('timeout')));
          req.end();
        });
      assert.equal(await ask({ cert: fs.readFileSync(pki.client.certFile), key: fs.readFileSync(pki.client.keyFile) }), 200);
      await assert.rejects(ask({}), 'a client without a certificate is refused at the handshake');
    });

    it('serve refuses incomplete or broken TLS flags with one line', async () => {
      const etcdFlag = ['--etcd', 'http://127.0.0.1:1', '--admin-listen', 'off', '--listen', `127.0.0.1:${await freePort()}`];
      assertOneLine(await middlebox(['serve', ...etcdFlag, '--tls-client-ca', pki.caFile]), 2, /--tls-client-ca \(mTLS\) needs --tls-cert and --tls-key/);
      assertOneLine(await middlebox(['serve', ...etcdFlag, '--tls-cert', pki.server.certFile]), 2, /--tls-cert and --tls-key go together/);
      assertOneLine(await middlebox(['serve', ...etcdFlag, '--tls-cert', path.join(pki.dir, 'nope.crt'), '--tls-key', pki.server.keyFile]), 1, /--tls-cert .*nope\.crt: cannot read it \(ENOENT\)/);
      assertOneLine(await middlebox(['serve', ...etcdFlag, '--tls-cert', pki.server.certFile, '--tls-key', pki.client.keyFile]), 1, /do not load \(.*key values mismatch/);
      assertOneLine(await middlebox(['serve', '--etcd', 'http://127.0.0.1:1', '--etcd-key', pki.client.keyFile, '--etcd-cert', pki.client.certFile]), 2, /need https:\/\/ etcd endpoints/);
      const help = await middlebox(['serve', '--help']);
      for (const flag of ['--tls-cert FILE', '--tls-key FILE', '--tls-client-ca FILE', '--etcd-cacert FILE', '--etcd-cert FILE', '--etcd-key FILE', '--etcd-user NAME', '--etcd-password-file']) {
        assert.ok(help.stdout.includes(flag), `serve --help lists ${flag}`);
      }
    });
  });
});
