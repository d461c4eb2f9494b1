// The three rate-limit algorithms as pure state transitions. The same functions run against a
// bucket kept in memory (consistency `local`, and the fallback) and against a bucket stored in etcd
// and updated by compare-and-swap (`strict`, `leased`), so every mode counts the same way.
//
// take(state, n, now) asks for n tokens and grants m ≤ n of them, all or some; denied requests take
// nothing, so they never consume quota.
import type { RateLimitAlgorithm } from '../../policy/types';

export interface LimitParams {
  algorithm: RateLimitAlgorithm;
  /** Requests admitted per window (windows) or refill per `perMs` (token bucket). May be fractional (local shares). */
  limit: number;
  perMs: number;
  /** Token bucket capacity; defaults to limit. */
  burst?: number;
}

/**
 * Stored per bucket. Compact field names: it is written to etcd on every strict decision. `a`
 * (windows): tokens already granted in the window after `w`, taken ahead of it (a leased replica's
 * first block of the next window, see takeAhead); absent when none.
 */
export type BucketState =
  /** fixed-window: window index and tokens granted in it */
  | { w: number; c: number; a?: number }
  /** sliding-window: window index, granted in it, granted in the window before */
  | { w: number; c: number; p: number; a?: number }
  /** token-bucket: tokens left at time t (ms) */
  | { k: number; t: number };

export interface Take {
  state: BucketState;
  granted: number;
  /** Tokens still available after this take (for ratelimit-remaining). */
  remaining: number;
  /** Milliseconds until the quota resets (window end; token bucket: until full). */
  resetMs: number;
  /** Milliseconds until one more token could be granted (for retry-after). 0 when one is available. */
  retryAfterMs: number;
}

export function take(params: LimitParams, state: BucketState | undefined, n: number, now: number): Take {
  switch (params.algorithm) {
    case 'fixed-window':
      return takeFixed(params, state as { w: number; c: number } | undefined, n, now);
    case 'sliding-window':
      return takeSliding(params, state as { w: number; c: number; p: number } | undefined, n, now);
    case 'token-bucket':
      return takeBucket(params, state as { k: number; t: number } | undefined, n, now);
  }
}

/** What a bucket would grant now without taking anything. */
export function peek(params: LimitParams, state: BucketState | undefined, now: number): Take {
  return take(params, state, 0, now);
}

/**
 * How long after its last take a bucket's state still matters: later, it grants as a new bucket
 * would (a fixed window has ended; a sliding window's previous window no longer overlaps; a token
 * bucket has refilled from empty). A bucket charged into debt may take longer.
 */
export function stateLifetimeMs(params: LimitParams): number {
  switch (params.algorithm) {
    case 'fixed-window':
      return params.perMs;
    case 'sliding-window':
      return 2 * params.perMs;
    case 'token-bucket':
      return Math.ceil(((params.burst ?? params.limit) / params.limit) * params.perMs);
  }
}

/** Index of the window `now` falls in; windows are aligned to the epoch so every replica agrees. */
export function windowIndex(perMs: number, now: number): number {
  return Math.floor(now / perMs);
}

/**
 * The window a take counts in: never earlier than the stored one, so that a replica whose clock
 * lags cannot move a shared bucket back to a window that already ended (and restart its count).
 */
function currentWindow(perMs: number, now: number, stored: number | undefined): number {
  const w = windowIndex(perMs, now);
  return stored !== undefined && stored > w ? stored : w;
}

/** The window after the stored one starts from the tokens taken ahead for it. */
function countIn(s: { w: number; c: number; a?: number } | undefined, w: number): number {
  if (!s) return 0;
  if (s.w === w) return s.c;
  return s.w === w - 1 ? (s.a ?? 0) : 0;
}

/** Tokens taken ahead for the window after `w`, kept with a state of window w. */
function aheadOf(s: { w: number; a?: number } | undefined, w: number): { a?: number } {
  return s && s.w === w && s.a ? { a: s.a } : {};
}

function takeFixed(p: LimitParams, s: { w: number; c: number; a?: number } | undefined, n: number, now: number): Take {
  const w = currentWindow(p.perMs, now, s?.w);
  const count = countIn(s, w);
  const available = Math.max(0, Math.floor(p.limit - count + EPSILON));
  const granted = Math.min(n, available);
  const resetMs = (w + 1) * p.perMs - now;
  return {
    state: { w, c: count + granted, ...aheadOf(s, w) },
    granted,
    remaining: available - granted,
    resetMs,
    retryAfterMs: available - granted > 0 ? 0 : resetMs,
  };
}

/**
 * Sliding window, approximated from two fixed windows: the previous window's count weighted by how
 * much of it still overlaps the sliding interval, plus the current count. Exact when traffic in the
 * previous window was even; never more than the limit within any one fixed window.
 */
function takeSliding(p: LimitParams, s: { w: number; c: number; p: number; a?: number } | undefined, n: number, now: number): Take {
  const w = currentWindow(p.perMs, now, s?.w);
  const curr = countIn(s, w);
  const prev = s && s.w === w ? s.p : countIn(s, w - 1);
  const ahead = s && s.w === w ? (s.a ?? 0) : 0;
  const elapsed = Math.max(0, (now - w * p.perMs) / p.perMs);
  const weightedPrev = prev * (1 - elapsed);
  // Tokens taken ahead for the next window count there in full beside this window's whole count
  // (its weight is 1 when the next window begins): this window keeps room for them.
  const available = Math.max(0, Math.floor(Math.min(p.limit - weightedPrev - curr, p.limit - curr - ahead) + EPSILON));
  const granted = Math.min(n, available);
  const remaining = available - granted;
  const resetMs = (w + 1) * p.perMs - now;
  return {
    state: { w, c: curr + granted, p: prev, ...aheadOf(s, w) },
    granted,
    remaining,
    resetMs,
    retryAfterMs: remaining > 0 ? 0 : Math.max(slidingRetryAfter(p, prev, curr + granted, now, w), aheadRetryAfter(p, curr + granted, ahead, now, w)),
  };
}

