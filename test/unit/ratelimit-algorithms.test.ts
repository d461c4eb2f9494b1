import assert from 'node:assert/strict';
import {
  giveBack,
  peek,
  take,
  takeAhead,
  windowIndex,
  type BucketState,
  type LimitParams,
} from '../../src/middlebox/ratelimit/algorithms';
import type { RateLimitAlgorithm } from '../../src/policy/types';

/** mulberry32: a small seeded PRNG, so every run sees the same "random" sequences. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function int(rand: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rand() * (hi - lo + 1));
}

/** Takes one token `times` times at `now`; returns the final state and how many were granted. */
function drain(params: LimitParams, state: BucketState | undefined, times: number, now: number): { state: BucketState | undefined; granted: number } {
  let granted = 0;
  for (let i = 0; i < times; i++) {
    const t = take(params, state, 1, now);
    state = t.state;
    granted += t.granted;
  }
  return { state, granted };
}

/** Asserts that retryAfterMs (> 0) points at the first moment a token is available (±1ms of ceil). */
function assertRetryPoints(params: LimitParams, state: BucketState, now: number, retryAfterMs: number, what: string, slackMs = 0): void {
  assert.ok(retryAfterMs > 0, `${what}: retryAfterMs ${retryAfterMs} should be > 0`);
  assert.equal(take(params, state, 1, now + retryAfterMs + slackMs).granted, 1, `${what}: a token at now+retryAfterMs (${now}+${retryAfterMs}+${slackMs})`);
  if (retryAfterMs >= 2) {
    assert.equal(take(params, state, 1, now + retryAfterMs - 2).granted, 0, `${what}: no token at now+retryAfterMs-2 (${now}+${retryAfterMs}-2)`);
  }
}

