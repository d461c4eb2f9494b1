// The local state files (--state-dir): atomic JSON snapshots, corrupt files reported not thrown,
// coalesced writes, and the policy store starting from a file while etcd is unreachable.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { freePort, waitFor } from '../../src/lab/ports';
import { parsePolicies } from '../../src/policy/parse';
import type { PolicyDocument } from '../../src/policy/types';
import { CorruptSnapshot, ensureStateDir, isCorruptSnapshot, readSnapshot, snapshotPath, SnapshotWriter, writeSnapshot } from '../../src/state/disk';
import { connectEtcd } from '../../src/state/etcd/client';
import { readNatState } from '../../src/state/etcd/nat';
import { EtcdPolicyStore, readPolicyState, type PolicyStateFile } from '../../src/state/etcd/policies';

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'mb-state-unit-'));
}

function policy(name: string, spec: string): PolicyDocument {
  const { documents, errors } = parsePolicies(`apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: ${name} }\nspec: ${spec}\n`, 't.yaml');
  assert.deepEqual(errors, []);
  return documents[0]!;
}

/** A logger whose lines (parsed) are kept for assertions. */
function capturingLogger() {
  const lines: Array<{ level: number; msg: string; [k: string]: unknown }> = [];
  const logger = pino({ level: 'debug' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
  return { logger, lines };
}

describe('state dir: snapshot files', () => {
  const dirs: string[] = [];
  const dir = () => {
    const d = tempDir();
    dirs.push(d);
    return d;
  };
  after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  it('writes atomically and reads back what was written, leaving no temp file', async () => {
    const d = dir();
    await writeSnapshot(d, 'x', { a: 1, list: ['b'] });
    assert.deepEqual(readSnapshot(d, 'x'), { a: 1, list: ['b'] });
    await writeSnapshot(d, 'x', { a: 2 });
    assert.deepEqual(readSnapshot(d, 'x'), { a: 2 });
    assert.deepEqual(fs.readdirSync(d), ['x.json']);
    assert.equal(snapshotPath(d, 'x'), path.join(d, 'x.json'));
  });

  it('reads a missing file as undefined', () => {
    assert.equal(readSnapshot(dir(), 'nothing'), undefined);
  });

  it('reports a corrupt file as a CorruptSnapshot value, without throwing', () => {
    const d = dir();
    fs.writeFileSync(path.join(d, 'x.json'), '{"a": 1, "trunc');
    const v = readSnapshot(d, 'x');
    assert.ok(isCorruptSnapshot(v));
    assert.ok(v instanceof CorruptSnapshot);
    assert.equal(v.path, path.join(d, 'x.json'));
    assert.match(v.message, /x\.json is unreadable: not JSON/);
    fs.mkdirSync(path.join(d, 'y.json'));
    assert.ok(isCorruptSnapshot(readSnapshot(d, 'y')), 'a directory in the way is reported too');
  });

  it('keeps the old file when a write fails, and removes its temp file', async () => {
    const d = dir();
    await writeSnapshot(d, 'x', { good: true });
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    await assert.rejects(writeSnapshot(d, 'x', circular));
    assert.deepEqual(readSnapshot(d, 'x'), { good: true });
    await assert.rejects(writeSnapshot(path.join(d, 'missing-subdir'), 'x', {}));
    assert.deepEqual(fs.readdirSync(d), ['x.json']);
  });

  it('a temp file left by a crash does not disturb the snapshot', async () => {
    const d = dir();
    await writeSnapshot(d, 'x', { v: 1 });
    fs.writeFileSync(path.join(d, '.x.json.999.1.tmp'), '{"v": 2, "half');
    assert.deepEqual(readSnapshot(d, 'x'), { v: 1 });
  });

  it('ensureStateDir creates the dir, and refuses one that cannot be written', () => {
    const d = path.join(dir(), 'a', 'b');
    assert.equal(ensureStateDir(d), d);
    assert.ok(fs.statSync(d).isDirectory());
    assert.deepEqual(fs.readdirSync(d), []);
    const file = path.join(dir(), 'plain-file');
    fs.writeFileSync(file, '');
    assert.throws(() => ensureStateDir(path.join(file, 'sub')), /--state-dir .* cannot be written: ENOTDIR/);
  });
});

describe('state dir: SnapshotWriter', () => {
  let d: string;
  beforeEach(() => {
    d = tempDir();
  });
  afterEach(() => fs.rmSync(d, { recursive: true, force: true }));

  it('coalesces a burst: one write in flight, then one with the last value', async () => {
    const events: string[] = [];
    const w = new SnapshotWriter(d, 's', { onWritten: () => events.push('written') });
    for (let i = 0; i < 100; i++) {
      w.schedule(() => {
        events.push(`produce ${i}`);
        return { i };
      });
    }
    await w.flush();
    // The first write started at once; the 99 that came while it was in flight became one write.
    assert.deepEqual(events, ['produce 0', 'written', 'produce 99', 'written']);
    assert.deepEqual(readSnapshot(d, 's'), { i: 99 });
    await w.close();
    w.schedule(() => ({ i: 'after close' }));
    await w.flush();
    assert.deepEqual(readSnapshot(d, 's'), { i: 99 });
  });

  it('waits minIntervalMs between writes, unless flushed', async () => {
    const starts: number[] = [];
    const w = new SnapshotWriter(d, 's', { minIntervalMs: 300 });
    const produce = (v: number) => () => {
      starts.push(Date.now());
      return { v };
    };
    w.schedule(produce(1));
    await w.flush();
    w.schedule(produce(2));
    w.schedule(produce(3));
    await waitFor(() => starts.length === 2, { timeoutMs: 2000, what: 'the second write' });
    assert.ok(starts[1]! - starts[0]! >= 290, `second write ${starts[1]! - starts[0]!} ms after the first`);
    await waitFor(() => readSnapshot(d, 's') !== undefined && (readSnapshot(d, 's') as { v: number }).v === 3, { timeoutMs: 2000, what: 'v 3' });
    // A flush right after a write does not wait out the interval (5 s here: far from any delay).
    const slow = new SnapshotWriter(d, 's', { minIntervalMs: 5000 });
    slow.schedule(produce(4));
    await slow.flush();
    const t = Date.now();
    slow.schedule(produce(5));
    await slow.flush();
    assert.ok(Date.now() - t < 2500, `flush waited ${Date.now() - t} ms: the interval`);
    assert.deepEqual(readSnapshot(d, 's'), { v: 5 });
    assert.equal(starts.length, 4);
  });

  it('reports a failed write and tries again on the next schedule', async () => {
    const errors: string[] = [];
    const sub = path.join(d, 'later');
    const w = new SnapshotWriter(sub, 's', { onError: (e) => errors.push(e.message) });
    w.schedule(() => ({ v: 1 }));
    await w.flush();
    assert.equal(errors.length, 1);
    fs.mkdirSync(sub);
    w.schedule(() => ({ v: 2 }));
    await w.flush();
    assert.deepEqual(readSnapshot(sub, 's'), { v: 2 });
  });
});

describe('state dir: what the stores accept from a file', () => {
  const deny = () => policy('edge', '{ firewall: { rules: [ { name: no-admin, action: deny, paths: ["/admin/*"] } ] } }');

  it('a policy state file goes through the same validation as etcd', () => {
    const good: PolicyStateFile = { version: 1, revision: '7', savedAt: 'now', policies: [deny()] };
    const read = readPolicyState(JSON.parse(JSON.stringify(good)), 'p.json');
    assert.ok(!('error' in read));
    assert.equal(read.documents[0]!.metadata.name, 'edge');
    assert.equal(read.revision, '7');

    const tampered = JSON.parse(JSON.stringify(good));
    tampered.policies[0].spec.firewall.rules[0].action = 'maybe';
    const refused = readPolicyState(tampered, 'p.json');
    assert.ok('error' in refused);
    assert.match(refused.error, /policy "edge" is invalid/);

    assert.ok('error' in readPolicyState({ version: 1, policies: [deny(), deny()] }, 'p.json'), 'a name twice');
    assert.ok('error' in readPolicyState({ version: 2, policies: [] }, 'p.json'), 'unknown version');
    assert.ok('error' in readPolicyState(null, 'p.json'));
    assert.ok('error' in readPolicyState({ version: 1, policies: [{ spec: {} }] }, 'p.json'), 'no name');
  });

  it('a NAT state file must hold well-formed mappings', () => {
    const ok = readNatState({ version: 1, savedAt: 'x', flows: [{ rule: 'p/r', flow: '10.0.0.1', backend: '10.1.0.1:80' }], drained: ['10.1.0.2:80'] });
    assert.ok(!('error' in ok));
    assert.equal(ok.flows.length, 1);
    assert.ok('error' in readNatState({ version: 1, flows: [{ rule: 'p/r', flow: 1, backend: 'b' }], drained: [] }));
    assert.ok('error' in readNatState({ version: 1, flows: [null], drained: [] }));
    assert.ok('error' in readNatState({ version: 1, flows: [], drained: [3] }));
    assert.ok('error' in readNatState('nope'));
  });
});

describe('state dir: EtcdPolicyStore while etcd is unreachable', function () {
  this.timeout(10_000);
  let d: string;
  let endpoint: string;
  const stores: EtcdPolicyStore[] = [];
  const clients: Array<{ close(): void }> = [];

  beforeEach(async () => {
    d = tempDir();
    endpoint = `http://127.0.0.1:${await freePort()}`; // nothing listens there
  });
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
    for (const c of clients.splice(0)) c.close();
    fs.rmSync(d, { recursive: true, force: true });
  });

  function open(opts: Partial<Parameters<typeof EtcdPolicyStore.open>[0]> = {}) {
    const client = connectEtcd({ endpoints: [endpoint] });
    clients.push(client);
    const { logger, lines } = capturingLogger();
    const store = EtcdPolicyStore.open({ client, prefix: '/t', logger, loadTimeoutMs: 200, ...opts });
    stores.push(store);
    return { store, lines };
  }

  it('starts from the state file at once', async () => {
    await writeSnapshot(d, 'policies', {
      version: 1,
      revision: '12',
      savedAt: new Date().toISOString(),
      policies: [policy('edge', '{ firewall: { rules: [ { name: no-admin, action: deny, paths: ["/admin/*"] } ] } }')],
    } satisfies PolicyStateFile);
    const { store, lines } = open({ stateDir: d });
    const snap = store.snapshot();
    assert.ok(snap, 'a snapshot right after open()');
    assert.deepEqual(snap.policies.map((p) => p.name), ['edge']);
    const status = store.status();
    assert.equal(status.source, 'disk');
    assert.equal(status.loaded, true);
    assert.equal(status.connected, false);
    assert.ok(lines.some((l) => l.msg.includes('policies loaded from the state dir')));
  });

  it('ignores a corrupt or tampered file with a log line, and fails closed', async () => {
    fs.writeFileSync(path.join(d, 'policies.json'), '{"version": 1, "policies": [');
    const { store, lines } = open({ stateDir: d });
    assert.equal(store.snapshot(), undefined);
    assert.equal(store.status().source, 'none');
    assert.ok(lines.some((l) => l.msg === 'policy state file is corrupt or invalid; ignored' && String(l.err).includes('not JSON')));
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(store.snapshot(), undefined, 'fail-closed is the default');
    assert.ok(lines.some((l) => l.msg.includes('failing closed')));
  });

  it('fail-open publishes an empty policy after the first load attempt, and warns', async () => {
    const { store, lines } = open({ stateDir: d, onNoState: 'fail-open' });
    assert.equal(store.snapshot(), undefined);
    await waitFor(() => store.snapshot() !== undefined, { timeoutMs: 2000, what: 'the fail-open snapshot' });
    assert.deepEqual(store.snapshot()!.policies, []);
    assert.equal(store.status().loaded, true);
    assert.equal(store.status().source, 'none');
    assert.ok(lines.some((l) => l.level === 40 && l.msg.includes('failing OPEN')));
    assert.equal(fs.existsSync(path.join(d, 'policies.json')), false, 'the empty fail-open policy is not written');
  });
});
