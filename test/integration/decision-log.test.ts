// Decision logs end to end: a real Envoy with ext_authz and then ext_proc on one listener, a real
// replica and etcd. Each decision's id reaches Envoy's access log through the ext_authz filter's
// dynamic metadata, credentials never reach the middlebox's log, and a request ext_authz denies
// reaches the client as that denial (not as an ext_proc error). With both filters a request is
// decided once: ext_proc, told so by the bootstrap, charges no rate limit a second time.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { httpRequest } from '../../src/lab/client';
import { waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { parsePolicies } from '../../src/policy/parse';
import { jsonLines } from '../harness/log';

const POLICY = `
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  firewall:
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"] }
  rateLimits:
    - { name: three, match: { paths: ["/limited/*"] }, limit: 3, per: 1h, consistency: leased }
`;

const SECRETS = { authorization: 'Bearer s3cr3t-token', cookie: 'sid=s3cr3t-cookie', 'x-tenant-key': 's3cr3t-tenant' };


describe('decision logs joined with Envoy access logs, credentials redacted, whatever --log-level says', function () {
  this.timeout(60_000);
  let lab: SidecarLab;
  let accessLog: string;

  before(async () => {
    accessLog = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-access-')), 'access.log');
    lab = await SidecarLab.start({
      replicas: 1,
      bootstrap: { accessLog, inboundFilter: 'ext_authz+ext_proc' },
      // --log-level warn: the decision log is chosen by --decision-log alone.
      serveArgs: ['--decision-log', 'all', '--log-redact-headers', 'X-Tenant-Key', '--log-level', 'warn'],
    });
    const { documents, errors } = parsePolicies(POLICY, 'test');
    assert.deepEqual(errors, []);
    await lab.applyPolicies(documents);
    await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/admin/x' })).status === 403, { timeoutMs: 10_000, what: 'the policy' });
  });

  after(async () => {
    await lab?.stop();
    if (accessLog) fs.rmSync(path.dirname(accessLog), { recursive: true, force: true });
  });

  it('a denial by ext_authz reaches the client as its 403, with ext_proc on the same listener', async () => {
    const denied = await httpRequest({ port: lab.httpPort, path: '/admin/users', headers: SECRETS });
    assert.equal(denied.status, 403, denied.body);
    assert.equal(JSON.parse(denied.body).rule, 'no-admin');
    const allowed = await httpRequest({ port: lab.httpPort, path: '/products/1', headers: SECRETS });
    assert.equal(allowed.status, 200, allowed.body);
  });

  it('every access-log line carries the decision id, verdict and rule of the middlebox\'s decision line', async () => {
    const denied = await httpRequest({ port: lab.httpPort, path: '/admin/joined', headers: SECRETS });
    const allowed = await httpRequest({ port: lab.httpPort, path: '/products/joined', headers: SECRETS });
    assert.equal(denied.status, 403);
    assert.equal(allowed.status, 200);
    const decisionOf = (p: string) => jsonLines(lab.replicaLogFile(0)).find((l) => l.path === p && 'decision' in l && 'allow' in l);
    const accessOf = (p: string) => jsonLines(accessLog).find((l) => l.path === p);
    // Envoy flushes its access log about once a second.
    await waitFor(() => Boolean(accessOf('/admin/joined') && accessOf('/products/joined') && decisionOf('/admin/joined') && decisionOf('/products/joined')), {
      timeoutMs: 10_000,
      what: 'both access-log lines and both decision lines',
    });

    const deniedAccess = accessOf('/admin/joined')!;
    const deniedDecision = decisionOf('/admin/joined')!;
    assert.equal(deniedAccess.status, 403);
    assert.equal(deniedAccess.decision, deniedDecision.decision);
    assert.equal(deniedAccess.verdict, 'deny');
    assert.equal(deniedAccess.rule, 'no-admin');
    assert.equal(deniedAccess.reason, 'firewall_rule_deny');
    assert.equal(deniedDecision.rule, 'no-admin');
    assert.equal(deniedDecision.allow, false);
    assert.equal(typeof deniedDecision.latency_ms, 'number');

    const allowedAccess = accessOf('/products/joined')!;
    const allowedDecision = decisionOf('/products/joined')!;
    assert.equal(allowedAccess.status, 200);
    assert.equal(allowedAccess.decision, allowedDecision.decision);
    assert.equal(allowedAccess.verdict, 'allow');
    assert.equal(allowedDecision.allow, true);
  });

  it('never writes a credential: authorization, cookie and the configured header are redacted', async () => {
    await httpRequest({ port: lab.httpPort, path: '/admin/redact', headers: { ...SECRETS, 'x-plain': 'visible' } });
    const line = () => jsonLines(lab.replicaLogFile(0)).find((l) => l.path === '/admin/redact');
    await waitFor(() => Boolean(line()), { timeoutMs: 10_000, what: 'the decision line' });
    const headers = line()!.headers as Record<string, string>;
    assert.equal(headers.authorization, '[redacted]');
    assert.equal(headers.cookie, '[redacted]');
    assert.equal(headers['x-tenant-key'], '[redacted]');
    assert.equal(headers['x-plain'], 'visible', 'other headers are logged');
    const whole = fs.readFileSync(lab.replicaLogFile(0), 'utf8');
    // Every secret value shares this part: no piece of one may be in the log.
    assert.ok(Object.values(SECRETS).every((v) => v.includes('s3cr3t')));
    assert.ok(!whole.includes('s3cr3t'), 'a secret header value appears in the log');
  });

  it('decides a request once with both filters: a limit of 3 admits 3 (ext_proc charges nothing), one decision line each', async () => {
    const statuses: number[] = [];
    for (let i = 1; i <= 5; i++) statuses.push((await httpRequest({ port: lab.httpPort, path: `/limited/${i}` })).status);
    assert.deepEqual(statuses, [200, 200, 200, 429, 429]);
    const decisions = (p: string) => jsonLines(lab.replicaLogFile(0)).filter((l) => l.path === p && 'decision' in l && 'allow' in l);
    await waitFor(() => decisions('/limited/3').length > 0, { timeoutMs: 10_000, what: 'the decision line of /limited/3' });
    for (let i = 1; i <= 3; i++) assert.equal(decisions(`/limited/${i}`).length, 1, `one decision line for /limited/${i}`);
  });
});