describe('ratelimit algorithms', () => {
  describe('windowIndex', () => {
    it('aligns windows to the epoch', () => {
      assert.equal(windowIndex(1000, 0), 0);
      assert.equal(windowIndex(1000, 999), 0);
      assert.equal(windowIndex(1000, 1000), 1);
      assert.equal(windowIndex(60_000, 1_700_000_059_999), Math.floor(1_700_000_059_999 / 60_000));
      assert.equal(windowIndex(60_000, 1_700_000_040_000), 28_333_334);
    });
  });

  describe('fixed-window', () => {
    const P: LimitParams = { algorithm: 'fixed-window', limit: 10, perMs: 1000 };

    it('admits exactly limit per window and resets at the epoch-aligned boundary', () => {
      const start = 5_000_250;
      let { state, granted } = drain(P, undefined, 10, start);
      assert.equal(granted, 10);
      assert.deepEqual(state, { w: 5000, c: 10 });
      assert.equal(take(P, state, 1, start).granted, 0, '11th in the same window');
      assert.equal(take(P, state, 1, 5_000_999).granted, 0, 'last ms of the window');
      const next = take(P, state, 1, 5_001_000);
      assert.equal(next.granted, 1, 'first ms of the next window');
      assert.deepEqual(next.state, { w: 5001, c: 1 });
      ({ granted } = drain(P, next.state, 20, 5_001_500));
      assert.equal(granted, 9, 'the next window admits limit in total');
    });

    it('starts a fresh window at the boundary even when the first request came 1ms before it', () => {
      const { state, granted } = drain(P, undefined, 10, 999);
      assert.equal(granted, 10);
      assert.equal(take(P, state, 1, 999).granted, 0);
      assert.equal(drain(P, state, 10, 1000).granted, 10);
    });

    it('does not consume on a denial', () => {
      const { state } = drain(P, undefined, 10, 100);
      const denied = take(P, state, 1, 200);
      assert.equal(denied.granted, 0);
      assert.deepEqual(denied.state, { w: 0, c: 10 });
    });

    it('grants n > 1 partially', () => {
      const first = take(P, undefined, 4, 61_500);
      assert.equal(first.granted, 4);
      assert.equal(first.remaining, 6);
      const second = take(P, first.state, 7, 61_600);
      assert.equal(second.granted, 6);
      assert.equal(second.remaining, 0);
      assert.deepEqual(second.state, { w: 61, c: 10 });
      assert.equal(second.retryAfterMs, 400);
      assert.equal(take(P, second.state, 3, 61_700).granted, 0);
    });

    it('reports remaining, resetMs and retryAfterMs', () => {
      const params: LimitParams = { algorithm: 'fixed-window', limit: 3, perMs: 60_000 };
      const a = take(params, undefined, 1, 61_500);
      assert.deepEqual(
        { granted: a.granted, remaining: a.remaining, resetMs: a.resetMs, retryAfterMs: a.retryAfterMs },
        { granted: 1, remaining: 2, resetMs: 58_500, retryAfterMs: 0 },
      );
      const b = take(params, a.state, 1, 62_000);
      assert.deepEqual([b.remaining, b.resetMs, b.retryAfterMs], [1, 58_000, 0]);
      const c = take(params, b.state, 1, 70_000);
      assert.deepEqual([c.granted, c.remaining, c.resetMs, c.retryAfterMs], [1, 0, 50_000, 50_000], 'last token: retry at the window end');
      const d = take(params, c.state, 1, 119_999);
      assert.deepEqual([d.granted, d.remaining, d.resetMs, d.retryAfterMs], [0, 0, 1, 1]);
    });

    it('peek reports without consuming', () => {
      const { state } = drain(P, undefined, 3, 100);
      const p1 = peek(P, state, 200);
      assert.equal(p1.granted, 0);
      assert.equal(p1.remaining, 7);
      assert.deepEqual(p1.state, state);
      assert.equal(peek(P, p1.state, 300).remaining, 7);
    });

    it('retryAfterMs points at the next token', () => {
      for (const [limit, perMs, now] of [[10, 1000, 1234], [1, 500, 0], [5, 60_000, 1_700_000_012_345]] as const) {
        const params: LimitParams = { algorithm: 'fixed-window', limit, perMs };
        const { state } = drain(params, undefined, limit, now);
        const denied = take(params, state!, 1, now);
        assert.equal(denied.granted, 0);
        assertRetryPoints(params, state!, now, denied.retryAfterMs, `fixed ${limit}/${perMs}`);
      }
    });

    it('admits floor(limit) of a fractional limit per window, never more than ceil(limit)', () => {
      for (const limit of [10 / 3, 30 / 7, 1.5, 1 / 3 + 2 / 3, 0.1 + 0.2 + 2.7]) {
        const params: LimitParams = { algorithm: 'fixed-window', limit, perMs: 1000 };
        let state: BucketState | undefined;
        for (let w = 0; w < 5; w++) {
          const r = drain(params, state, 10, w * 1000 + 17);
          state = r.state;
          assert.ok(r.granted <= Math.ceil(limit - 1e-9), `limit ${limit}: ${r.granted} in window ${w}`);
          assert.equal(r.granted, Math.floor(limit + 1e-9), `limit ${limit}: floor`);
        }
      }
    });

    it('giveBack returns a token in the same window and is a no-op for an ended window', () => {
      const { state } = drain(P, undefined, 10, 1100);
      const returned = giveBack(P, state!, 1, 1900);
      assert.deepEqual(returned, { w: 1, c: 9 });
      assert.equal(take(P, returned, 1, 1950).granted, 1);
      assert.equal(take(P, take(P, returned, 1, 1950).state, 1, 1950).granted, 0);

      const late = giveBack(P, state!, 1, 2000);
      assert.deepEqual(late, state, 'the window ended: nothing to give back');
      assert.equal(drain(P, late, 20, 2000).granted, 10, 'the next window still holds exactly limit');

      assert.deepEqual(giveBack(P, { w: 1, c: 0 }, 1, 1500), { w: 1, c: 0 }, 'never below zero');
    });
  });

  describe('sliding-window', () => {
    const P: LimitParams = { algorithm: 'sliding-window', limit: 10, perMs: 1000 };

    it('admits limit in a first window with no history', () => {
      const { state, granted } = drain(P, undefined, 15, 3_400);
      assert.equal(granted, 10);
      assert.deepEqual(state, { w: 3, c: 10, p: 0 });
    });

    it('weights the previous window by its overlap', () => {
      const full: BucketState = { w: 0, c: 10, p: 0 };
      const at25 = take(P, full, 5, 1250);
      assert.equal(at25.granted, 2, 'floor(10 - 10*0.75)');
      assert.equal(at25.remaining, 0);
      assert.deepEqual(at25.state, { w: 1, c: 2, p: 10 });
      assert.equal(peek(P, full, 1250).remaining, 2);
      assert.equal(peek(P, full, 1500).remaining, 5);
      assert.equal(peek(P, full, 1999).remaining, 9);
      assert.equal(peek(P, full, 1000).remaining, 0);
      // the previous count is remembered as the window goes on
      assert.equal(take(P, at25.state, 10, 1500).granted, 3, '10 - 5 - 2');
      const half: BucketState = { w: 0, c: 4, p: 0 };
      assert.equal(peek(P, half, 1500).remaining, 8, 'floor(10 - 4*0.5)');
    });

    it('starts clean two windows later', () => {
      const full: BucketState = { w: 0, c: 10, p: 7 };
      const t = take(P, full, 20, 2000);
      assert.equal(t.granted, 10);
      assert.deepEqual(t.state, { w: 2, c: 10, p: 0 });
    });

    it('never admits more than limit within one fixed window', () => {
      const rand = prng(7);
      let state: BucketState | undefined;
      const perWindow = new Map<number, number>();
      for (let now = 0; now < 50_000; now += int(rand, 0, 40)) {
        const t = take(P, state, int(rand, 1, 3), now);
        state = t.state;
        perWindow.set(windowIndex(P.perMs, now), (perWindow.get(windowIndex(P.perMs, now)) ?? 0) + t.granted);
      }
      for (const [w, n] of perWindow) assert.ok(n <= 10, `window ${w}: ${n}`);
    });

    it('reports resetMs as the window end', () => {
      const t = take(P, undefined, 1, 12_345);
      assert.equal(t.resetMs, 655);
      assert.equal(t.retryAfterMs, 0);
      assert.equal(t.remaining, 9);
    });

    it('retryAfterMs points at when the weighted previous window has decayed enough', () => {
      const cases: Array<[BucketState, number]> = [
        [{ w: 1, c: 2, p: 10 }, 1250], // x = 1 - 7/10 → 1300
        [{ w: 1, c: 0, p: 10 }, 1000], // x = 1 - 9/10 → 1100
        [{ w: 1, c: 3, p: 9 }, 1200], // x = 1 - 6/9 → 1333.3.. → 1334
        [{ w: 1, c: 5, p: 6 }, 1200], // x = 1 - 4/6 → 1333.3..
      ];
      for (const [state, now] of cases) {
        const t = take(P, state, 1, now);
        assert.equal(t.granted, 0, JSON.stringify(state));
        assertRetryPoints(P, t.state, now, t.retryAfterMs, `sliding ${JSON.stringify(state)} at ${now}`);
      }
      assert.equal(take(P, { w: 1, c: 2, p: 10 }, 1, 1250).retryAfterMs, 50);
      assert.equal(take(P, { w: 1, c: 0, p: 10 }, 1, 1000).retryAfterMs, 100);
    });

    it('retryAfterMs at the window end works when the current window leaves room for the next', () => {
      // curr = limit - 1 with a previous window: the next window starts with exactly one token.
      const t = take(P, { w: 1, c: 9, p: 3 }, 1, 1950);
      assert.equal(t.granted, 0);
      assert.equal(t.retryAfterMs, 50);
      assertRetryPoints(P, t.state, 1950, t.retryAfterMs, 'curr = limit - 1');
    });

    // Regression: at the window end a full window becomes the previous window at full weight, so
    // the first token comes later than the boundary (limit 10, 10 taken at t=100 → t=1100).
    it('retryAfterMs of a full window points past the boundary to the first real token', () => {
      const { state } = drain(P, undefined, 10, 100);
      const t = take(P, state, 1, 500);
      assert.equal(t.granted, 0);
      assertRetryPoints(P, t.state, 500, t.retryAfterMs, 'full first window');
      assert.equal(t.retryAfterMs, 600);
    });

    it('admits at most ceil(limit) per window for a fractional limit', () => {
      for (const limit of [10 / 3, 30 / 7, 1.5, 2.5]) {
        const params: LimitParams = { algorithm: 'sliding-window', limit, perMs: 1000 };
        let state: BucketState | undefined;
        const perWindow = new Map<number, number>();
        for (let now = 0; now < 20_000; now += 37) {
          const t = take(params, state, 1, now);
          state = t.state;
          const w = windowIndex(1000, now);
          perWindow.set(w, (perWindow.get(w) ?? 0) + t.granted);
        }
        for (const [w, n] of perWindow) assert.ok(n <= Math.ceil(limit), `limit ${limit}: ${n} in window ${w}`);
        assert.ok([...perWindow.values()].some((n) => n > 0), `limit ${limit}: admits something`);
      }
    });

    it('giveBack returns a token in the same window and is a no-op for an ended window', () => {
      const state: BucketState = { w: 1, c: 2, p: 10 };
      assert.deepEqual(giveBack(P, state, 1, 1250), { w: 1, c: 1, p: 10 });
      assert.equal(take(P, giveBack(P, state, 1, 1250), 1, 1250).granted, 1);
      assert.deepEqual(giveBack(P, state, 1, 2000), state);
    });
  });

  describe('takeAhead (windows): tokens of the next window, taken before it begins', () => {
    const F: LimitParams = { algorithm: 'fixed-window', limit: 10, perMs: 1000 };
    const S: LimitParams = { algorithm: 'sliding-window', limit: 10, perMs: 1000 };

    it('fixed: counted in the next window only; this window keeps its whole budget', () => {
      const six = drain(F, undefined, 6, 1500).state;
      const t = takeAhead(F, six, 8, 1950);
      assert.equal(t.granted, 8);
      assert.deepEqual(t.state, { w: 1, c: 6, a: 8 });
      assert.equal(peek(F, t.state, 1960).remaining, 4, 'this window: 10 - 6, the block ahead aside');
      const rest = drain(F, t.state, 10, 1970);
      assert.equal(rest.granted, 4, 'never more than the limit in this window');
      assert.equal(drain(F, rest.state, 10, 2000).granted, 2, 'the next window starts from the 8 taken ahead');
      assert.equal(takeAhead(F, t.state, 5, 1990).granted, 2, 'ahead blocks of one window add up to its limit at most');
    });

    it('fixed: a window nobody wrote in counts what was taken ahead for it', () => {
      const t = takeAhead(F, { w: 1, c: 3 }, 7, 1900);
      assert.equal(peek(F, t.state, 2500).remaining, 3);
      assert.equal(peek(F, t.state, 3000).remaining, 10, 'two windows on, nothing counts');
      assert.deepEqual(giveBack(F, t.state, 2, 2100), { w: 1, c: 3, a: 5 }, 'given back in the window it was taken for');
      assert.deepEqual(take(F, t.state, 1, 2100).state, { w: 2, c: 8 });
    });

    it('sliding: this window keeps room for the block ahead, which counts in full when the next one begins', () => {
      const six = drain(S, undefined, 6, 1500).state;
      const t = takeAhead(S, six, 8, 1950);
      assert.equal(t.granted, 4, 'the next window weighs this one\'s 6 in full at its start');
      assert.equal(take(S, t.state, 5, 1960).granted, 0, 'no room left here: 6 + 4 taken ahead');
      assert.deepEqual(take(S, t.state, 1, 2000).state, { w: 2, c: 4, p: 6 });
      assert.equal(peek(S, t.state, 2000).remaining, 0);
      assert.equal(peek(S, t.state, 2500).remaining, 3, 'floor(10 - 6*0.5 - 4)');
      assert.equal(peek(S, t.state, 3000).remaining, 6, 'two windows on, the 4 are the previous window');
    });

    it('sliding: where the block ahead holds the last room, retry-after points into the next window', () => {
      const P60: LimitParams = { algorithm: 'sliding-window', limit: 10, perMs: 60_000 };
      const state: BucketState = { w: 0, c: 3, p: 4, a: 7 };
      const t = take(P60, state, 1, 57_600);
      assert.equal(t.granted, 0, 'min(10 - 4*0.04 - 3, 10 - 3 - 7) = 0');
      assert.ok(Math.abs(t.retryAfterMs - 22_400) <= 1, `a third into the next window, where 10 - 3*(2/3) - 7 = 1 (${t.retryAfterMs} ms)`);
      assertRetryPoints(P60, state, 57_600, t.retryAfterMs, 'block ahead');
    });

    it('a token bucket has no next window', () => {
      assert.throws(() => takeAhead({ algorithm: 'token-bucket', limit: 10, perMs: 1000 }, undefined, 1, 0), /no next window/);
    });
  });

  describe('token-bucket', () => {
    const P: LimitParams = { algorithm: 'token-bucket', limit: 10, perMs: 1000 };

    it('starts full at burst (limit by default)', () => {
      assert.equal(drain(P, undefined, 30, 5_000).granted, 10);
      assert.equal(drain({ ...P, burst: 25 }, undefined, 30, 5_000).granted, 25);
      const first = take({ ...P, burst: 25 }, undefined, 1, 5_000);
      assert.equal(first.remaining, 24);
      assert.equal(first.retryAfterMs, 0);
      assert.equal(first.resetMs, 100, 'one token short of full');
    });

    it('refills at limit/perMs and never above burst', () => {
      const { state } = drain(P, undefined, 10, 0);
      assert.equal(take(P, state, 1, 0).granted, 0);
      assert.equal(take(P, state, 1, 99).granted, 0);
      assert.equal(take(P, state, 1, 100).granted, 1);
      assert.equal(take(P, state, 10, 450).granted, 4);
      assert.equal(take(P, state, 20, 1000).granted, 10);
      assert.equal(take(P, state, 20, 1_000_000_000).granted, 10, 'capped at burst');
      const bursty = { ...P, burst: 3 };
      assert.equal(take(bursty, drain(bursty, undefined, 3, 0).state, 20, 60_000).granted, 3);
    });

    it('keeps the unspent fraction', () => {
      const { state } = drain(P, undefined, 10, 0);
      const a = take(P, state, 1, 150); // 1.5 tokens → 1 granted, 0.5 left
      assert.equal(a.granted, 1);
      assert.equal(a.remaining, 0);
      assert.equal(a.retryAfterMs, 50);
      assert.equal(take(P, a.state, 1, 199).granted, 0);
      assert.equal(take(P, a.state, 1, 200).granted, 1);
    });

    it('reports remaining, resetMs and retryAfterMs', () => {
      const t = take(P, undefined, 4, 0);
      assert.deepEqual([t.granted, t.remaining, t.resetMs, t.retryAfterMs], [4, 6, 400, 0]);
      const u = take(P, t.state, 10, 0);
      assert.deepEqual([u.granted, u.remaining, u.resetMs, u.retryAfterMs], [6, 0, 1000, 100]);
      const v = take(P, u.state, 1, 30);
      assert.deepEqual([v.granted, v.remaining, v.resetMs, v.retryAfterMs], [0, 0, 970, 70]);
    });

    it('retryAfterMs points at the next token', () => {
      for (const params of [P, { ...P, limit: 3, perMs: 1000, burst: 5 }, { ...P, limit: 7, perMs: 60_000 }, { ...P, limit: 10 / 3 }]) {
        const { state } = drain(params, undefined, 10, 12_345);
        const denied = take(params, state, 1, 12_345);
        assert.equal(denied.granted, 0);
        assertRetryPoints(params, state!, 12_345, denied.retryAfterMs, `bucket ${JSON.stringify(params)}`);
      }
    });

    // Regression: the stored token count must be the one retry-after was computed from.
    it('retryAfterMs is exact after a denial (rounding of the stored tokens)', () => {
      const params: LimitParams = { algorithm: 'token-bucket', limit: 1, perMs: 60_000 };
      const start = take(params, undefined, 1, 0).state;
      const denied = take(params, start, 1, 2);
      assert.equal(denied.granted, 0);
      assertRetryPoints(params, denied.state, 2, denied.retryAfterMs, 'limit 1/min denied at t=2');
    });

    // Regression: rounding the stored tokens made the refill rate depend on how often a bucket is asked.
    it('the refill rate does not depend on how often the bucket is asked', () => {
      const perMinute: LimitParams = { algorithm: 'token-bucket', limit: 1, perMs: 60_000 };
      for (const step of [1, 2, 3, 7]) {
        let state = take(perMinute, undefined, 1, 0).state;
        let t = 0;
        for (;;) {
          t += step;
          const r = take(perMinute, state, 1, t);
          state = r.state;
          if (r.granted) break;
        }
        assert.ok(t >= 60_000 && t < 60_000 + step, `asked every ${step}ms: next token at ${t}`);
      }
      const perHour: LimitParams = { algorithm: 'token-bucket', limit: 1, perMs: 3_600_000 };
      let state = take(perHour, undefined, 1, 0).state;
      let granted = 0;
      for (let t = 1; t <= 3_600_000; t++) {
        const r = take(perHour, state, 1, t);
        state = r.state;
        granted += r.granted;
      }
      assert.equal(granted, 1, 'one token refilled in an hour');
    });

    it('admits floor of a fractional burst at start and refills fractionally', () => {
      const params: LimitParams = { algorithm: 'token-bucket', limit: 10 / 3, perMs: 1000 };
      const { state, granted } = drain(params, undefined, 10, 0);
      assert.equal(granted, 3);
      // over [0, 1000] at most burst + limit = 6.67 → 6
      assert.equal(granted + take(params, state, 10, 1000).granted, 6);
    });

    it('giveBack returns a token, capped at burst', () => {
      const { state } = drain(P, undefined, 10, 0);
      const back = giveBack(P, state!, 1, 0);
      assert.equal(take(P, back, 5, 0).granted, 1);
      const full = take(P, undefined, 0, 0).state;
      assert.deepEqual(giveBack(P, full, 3, 0), { k: 10, t: 0 });
    });

    // Regression: a replica whose clock lags must not rewind the shared refill clock.
    it('an out-of-order now does not rewind the refill clock', () => {
      const { state } = drain(P, undefined, 10, 1000);
      const stale = take(P, state, 1, 0);
      assert.equal(stale.granted, 0);
      assert.ok(take(P, stale.state, 10, 1001).granted <= 1);
    });
  });

  describe('properties (seeded random sequences)', () => {
    const ALGORITHMS: RateLimitAlgorithm[] = ['fixed-window', 'sliding-window', 'token-bucket'];

    function randomParams(rand: () => number, algorithm: RateLimitAlgorithm): LimitParams {
      // Shares of at least one token: a share below one never admits (see ratelimit-local.test.ts).
      const shares = int(rand, 1, 4);
      const limit = int(rand, shares, 30) / shares;
      const perMs = [100, 250, 1000, 1500, 60_000][int(rand, 0, 4)]!;
      const params: LimitParams = { algorithm, limit, perMs };
      if (algorithm === 'token-bucket' && rand() < 0.5) params.burst = int(rand, shares, 50) / shares;
      return params;
    }

    function randomTimes(rand: () => number, perMs: number, count: number): number[] {
      let now = int(rand, 0, 10) * perMs + int(rand, 0, perMs - 1) + 1_700_000_000_000 * (rand() < 0.5 ? 1 : 0);
      const times: number[] = [];
      for (let i = 0; i < count; i++) {
        times.push(now);
        const step = rand();
        now += step < 0.4 ? 0 : step < 0.9 ? int(rand, 1, Math.ceil(perMs / 10)) : int(rand, 1, 2 * perMs);
      }
      return times;
    }

    it('fixed-window: granted per window ≤ limit, and exactly what a simple counter grants', () => {
      for (let seed = 1; seed <= 1500; seed++) {
        const rand = prng(seed);
        const params = randomParams(rand, 'fixed-window');
        const cap = Math.floor(params.limit + 1e-9);
        let state: BucketState | undefined;
        const used = new Map<number, number>();
        for (const now of randomTimes(rand, params.perMs, 60)) {
          const n = int(rand, 1, 4);
          const w = windowIndex(params.perMs, now);
          const before = used.get(w) ?? 0;
          const t = take(params, state, n, now);
          state = t.state;
          assert.equal(t.granted, Math.min(n, cap - before), `seed ${seed}`);
          used.set(w, before + t.granted);
          assert.ok(before + t.granted <= params.limit + 1e-9, `seed ${seed}: window ${w} over limit`);
          assert.equal(t.remaining, cap - before - t.granted, `seed ${seed}: remaining`);
        }
      }
    });

    it('token-bucket: granted over [t0, t1] ≤ burst + limit*(t1-t0)/perMs', () => {
      for (let seed = 1; seed <= 1500; seed++) {
        const rand = prng(seed);
        const params = randomParams(rand, 'token-bucket');
        const burst = params.burst ?? params.limit;
        const times = randomTimes(rand, params.perMs, 50);
        const granted: number[] = [];
        let state: BucketState | undefined;
        for (const now of times) {
          const t = take(params, state, int(rand, 1, 3), now);
          assert.ok(t.remaining >= 0 && t.granted >= 0, `seed ${seed}`);
          state = t.state;
          granted.push(t.granted);
        }
        for (let i = 0; i < times.length; i++) {
          let sum = 0;
          for (let j = i; j < times.length; j++) {
            sum += granted[j]!;
            const bound = burst + (params.limit * (times[j]! - times[i]!)) / params.perMs + 1e-9;
            assert.ok(sum <= bound, `seed ${seed}: ${sum} granted over [${times[i]}, ${times[j]}] > ${bound} (${JSON.stringify(params)})`);
          }
        }
      }
    });

    it('sliding-window: granted per fixed window ≤ limit', () => {
      for (let seed = 1; seed <= 1000; seed++) {
        const rand = prng(seed);
        const params = randomParams(rand, 'sliding-window');
        let state: BucketState | undefined;
        const used = new Map<number, number>();
        for (const now of randomTimes(rand, params.perMs, 60)) {
          const t = take(params, state, int(rand, 1, 4), now);
          state = t.state;
          const w = windowIndex(params.perMs, now);
          used.set(w, (used.get(w) ?? 0) + t.granted);
          assert.ok(used.get(w)! <= params.limit + 1e-9, `seed ${seed}: window ${w} over limit`);
        }
      }
    });

    it('retryAfterMs is 0 with a token left and otherwise points at the next token (fixed, bucket)', () => {
      let checked = 0;
      for (let seed = 1; seed <= 1500; seed++) {
        const rand = prng(seed);
        const algorithm = seed % 2 === 0 ? 'fixed-window' : 'token-bucket';
        const params = randomParams(rand, algorithm);
        let state: BucketState | undefined;
        for (const now of randomTimes(rand, params.perMs, 30)) {
          const t = take(params, state, int(rand, 1, 3), now);
          state = t.state;
          if (t.remaining > 0) {
            assert.equal(t.retryAfterMs, 0, `seed ${seed}`);
          } else {
            assertRetryPoints(params, state, now, t.retryAfterMs, `seed ${seed} ${JSON.stringify(params)}`, 0);
            checked++;
          }
        }
      }
      assert.ok(checked > 1000, `enough denials exercised (${checked})`);
    });

    it('sliding-window retryAfterMs inside the current window points at the next token', () => {
      let checked = 0;
      for (let seed = 1; seed <= 1500; seed++) {
        const rand = prng(seed);
        const params = randomParams(rand, 'sliding-window');
        let state: BucketState | undefined;
        for (const now of randomTimes(rand, params.perMs, 30)) {
          const t = take(params, state, int(rand, 1, 3), now);
          state = t.state;
          if (t.remaining > 0) {
            assert.equal(t.retryAfterMs, 0, `seed ${seed}`);
          } else if (t.retryAfterMs < t.resetMs) {
            assertRetryPoints(params, state, now, t.retryAfterMs, `seed ${seed} ${JSON.stringify(params)}`);
            checked++;
          }
        }
      }
      assert.ok(checked > 200, `enough denials exercised (${checked})`);
    });

    // Regression: see 'retryAfterMs of a full window points past the boundary' above.
    it('sliding-window retryAfterMs at the window end points at the next token', () => {
      for (let seed = 1; seed <= 1500; seed++) {
        const rand = prng(seed);
        const params = randomParams(rand, 'sliding-window');
        let state: BucketState | undefined;
        for (const now of randomTimes(rand, params.perMs, 30)) {
          const t = take(params, state, int(rand, 1, 3), now);
          state = t.state;
          if (t.remaining === 0 && t.retryAfterMs >= t.resetMs) {
            assertRetryPoints(params, state, now, t.retryAfterMs, `seed ${seed} ${JSON.stringify(params)}`);
          }
        }
      }
    });

    it('every algorithm: a denial leaves the state as it was, and peek never consumes', () => {
      for (let seed = 1; seed <= 600; seed++) {
        const rand = prng(seed);
        const params = randomParams(rand, ALGORITHMS[seed % 3]!);
        let state: BucketState | undefined;
        for (const now of randomTimes(rand, params.perMs, 30)) {
          const p = peek(params, state, now);
          const n = int(rand, 1, 3);
          const t = take(params, state, n, now);
          assert.equal(p.granted, 0);
          assert.equal(t.granted, Math.min(n, p.remaining), `seed ${seed}: peek promised ${p.remaining}, take(${n}) gave ${t.granted}`);
          if (t.granted === 0 && params.algorithm !== 'token-bucket') {
            assert.deepEqual(t.state, p.state, `seed ${seed}: denial changed the window state`);
          }
          state = t.state;
        }
      }
    });
  });
});