/**
 * When one more token becomes available: later in this window, once the previous window's weight
 * has decayed enough; or in the next one, where this window's count is the previous window and
 * decays in turn. A token is available at fraction x of a window when
 * limit − prev·(1 − x) − curr ≥ 1, that is x ≥ 1 − (limit − curr − 1) / prev.
 */
function slidingRetryAfter(p: LimitParams, prev: number, curr: number, now: number, w: number): number {
  if (prev > 0) {
    const x = 1 - (p.limit - curr - 1) / prev;
    if (x < 1) return Math.max(1, Math.ceil((w + x) * p.perMs - now));
  }
  const next = curr <= p.limit - 1 ? 0 : 1 - (p.limit - 1) / curr;
  return Math.max(1, Math.ceil((w + 1 + Math.min(next, 1)) * p.perMs - now));
}

/**
 * Where tokens taken ahead for the next window hold this one's last room (its count and them may
 * not pass the limit together), no token comes in this window: the first is in the next, once
 * this window's count has decayed there, at fraction x with limit − curr·(1 − x) − ahead ≥ 1.
 * 0 where they do not bind.
 */
function aheadRetryAfter(p: LimitParams, curr: number, ahead: number, now: number, w: number): number {
  if (ahead <= 0 || p.limit - curr - ahead >= 1 - EPSILON) return 0;
  const x = curr > 0 ? 1 - (p.limit - ahead - 1) / curr : 0;
  return Math.max(1, Math.ceil((w + 1 + Math.min(Math.max(x, 0), 1)) * p.perMs - now));
}

function takeBucket(p: LimitParams, s: { k: number; t: number } | undefined, n: number, now: number): Take {
  const capacity = p.burst ?? p.limit;
  const ratePerMs = p.limit / p.perMs;
  const elapsed = s ? Math.max(0, now - s.t) : 0;
  // A replica whose clock lags must not move the refill clock back (the time would refill twice).
  const t = s ? Math.max(s.t, now) : now;
  const tokens = s ? Math.min(capacity, s.k + elapsed * ratePerMs) : capacity;
  // A bucket in debt (tokens charged after an outage) has nothing to give until refill repays it.
  const available = Math.max(0, Math.floor(tokens + EPSILON));
  const granted = Math.min(n, available);
  const left = tokens - granted;
  return {
    state: { k: left, t },
    granted,
    remaining: Math.max(0, Math.floor(left + EPSILON)),
    resetMs: Math.ceil((capacity - left) / ratePerMs),
    retryAfterMs: left + EPSILON >= 1 ? 0 : Math.ceil((1 - left) / ratePerMs),
  };
}

/**
 * Windows: takes n tokens of the window after now's ahead of time. They are counted in that window
 * (the state keeps them in `a` until it begins) and leave this window's count and budget alone,
 * except that a sliding window keeps room for them (see takeSliding). `remaining` is the next
 * window's budget left.
 */
export function takeAhead(params: LimitParams, state: BucketState | undefined, n: number, now: number): Take {
  if (params.algorithm === 'token-bucket') throw new Error('takeAhead: a token bucket has no next window');
  const current = take(params, state, 0, now).state as { w: number; c: number; p?: number; a?: number };
  const ahead = current.a ?? 0;
  // When the next window begins, a sliding window weighs this one's count in full.
  const used = ahead + (params.algorithm === 'sliding-window' ? current.c : 0);
  const available = Math.max(0, Math.floor(params.limit - used + EPSILON));
  const granted = Math.min(n, available);
  const resetMs = (current.w + 2) * params.perMs - now;
  return {
    state: { ...current, ...(ahead + granted > 0 ? { a: ahead + granted } : {}) } as BucketState,
    granted,
    remaining: available - granted,
    resetMs,
    retryAfterMs: available - granted > 0 ? 0 : resetMs,
  };
}

// Fractions from time arithmetic (0.1 + 0.2) must not cost a token.
const EPSILON = 1e-9;

/** Gives back n tokens taken by `take` (a request another limit then denied). */
export function giveBack(params: LimitParams, state: BucketState, n: number, now: number): BucketState {
  if ('k' in state) {
    const capacity = params.burst ?? params.limit;
    return { k: Math.min(capacity, state.k + n), t: state.t };
  }
  // A token taken in a window that has since ended is gone with it. One of the window after the
  // stored one was taken ahead (nothing has been taken in its window since).
  const w = windowIndex(params.perMs, now);
  if (state.w === w) return { ...state, c: Math.max(0, state.c - n) };
  if (state.w === w - 1 && state.a) return { ...state, a: Math.max(0, state.a - n) };
  return state;
}

/**
 * Records n tokens as consumed whether or not they were available (tokens admitted by a fallback
 * while the shared bucket could not be asked). Windows count past the limit; a token bucket goes
 * into debt that refill pays off.
 */
export function charge(params: LimitParams, state: BucketState | undefined, n: number, now: number, window?: number): BucketState {
  const current = take(params, state, 0, now).state;
  if ('k' in current) return { k: current.k - n, t: current.t };
  // Tokens admitted in an earlier window (`window`): a sliding window still weighs the one before
  // its current window (its `p`); anything older no longer limits anything.
  if (window !== undefined && window !== current.w) {
    if ('p' in current && window === current.w - 1) return { ...current, p: current.p + n };
    return current;
  }
  return { ...current, c: current.c + n };
}
