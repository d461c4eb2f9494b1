// A real 3-member etcd cluster: the lab cluster itself (members rejoin from their data dirs, freeze,
// quorum), then a real middlebox replica enforcing a `strict` limit while members die: exact with
// all three and with two, answering every Check in time without quorum, exact again once restored.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { EtcdCluster } from '../../src/lab/etcd-cluster';
import { MiddleboxProcess } from '../../src/lab/middlebox';
import { sleep, waitFor } from '../../src/lab/ports';
import { parsePolicies } from '../../src/policy/parse';
import { connectEtcd } from '../../src/state/etcd/client';
import { putPolicies } from '../../src/state/etcd/policies';
import { CheckClient, httpCheck, statusOf } from '../harness/check';

const b64 = (text: string) => Buffer.from(text).toString('base64');
const unique = (label: string) => `${label}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

/** Prints what a run observed (status mixes, latencies), which the assertions leave open. */
function note(text: string): void {
  process.stdout.write(`      observed: ${text}\n`);
}

describe('EtcdCluster', function () {
  this.timeout(60_000);
  let cluster: EtcdCluster;

  before(async () => {
    cluster = await EtcdCluster.start();
  });

  after(async () => {
    await cluster?.stop();
  });

  async function put(i: number, key: string, value: string): Promise<void> {
    await cluster.member(i).gateway('kv/put', { key: b64(key), value: b64(value) }, 3000);
  }

  /** A serializable read: what member `i` itself holds, without asking the leader. */
  async function localGet(i: number, key: string): Promise<string | undefined> {
    const body = await cluster.member(i).gateway<{ kvs?: { value: string }[] }>('kv/range', { key: b64(key), serializable: true }, 3000);
    const value = body.kvs?.[0]?.value;
    return value === undefined ? undefined : Buffer.from(value, 'base64').toString();
  }

  it('starts three healthy members on distinct loopback ports with one leader', async () => {
    assert.equal(cluster.endpoints.length, 3);
    for (const e of cluster.endpoints) assert.match(e, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(new Set(cluster.endpoints).size, 3);
    for (let i = 0; i < 3; i++) assert.equal(await cluster.healthy(i), true, `member ${i}`);
    assert.equal(await cluster.hasQuorum(), true);
    assert.ok((await cluster.leader()) !== undefined);
    assert.throws(() => cluster.member(3), /no etcd member 3/);
  });

  it('a killed member restarts from its data dir, rejoins and catches up', async () => {
    const leader = (await cluster.leader())!;
    const victim = (leader + 1) % 3;
    const pid = cluster.member(victim).pid;
    await cluster.member(victim).kill();
    assert.equal(await cluster.healthy(victim), false);
    assert.equal(await cluster.hasQuorum(), true);
    const key = unique('/lab/while-down');
    await put(leader, key, 'written while m was down');
    // Same flags as the first start (--initial-cluster-state new): with a data dir etcd ignores them.
    await cluster.member(victim).restart();
    assert.notEqual(cluster.member(victim).pid, pid);
    await waitFor(async () => (await localGet(victim, key)) === 'written while m was down', {
      timeoutMs: 5000,
      what: 'the restarted member to catch up',
    });
    await cluster.waitAllHealthy(5000);
  });

  it('a frozen member is unhealthy, the others keep quorum, and it recovers when thawed', async () => {
    const leader = (await cluster.leader())!;
    // Freeze the leader: the other two must elect a new one.
    await cluster.member(leader).freeze();
    try {
      assert.equal(await cluster.healthy(leader), false);
      await waitFor(() => cluster.hasQuorum(), { timeoutMs: 5000, what: 'quorum without the frozen leader' });
      const next = await cluster.leader();
      assert.ok(next !== undefined && next !== leader, `new leader ${next}, frozen ${leader}`);
    } finally {
      cluster.member(leader).thaw();
    }
    await cluster.waitAllHealthy(5000);
  });

  it('loses quorum with two members down and regains it when one returns', async () => {
    await cluster.member(0).stop();
    await cluster.member(1).kill();
    await waitFor(async () => !(await cluster.hasQuorum()), { timeoutMs: 5000, what: 'quorum to be lost' });
    assert.equal(await cluster.healthy(2), false);
    await cluster.member(0).restart();
    assert.equal(await cluster.hasQuorum(), true);
    await cluster.member(1).restart();
    await cluster.waitAllHealthy(5000);
  });

  it('stop() ends every member and removes the data dirs', async () => {
    const other = await EtcdCluster.start({ members: 1 });
    const { pid, dataDir } = other.member(0);
    await other.stop();
    assert.throws(() => process.kill(pid, 0));
    assert.equal(fs.existsSync(dataDir), false);
  });
});

const LIMIT = 20;
const CALLS = 40;
const PER_MS = 3_600_000;
const PREFIX = '/middlebox-cluster-test';
const POLICY = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: cluster }
spec:
  rateLimits:
    - { name: exact, limit: ${LIMIT}, per: 1h, by: ["header:x-k"], algorithm: fixed-window, consistency: strict }
`;

