// --state-dir and --on-no-state with a real etcd and real replicas: a replica restarted while etcd
// is down enforces the last good policy from its state file; without etcd or a file it fails closed
// (or open, by choice); a corrupt file is ignored; etcd's content wins once it is back; the NAT
// table's mappings survive a restart during the outage.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { EtcdProcess } from '../../src/lab/etcd';
import { MiddleboxProcess } from '../../src/lab/middlebox';
import { freePort, sleep, waitFor } from '../../src/lab/ports';
import { silentLogger } from '../../src/observability/logger';
import { compileSnapshot } from '../../src/policy/compile';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';
import { readSnapshot, writeSnapshot } from '../../src/state/disk';
import { connectEtcd } from '../../src/state/etcd/client';
import { EtcdNatTable, type NatStateFile } from '../../src/state/etcd/nat';
import { deletePolicy, putPolicies, type PolicyStateFile } from '../../src/state/etcd/policies';
import { CheckClient, httpCheck, statusOf } from '../harness/check';
import { middlebox } from '../harness/cli';

function policy(name: string, spec: string): PolicyDocument {
  const { documents, errors } = parsePolicies(`apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: ${name} }\nspec: ${spec}\n`, 'state-dir');
  assert.deepEqual(errors, []);
  return documents[0]!;
}

const PREFIX = '/statedir';

