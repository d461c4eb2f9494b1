import assert from 'node:assert/strict';
import { silentLogger } from '../../src/observability/logger';
import { NotAnEtcdFailure } from '../../src/state/etcd/client';
import { EtcdBreaker, type BreakerSettings, type BreakerState } from '../../src/state/resilient/breaker';
import { BOUND_MS, deferred, TEST_BREAKER, type Deferred } from '../harness/breaker';

// Small settings so that a test sees every transition in well under a second. Timing assertions
// are generous (the machine may be loaded) but bounded.
const SETTINGS = TEST_BREAKER;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, withinMs = 3000): Promise<void> {
  const until = Date.now() + withinMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** An op counting its calls. */
function counted<T>(body: () => Promise<T>): { op: () => Promise<T>; calls: () => number } {
  let n = 0;
  return {
    op: () => {
      n += 1;
      return body();
    },
    calls: () => n,
  };
}

const ok = () => Promise.resolve('ok');
const etcdDown = () => Promise.reject(new Error('etcd unavailable'));
const never = () => new Promise<never>(() => undefined);

/** Runs op through the breaker, returning how it settled and how long it took. */
async function settle<T>(b: EtcdBreaker, op: () => Promise<T>): Promise<{ ok: boolean; value?: T; error?: Error & { code?: string }; ms: number }> {
  const start = Date.now();
  try {
    const value = await b.run(op);
    return { ok: true, value, ms: Date.now() - start };
  } catch (e) {
    return { ok: false, error: e as Error & { code?: string }, ms: Date.now() - start };
  }
}

describe('EtcdBreaker', () => {
  let breakers: EtcdBreaker[] = [];
  let events: BreakerState[] = [];

  function make(probe?: () => Promise<unknown>, settings: BreakerSettings = SETTINGS): EtcdBreaker {
    const b = new EtcdBreaker(silentLogger(), settings, probe);
    b.onTransition((s) => events.push(s));
    breakers.push(b);
    return b;
  }

  async function openIt(b: EtcdBreaker): Promise<void> {
    for (let i = 0; i < SETTINGS.consecutiveFailures; i++) await settle(b, etcdDown);
    assert.equal(b.state, 'open');
  }

  beforeEach(() => {
    breakers = [];
    events = [];
  });

  afterEach(() => {
    for (const b of breakers) b.shutdown();
  });

  it('stays closed while operations succeed, and passes their results through', async () => {
    const b = make();
    for (let i = 0; i < 20; i++) {
      const r = await settle(b, () => Promise.resolve(i));
      assert.deepEqual([r.ok, r.value], [true, i]);
    }
    assert.equal(b.state, 'closed');
    assert.equal(b.isOpen, false);
    assert.equal(b.isDegraded, false);
    assert.deepEqual(events, []);
    assert.deepEqual({ ...b.stats }, { state: 'closed', opened: 0, halfOpened: 0, closed: 0, fallbacks: 0 });
  });

  it('passes the failure of an operation through to the caller', async () => {
    const b = make();
    const r = await settle(b, etcdDown);
    assert.equal(r.ok, false);
    assert.equal(r.error?.message, 'etcd unavailable');
    assert.equal(b.state, 'closed');
  });

  it('opens after 3 failures in a row even after many successes in the window', async () => {
    const b = make();
    for (let i = 0; i < 30; i++) await settle(b, ok);
    // 2 failures among 32 operations: under both the share and the streak
    await settle(b, etcdDown);
    await settle(b, etcdDown);
    assert.equal(b.state, 'closed');
    assert.deepEqual(events, []);
    const before = Date.now();
    await settle(b, etcdDown);
    // 3 of 33 failed (9 %), far below 50 %: only the streak can have opened it
    assert.equal(b.state, 'open');
    assert.equal(b.isOpen, true);
    assert.equal(b.isDegraded, true);
    assert.deepEqual(events, ['open']);
    assert.equal(b.stats.opened, 1);
    assert.ok(b.stats.openedAt !== undefined && b.stats.openedAt >= before - 5 && b.stats.openedAt <= Date.now());
  });

  it('a success breaks the streak', async () => {
    const b = make();
    for (let i = 0; i < 30; i++) await settle(b, ok);
    for (let round = 0; round < 3; round++) {
      await settle(b, etcdDown);
      await settle(b, etcdDown);
      await settle(b, ok);
    }
    // 6 failures of 39, never 3 in a row
    assert.equal(b.state, 'closed');
    assert.deepEqual(events, []);
  });

  it('opens when the failed share passes the threshold, without 3 in a row', async () => {
    const b = make();
    await settle(b, etcdDown);
    await settle(b, ok);
    assert.equal(b.state, 'closed', '1 of 2: below the volume threshold');
    await settle(b, etcdDown);
    // 2 of 3 failed (67 % > 50 %), at most one in a row
    assert.equal(b.state, 'open');
    assert.deepEqual(events, ['open']);
  });

  it('does not open on the share below the volume threshold', async () => {
    const b = make();
    await settle(b, etcdDown);
    await settle(b, etcdDown);
    // 2 of 2 failed, but only 2 operations were seen (threshold 3), and 2 < 3 in a row
    assert.equal(b.state, 'closed');
  });

  it('opens after 3 operations that never answer, each rejected within about the timeout', async () => {
    const b = make();
    for (let i = 0; i < 3; i++) {
      assert.equal(b.state, 'closed');
      const r = await settle(b, never);
      assert.equal(r.ok, false);
      assert.equal(r.error?.code, 'ETIMEDOUT');
      assert.ok(r.ms >= SETTINGS.timeoutMs - 2, `rejected after ${r.ms} ms, before the timeout`);
      assert.ok(r.ms < BOUND_MS, `rejected after ${r.ms} ms, want about ${SETTINGS.timeoutMs}`);
    }
    assert.equal(b.state, 'open');
    assert.deepEqual(events, ['open']);
  });

  it('concurrent operations that hang time out together and open it', async () => {
    const b = make();
    const start = Date.now();
    const results = await Promise.all([settle(b, never), settle(b, never), settle(b, never)]);
    for (const r of results) {
      assert.equal(r.error?.code, 'ETIMEDOUT');
      assert.ok(r.ms < BOUND_MS, `rejected after ${r.ms} ms`);
    }
    assert.ok(Date.now() - start < BOUND_MS);
    assert.equal(b.state, 'open');
    assert.equal(b.stats.opened, 1);
  });

  it('an operation that answers after its timeout still counts as failed', async () => {
    const b = make();
    for (let i = 0; i < 3; i++) {
      const r = await settle(b, () => sleep(3 * SETTINGS.timeoutMs).then(() => 'late'));
      assert.equal(r.error?.code, 'ETIMEDOUT');
    }
    assert.equal(b.state, 'open');
  });

  it('while open, rejects at once without calling the operation', async () => {
    const b = make();
    await openIt(b);
    const op = counted(ok);
    for (let i = 0; i < 5; i++) {
      const r = await settle(b, op.op);
      assert.equal(r.ok, false);
      assert.equal(r.error?.code, 'EOPENBREAKER');
      assert.ok(r.ms < BOUND_MS, `rejected after ${r.ms} ms`);
    }
    assert.equal(op.calls(), 0);
    assert.equal(b.state, 'open');
  });

  it('goes half-open after the reset timeout, probes once, and a successful probe closes it', async () => {
    const gate = deferred<string>();
    const probe = counted(() => gate.promise);
    const b = make(probe.op);
    await openIt(b);
    const openedAt = Date.now();
    assert.equal(probe.calls(), 0, 'no probe while open');

    await waitFor('half-open', () => b.state === 'half-open');
    const waited = Date.now() - openedAt;
    assert.ok(waited >= SETTINGS.resetTimeoutMs - 10, `half-open after ${waited} ms, before the reset timeout`);
    assert.ok(waited < 20 * SETTINGS.resetTimeoutMs, `half-open only after ${waited} ms`);
    assert.equal(probe.calls(), 1);
    assert.equal(b.isOpen, false);
    assert.equal(b.isDegraded, true, 'half-open and not yet proven');

    // The probe holds the one trial: other operations are turned away without running.
    const other = counted(ok);
    const r = await settle(b, other.op);
    assert.equal(r.error?.code, 'EOPENBREAKER');
    assert.equal(other.calls(), 0);
    assert.equal(b.state, 'half-open');

    gate.resolve('ok');
    await waitFor('closed', () => b.state === 'closed');
    assert.deepEqual(events, ['open', 'half-open', 'closed']);
    assert.deepEqual(
      { opened: b.stats.opened, halfOpened: b.stats.halfOpened, closed: b.stats.closed },
      { opened: 1, halfOpened: 1, closed: 1 },
    );
    assert.equal(b.isDegraded, false);
    assert.equal(probe.calls(), 1, 'the probe ran once');

    // Closed again: operations run.
    const after = counted(ok);
    assert.equal((await settle(b, after.op)).value, 'ok');
    assert.equal(after.calls(), 1);
  });

  it('a failing probe reopens it, and the next probe after another reset timeout can close it', async () => {
    let probeFails = true;
    const probe = counted(() => (probeFails ? etcdDown() : ok()));
    const b = make(probe.op);
    await openIt(b);
    await waitFor('the first probe', () => probe.calls() === 1);
    await waitFor('reopened', () => b.state === 'open' && events.length === 3);
    assert.deepEqual(events, ['open', 'half-open', 'open']);
    assert.equal(b.stats.opened, 2);
    assert.equal(b.stats.halfOpened, 1);
    assert.equal(b.stats.closed, 0);
    assert.equal(b.isDegraded, true);

    probeFails = false;
    await waitFor('closed', () => b.state === 'closed');
    assert.equal(probe.calls(), 2);
    assert.deepEqual(events, ['open', 'half-open', 'open', 'half-open', 'closed']);
    assert.deepEqual(
      { opened: b.stats.opened, halfOpened: b.stats.halfOpened, closed: b.stats.closed },
      { opened: 2, halfOpened: 2, closed: 1 },
    );
  });

  it('a probe that hangs times out and reopens it', async () => {
    const probe = counted(never);
    const b = make(probe.op);
    await openIt(b);
    await waitFor('half-open', () => b.state === 'half-open');
    const at = Date.now();
    await waitFor('reopened', () => b.state === 'open');
    assert.ok(Date.now() - at < BOUND_MS, 'the probe is timed out like any operation');
    assert.deepEqual(events, ['open', 'half-open', 'open']);
  });

  it('without a probe, the first operation after the reset timeout is the trial', async () => {
    const b = make();
    await openIt(b);
    await waitFor('half-open', () => b.state === 'half-open');
    await sleep(2 * SETTINGS.resetTimeoutMs);
    assert.equal(b.state, 'half-open', 'nothing probes by itself');
    const op = counted(ok);
    assert.equal((await settle(b, op.op)).value, 'ok');
    assert.equal(op.calls(), 1);
    assert.equal(b.state, 'closed');
    assert.deepEqual(events, ['open', 'half-open', 'closed']);
  });

  it('a failure right after closing does not reopen it on its own', async () => {
    const b = make();
    await openIt(b);
    await waitFor('half-open', () => b.state === 'half-open');
    await settle(b, ok);
    assert.equal(b.state, 'closed');
    // Several successes, then one failure: neither the streak nor (with the successes) the share.
    for (let i = 0; i < 5; i++) await settle(b, ok);
    await settle(b, etcdDown);
    assert.equal(b.state, 'closed');
  });

  describe('the confirming read after a first failure', () => {
    const CONFIRMING: BreakerSettings = { ...SETTINGS, confirmTimeoutMs: 20 };

    it('opens at once when the read fails too, long before the failures in a row would', async () => {
      const probe = counted(never);
      const b = make(probe.op, CONFIRMING);
      const first = await settle(b, never);
      assert.equal(first.ok, false);
      await waitFor('the breaker to open', () => b.state === 'open', BOUND_MS * 2);
      assert.equal(probe.calls(), 1);
      assert.deepEqual(events, ['open']);
      // The next request gets the fallback at once instead of waiting out another timeout.
      const next = await settle(b, never);
      assert.equal(next.ok, false);
      // Turned away by the open breaker, not timed out (`never` would only ever time out).
      assert.equal(next.error?.code, 'EOPENBREAKER', `rejected in ${next.ms} ms: ${next.error?.message}`);
    });

    it('turns away operations still waiting on etcd when it opens', async () => {
      const b = make(never, { ...CONFIRMING, timeoutMs: 5000 });
      const waiting = [settle(b, never), settle(b, never)];
      b.run(etcdDown).catch(() => undefined);
      const settled = await Promise.all(waiting);
      assert.equal(b.state, 'open');
      for (const w of settled) {
        assert.equal(w.ok, false);
        assert.equal(w.error?.code, 'EOPENBREAKER');
        assert.ok(w.ms < 1000, `turned away after ${w.ms} ms, not at the 5 s timeout`);
      }
    });

    it('stays closed when etcd answers the read: one slow call is not an outage', async () => {
      const probe = counted(ok);
      const b = make(probe.op, CONFIRMING);
      assert.equal((await settle(b, never)).ok, false);
      await sleep(CONFIRMING.confirmTimeoutMs * 3);
      assert.equal(probe.calls(), 1);
      assert.equal(b.state, 'closed');
      assert.deepEqual(events, []);
      assert.equal((await settle(b, ok)).ok, true);
    });

    it('reads once for failures that come together', async () => {
      const gate = deferred<void>();
      const probe = counted(() => gate.promise);
      const b = make(probe.op, { ...CONFIRMING, confirmTimeoutMs: 1000 });
      assert.equal((await settle(b, etcdDown)).ok, false);
      assert.equal(b.state, 'closed');
      // A second failure while the read is out: the count in a row still applies, no second read.
      assert.equal((await settle(b, etcdDown)).ok, false);
      assert.equal(probe.calls(), 1);
      gate.resolve();
      await sleep(5);
      assert.equal(b.state, 'closed');
    });

    it('without a probe, only the counts open it', async () => {
      const b = make(undefined, CONFIRMING);
      assert.equal((await settle(b, etcdDown)).ok, false);
      await sleep(CONFIRMING.confirmTimeoutMs * 3);
      assert.equal(b.state, 'closed');
    });
  });

  it('NotAnEtcdFailure never counts as a failure', async () => {
    const b = make();
    const lostRace = () => Promise.reject(new NotAnEtcdFailure('lost a compare-and-swap'));
    for (let i = 0; i < 20; i++) {
      const r = await settle(b, lostRace);
      assert.equal(r.ok, false);
      assert.ok(r.error instanceof NotAnEtcdFailure, 'passed through to the caller as it is');
    }
    assert.equal(b.state, 'closed');
    assert.deepEqual(events, []);

    // Nor does it make a streak of real failures longer.
    await settle(b, etcdDown);
    await settle(b, etcdDown);
    await settle(b, lostRace);
    assert.equal(b.state, 'closed');
  });

  it('a NotAnEtcdFailure does not open it from half-open (etcd answered)', async () => {
    const probe = counted(() => Promise.reject(new NotAnEtcdFailure('lost a race')));
    const b = make(probe.op);
    await openIt(b);
    await waitFor('closed', () => b.state === 'closed');
    assert.deepEqual(events, ['open', 'half-open', 'closed']);
  });

  it('isDegraded is true when open or half-open, false when closed', async () => {
    const gate = deferred<string>();
    const b = make(() => gate.promise);
    const seen: Array<[BreakerState, boolean, boolean]> = [];
    b.onTransition((s) => seen.push([s, b.isOpen, b.isDegraded]));
    assert.equal(b.isDegraded, false);
    await openIt(b);
    await waitFor('half-open', () => b.state === 'half-open');
    gate.resolve('ok');
    await waitFor('closed', () => b.state === 'closed');
    assert.deepEqual(seen, [
      ['open', true, true],
      ['half-open', false, true],
      ['closed', false, false],
    ]);
  });

  it('counts fallbacks', () => {
    const b = make();
    assert.equal(b.stats.fallbacks, 0);
    b.fellBack();
    b.fellBack();
    b.fellBack();
    assert.equal(b.stats.fallbacks, 3);
    assert.equal(b.state, 'closed', 'counting a fallback changes no state');
  });

  it('tells every transition listener', async () => {
    const b = make();
    const second: BreakerState[] = [];
    b.onTransition((s) => second.push(s));
    await openIt(b);
    assert.deepEqual(events, ['open']);
    assert.deepEqual(second, ['open']);
  });
});