interface Answer {
  status: number; // the HTTP status Envoy would answer; 0: the Check call itself failed
  reason?: string;
  ms: number;
}

function summary(answers: Answer[]): string {
  const counts = new Map<string, number>();
  for (const a of answers) {
    const k = a.reason ? `${a.status}(${a.reason})` : String(a.status);
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  const ms = answers.map((a) => a.ms).sort((x, y) => x - y);
  const p50 = ms[Math.floor(ms.length / 2)] ?? 0;
  return `${[...counts].map(([k, n]) => `${k}×${n}`).join(' ')}; latency median ${p50} ms, max ${ms[ms.length - 1] ?? 0} ms`;
}

describe('strict rate limit on a 3-member etcd cluster while members die', function () {
  this.timeout(120_000);
  let cluster: EtcdCluster;
  let client: Etcd3 | undefined;
  let replica: MiddleboxProcess;
  let check: CheckClient;
  let logDir: string;
  const killed: number[] = [];

  before(async () => {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-cluster-test-'));
    cluster = await EtcdCluster.start({ members: 3 });
    client = connectEtcd({ endpoints: cluster.endpoints });
    const { documents, errors } = parsePolicies(POLICY, 'cluster');
    assert.deepEqual(errors, []);
    await putPolicies(client, PREFIX, documents);
    client.close();
    client = undefined;
    replica = await MiddleboxProcess.start({
      etcd: cluster.endpoints.join(','),
      prefix: PREFIX,
      logFile: path.join(logDir, 'middlebox.log'),
    });
    check = new CheckClient(replica.address);
  });

  after(async () => {
    check?.close();
    client?.close();
    await replica?.stop();
    await cluster?.stop();
    if (logDir) fs.rmSync(logDir, { recursive: true, force: true });
  });

  afterEach(function () {
    if (this.currentTest?.state === 'failed' && replica) {
      // Everything but the decision lines, which are most of it.
      const lines = replicaLog().filter((l) => !/"msg":"(allowed|denied)"/.test(l));
      process.stdout.write(`--- last non-decision lines of the replica's log ---\n${lines.slice(-20).join('\n')}\n`);
    }
  });

  function replicaLog(): string[] {
    try {
      return fs.readFileSync(path.join(logDir, 'middlebox.log'), 'utf8').split('\n').filter(Boolean);
    } catch {
      return [];
    }
  }

  /** The etcd breaker's transitions logged since the last call ("open, half-open, closed"). */
  let logSeen = 0;
  function breakerTransitions(): string {
    const lines = replicaLog();
    const fresh = lines.slice(logSeen);
    logSeen = lines.length;
    const states = fresh.flatMap((l) => /"breaker":"etcd","state":"([a-z-]+)"/.exec(l)?.[1] ?? []);
    return states.length ? states.join(' → ') : 'none';
  }

  async function ask(key: string, timeoutMs = 2000): Promise<Answer> {
    const t0 = Date.now();
    try {
      const res = await check.check(httpCheck({ path: '/', headers: { 'x-k': key } }), timeoutMs);
      const status = statusOf(res);
      let reason: string | undefined;
      if (status !== 200 && res.denied_response?.body) reason = (JSON.parse(res.denied_response.body) as { reason?: string }).reason;
      return { status, reason, ms: Date.now() - t0 };
    } catch (e) {
      return { status: 0, reason: (e as Error).message, ms: Date.now() - t0 };
    }
  }

  /** `n` Checks one after another on a fresh bucket. */
  async function sequence(label: string, n = CALLS): Promise<Answer[]> {
    const key = unique(label);
    const out: Answer[] = [];
    for (let i = 0; i < n; i++) out.push(await ask(key));
    return out;
  }

  /** Waits if the limit's window ends within `needMs`, so a phase never straddles two windows. */
  async function awayFromWindowEnd(needMs = 20_000): Promise<void> {
    const left = PER_MS - (Date.now() % PER_MS);
    if (left < needMs) await sleep(left + 50);
  }

  /**
   * Waits (bounded) until the replica decides strict limits in etcd again: its etcd component is
   * SERVING (breaker closed) and a Check on a fresh probe bucket is admitted by a committed write.
   * This is where a leader election or a breaker's reset timeout is waited out.
   */
  async function waitStrictPath(timeoutMs: number): Promise<number> {
    const t0 = Date.now();
    await waitFor(
      async () => {
        if ((await replica.health.check('middlebox.etcd')) !== 'SERVING') return false;
        const before = await cluster.revision();
        const a = await ask(unique('probe'));
        return a.status === 200 && (await cluster.revision()) > before;
      },
      { timeoutMs, what: 'the replica to admit by committed writes in etcd again', intervalMs: 200 },
    );
    return Date.now() - t0;
  }

  /** 40 Checks on a fresh bucket: exactly the limit admitted, every admission a committed write. */
  async function assertStrict(label: string): Promise<void> {
    await awayFromWindowEnd();
    const rev0 = await cluster.revision();
    const answers = await sequence(label);
    const writes = (await cluster.revision()) - rev0;
    const seen = `${summary(answers)}; etcd revision +${writes}; breaker transitions: ${breakerTransitions()}`;
    note(`${label}: ${seen}`);
    assert.equal(answers.filter((a) => a.status === 200).length, LIMIT, `admitted of ${CALLS}: ${seen}`);
    assert.equal(answers.filter((a) => a.status === 429).length, CALLS - LIMIT, `denied of ${CALLS}: ${seen}`);
    // The local fallback also admits 20 of 40 for a lone replica (its share is limit ÷ 1), so the
    // count alone cannot tell strict from degraded: strict commits one write per admitted request.
    assert.ok(writes >= LIMIT, `only ${writes} etcd writes for ${LIMIT} admissions: some were decided without etcd`);
  }

  it('admits exactly the limit with all three members up', async () => {
    await waitStrictPath(5000);
    await assertStrict('all-up');
  });

  it('stays exact after the leader is killed (two members left)', async () => {
    const leader = await cluster.leader();
    assert.ok(leader !== undefined, 'a leader');
    const t0 = Date.now();
    await cluster.member(leader).kill();
    killed.push(leader);
    await waitFor(() => cluster.hasQuorum(), { timeoutMs: 5000, what: 'a new leader among the two left' });
    const quorumMs = Date.now() - t0;
    const next = await cluster.leader();
    note(`killed leader m${leader + 1}; quorum again after ${quorumMs} ms, new leader ${next === undefined ? 'unknown' : `m${next + 1}`}`);
    const waited = await waitStrictPath(10_000);
    note(`replica back on the strict path ${waited} ms later`);
    await assertStrict('one-down');
  });

  it('keeps answering every Check within 2 s once quorum is lost', async () => {
    // Start from a closed breaker, whatever the previous phase left, to see the transition itself.
    const settled = await waitStrictPath(10_000);
    breakerTransitions();
    const victim = [0, 1, 2].find((i) => !killed.includes(i))!;
    const t0 = Date.now();
    await cluster.member(victim).kill();
    killed.push(victim);
    await waitFor(async () => !(await cluster.hasQuorum()), { timeoutMs: 5000, what: 'quorum to be lost' });
    note(`replica on the strict path ${settled} ms after waiting began; killed m${victim + 1}, quorum gone (checked) after ${Date.now() - t0} ms`);
    await awayFromWindowEnd();
    const answers = await sequence('no-quorum');
    const burstKey = unique('no-quorum-burst');
    const burst = await Promise.all(Array.from({ length: CALLS }, () => ask(burstKey)));
    const etcdHealth = await replica.health.check('middlebox.etcd').catch((e: Error) => e.message);
    note(`no quorum, sequential: ${summary(answers)}`);
    note(`no quorum, first 5 latencies: ${answers.slice(0, 5).map((a) => a.ms).join(', ')} ms`);
    note(`no quorum, ${CALLS} concurrent: ${summary(burst)}`);
    note(`no quorum, replica health "" ${await replica.health.check('')}, "middlebox.etcd" ${etcdHealth}; breaker transitions: ${breakerTransitions()}`);
    for (const a of [...answers, ...burst]) {
      assert.notEqual(a.status, 0, `a Check failed instead of being answered: ${a.reason} (${summary(answers)} / ${summary(burst)})`);
      assert.ok(a.ms < 2000, `a Check took ${a.ms} ms`);
    }
    // Without quorum the local fallback decides: limit ÷ live replicas (here one replica: the whole
    // limit) is admitted and the rest denied with 429, never a 503.
    for (const group of [answers, burst]) {
      assert.equal(group.filter((a) => a.status === 200).length, LIMIT, summary(group));
      assert.equal(group.filter((a) => a.status === 429).length, CALLS - LIMIT, summary(group));
    }
    assert.equal(etcdHealth, 'NOT_SERVING', 'the replica reports itself degraded');
  });

  it('is exact again once the members are restored', async () => {
    const t0 = Date.now();
    // The first one back restores quorum with the survivor, so each restart can wait for health.
    for (const i of killed) await cluster.member(i).restart();
    await cluster.waitAllHealthy(20_000);
    killed.length = 0;
    note(`members restored and healthy after ${Date.now() - t0} ms`);
    const waited = await waitStrictPath(15_000);
    note(`replica back on the strict path ${waited} ms later; breaker transitions: ${breakerTransitions()}`);
    await assertStrict('restored');
  });
});