describe('--state-dir and --on-no-state (real etcd, real replicas)', function () {
  this.timeout(120_000);
  let etcd: EtcdProcess;
  let client: Etcd3;
  let root: string;
  /** An etcd endpoint nothing listens on. */
  let deadEtcd: string;
  const replicas: MiddleboxProcess[] = [];
  const checkClients: CheckClient[] = [];

  before(async () => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-state-dir-'));
    etcd = await EtcdProcess.start({ logFile: path.join(root, 'etcd.log') });
    client = connectEtcd({ endpoints: [etcd.endpoint] });
    deadEtcd = `http://127.0.0.1:${await freePort()}`;
  });

  after(async () => {
    for (const c of checkClients) c.close();
    for (const r of replicas) await r.stop(3000).catch(() => undefined);
    client?.close();
    await etcd?.stop().catch(() => undefined);
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  const logs = new Map<MiddleboxProcess, string>();

  async function replica(opts: Partial<Parameters<typeof MiddleboxProcess.start>[0]>): Promise<MiddleboxProcess> {
    const port = await freePort();
    const logFile = opts.logFile ?? path.join(root, `middlebox-${port}.log`);
    const m = await MiddleboxProcess.start({ etcd: etcd.endpoint, prefix: PREFIX, listen: `127.0.0.1:${port}`, ...opts, logFile });
    replicas.push(m);
    logs.set(m, logFile);
    return m;
  }

  /** The replica's whole log (output() keeps only its last lines). */
  const logOf = (m: MiddleboxProcess) => fs.readFileSync(logs.get(m)!, 'utf8');
  const waitLog = (m: MiddleboxProcess, re: RegExp) => waitFor(() => re.test(logOf(m)), { timeoutMs: 5000, what: `a log line ${re}` });

  async function stopReplica(m: MiddleboxProcess): Promise<void> {
    await m.stop(5000);
    replicas.splice(replicas.indexOf(m), 1);
  }

  async function statusFor(m: MiddleboxProcess, p: string): Promise<number> {
    const c = new CheckClient(m.address);
    checkClients.push(c);
    return statusOf(await c.check(httpCheck({ path: p })));
  }

  const policyNames = (dir: string) => ((readSnapshot(dir, 'policies') as PolicyStateFile | undefined)?.policies ?? []).map((p) => p.metadata.name).sort();

  describe('policies kept across an etcd outage', () => {
    const dir = () => path.join(root, 'replica-a');
    let a: MiddleboxProcess;

    it('a replica with --state-dir learns the policies from etcd and writes them to its state dir', async () => {
      a = await replica({ stateDir: dir(), logFile: path.join(root, 'replica-a.log') });
      await putPolicies(client, PREFIX, [
        policy('edge', '{ firewall: { rules: [ { name: no-admin, action: deny, paths: ["/admin/*"] } ] } }'),
        policy('legacy', '{ firewall: { rules: [ { name: no-old, action: deny, paths: ["/old/*"] } ] } }'),
      ]);
      await waitFor(async () => (await statusFor(a, '/admin/x')) === 403 && (await statusFor(a, '/old/x')) === 403, {
        timeoutMs: 10_000,
        what: 'both deny policies in force',
      });
      await waitFor(() => policyNames(dir()).join() === 'edge,legacy', { timeoutMs: 5000, what: 'policies.json to hold both policies' });
      const file = readSnapshot(dir(), 'policies') as PolicyStateFile;
      assert.equal(file.version, 1);
      assert.ok(Number(file.revision) > 0, `revision ${file.revision}`);
      assert.ok(Date.now() - Date.parse(file.savedAt) < 60_000, `savedAt ${file.savedAt}`);
    });

    it('restarted while etcd is down, it enforces the policies from its state file', async () => {
      await stopReplica(a);
      // Changed in etcd while the replica is away: its file does not know, etcd must win later.
      assert.equal(await deletePolicy(client, PREFIX, 'legacy'), true);
      await etcd.kill();
      a = await replica({ stateDir: dir(), logFile: path.join(root, 'replica-a.log'), waitFor: 'SERVING' });
      assert.equal(await statusFor(a, '/admin/x'), 403);
      assert.equal(await statusFor(a, '/old/x'), 403, 'the state file is last known good, deleted policy included');
      assert.equal(await statusFor(a, '/'), 200);
      assert.equal(await a.health.check(''), 'SERVING');
      assert.equal(await a.health.check('middlebox.policy'), 'SERVING');
      assert.equal(await a.health.check('middlebox.etcd'), 'NOT_SERVING', 'degraded: no etcd');
      await waitLog(a, /policies loaded from the state dir/);
    });

    it('when etcd is back, its content replaces the state file (etcd wins)', async () => {
      await etcd.restart();
      await waitFor(async () => (await statusFor(a, '/old/x')) === 200, { timeoutMs: 20_000, intervalMs: 200, what: 'etcd (legacy deleted) to replace the state file' });
      assert.equal(await statusFor(a, '/admin/x'), 403);
      assert.equal(await statusFor(a, '/'), 200);
      await waitFor(() => policyNames(dir()).join() === 'edge', { timeoutMs: 5000, what: 'policies.json to follow etcd' });
      await waitFor(async () => (await a.health.check('middlebox.etcd')) === 'SERVING', { timeoutMs: 10_000, what: 'the etcd component SERVING again' });
    });
  });

  describe('neither etcd nor a state file', () => {
    it('fails closed by default: 503 and NOT_SERVING, and stays so', async () => {
      const m = await replica({ etcd: deadEtcd, stateDir: path.join(root, 'empty-1'), waitFor: 'NOT_SERVING' });
      assert.equal(await statusFor(m, '/'), 503);
      await sleep(3500); // past the first load attempt, where the choice applies
      assert.equal(await statusFor(m, '/'), 503);
      assert.equal(await m.health.check(''), 'NOT_SERVING');
      await waitLog(m, /failing closed/);
    });

    it('--on-no-state fail-open allows everything, SERVING, with a warning', async () => {
      const m = await replica({ etcd: deadEtcd, onNoState: 'fail-open', waitFor: 'SERVING' });
      assert.equal(await statusFor(m, '/admin/x'), 200);
      assert.equal(await m.health.check(''), 'SERVING');
      assert.equal(await m.health.check('middlebox.etcd'), 'NOT_SERVING');
      await waitLog(m, /failing OPEN/);
    });

    it('a corrupt state file is ignored with a log line (then fail-closed applies)', async () => {
      const dir = path.join(root, 'corrupt');
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'policies.json'), '{"version": 1, "policies": [{"apiVersion": "midd');
      const m = await replica({ etcd: deadEtcd, stateDir: dir, waitFor: 'NOT_SERVING' });
      await waitLog(m, /not JSON.*"msg":"policy state file is corrupt or invalid; ignored"/);
      assert.equal(await statusFor(m, '/'), 503);
    });

    it('a tampered state file (an invalid policy) is ignored as a whole', async () => {
      const dir = path.join(root, 'tampered');
      const edge = policy('edge', '{ firewall: { rules: [ { name: no-admin, action: deny, paths: ["/admin/*"] } ] } }');
      const bad = JSON.parse(JSON.stringify(edge));
      bad.metadata.name = 'open';
      bad.spec.firewall = { default: 'allow', rules: [{ name: 'x', action: 'allow', from: ['not-an-ip'] }] };
      fs.mkdirSync(dir, { recursive: true });
      await writeSnapshot(dir, 'policies', { version: 1, revision: '1', savedAt: new Date().toISOString(), policies: [edge, bad] });
      const m = await replica({ etcd: deadEtcd, stateDir: dir, waitFor: 'NOT_SERVING' });
      await waitLog(m, /policy state file is corrupt or invalid; ignored/);
      assert.match(logOf(m), /policy \\"open\\" is invalid/);
      assert.equal(await statusFor(m, '/'), 503);
    });

    it('a state dir that cannot be written: a clear error, exit 1, no stack trace', async () => {
      const file = path.join(root, 'a-file');
      fs.writeFileSync(file, '');
      const r = await middlebox(['serve', '--etcd', deadEtcd, '--listen', `127.0.0.1:${await freePort()}`, '--state-dir', path.join(file, 'state')], {
        env: { MIDDLEBOX_DEBUG: '' },
        timeoutMs: 10_000,
      });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^middlebox serve: --state-dir ".*" cannot be written: ENOTDIR/);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    });

    it('an unknown --on-no-state is a usage error', async () => {
      const r = await middlebox(['serve', '--etcd', deadEtcd, '--on-no-state', 'maybe'], { timeoutMs: 10_000 });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /--on-no-state must be fail-closed or fail-open/);
    });
  });

  describe('NAT table', () => {
    it('a flow mapped while etcd was up is mapped the same way by a table reopened during an outage; etcd replaces the file when back', async () => {
      const dir = path.join(root, 'nat');
      fs.mkdirSync(dir, { recursive: true });
      const pool = ['127.0.0.1:18081', '127.0.0.1:18082', '127.0.0.1:18083'];
      const doc = policy('vip', `{ nat: [ { name: web, match: { hosts: ["vip.local"] }, to: ${JSON.stringify(pool)}, affinity: sourceIp, idleTimeout: 10m } ] }`);
      const rule = compileSnapshot([doc], 1).policies[0]!.nat[0]!;
      const natPrefix = `${PREFIX}-nat`;
      // etcd must be up for the first half (the test before may have left it down on failure).
      if (!etcd.running) await etcd.restart();

      const first = EtcdNatTable.open({ client, prefix: natPrefix, logger: silentLogger(), stateDir: dir });
      try {
        await waitFor(() => first.isLoaded, { timeoutMs: 10_000, what: 'the NAT table to load' });
        // Not necessarily rendezvous hashing's choice: what counts is that the mapping is kept.
        assert.equal(await first.assign(rule, '10.9.0.1', pool[2]!, undefined, Date.now()), pool[2]);
        await waitFor(() => ((readSnapshot(dir, 'nat') as NatStateFile | undefined)?.flows ?? []).some((f) => f.flow === '10.9.0.1'), {
          timeoutMs: 5000,
          what: 'nat.json to hold the flow',
        });
      } finally {
        await first.close();
      }
      // A mapping only the file knows, to show that etcd's table replaces the file's.
      const file = readSnapshot(dir, 'nat') as NatStateFile;
      file.flows.push({ rule: rule.id, flow: '10.9.0.2', backend: pool[0]! });
      await writeSnapshot(dir, 'nat', file);

      await etcd.kill();
      const outageClient = connectEtcd({ endpoints: [etcd.endpoint] });
      const second = EtcdNatTable.open({ client: outageClient, prefix: natPrefix, logger: silentLogger(), stateDir: dir });
      try {
        assert.equal(second.isLoaded, false);
        assert.equal(second.source, 'disk');
        assert.equal(second.lookup(rule, '10.9.0.1'), pool[2]);
        assert.equal(second.lookup(rule, '10.9.0.2'), pool[0]);

        await etcd.restart();
        await waitFor(() => second.isLoaded, { timeoutMs: 20_000, intervalMs: 100, what: 'the NAT table to load from etcd' });
        assert.equal(second.source, 'etcd');
        assert.equal(second.lookup(rule, '10.9.0.1'), pool[2], 'etcd holds the same mapping');
        assert.equal(second.lookup(rule, '10.9.0.2'), undefined, 'a mapping etcd does not hold is gone');
        await waitFor(() => !(readSnapshot(dir, 'nat') as NatStateFile).flows.some((f) => f.flow === '10.9.0.2'), {
          timeoutMs: 5000,
          what: 'nat.json to follow etcd',
        });
      } finally {
        await second.close();
        outageClient.close();
      }
    });
  });
});
