// Breaker settings small enough for unit tests, and a promise the test settles by hand.
import type { BreakerSettings } from '../../src/state/resilient/breaker';

export const TEST_BREAKER: BreakerSettings = {
  timeoutMs: 20,
  errorThresholdPercentage: 50,
  volumeThreshold: 3,
  resetTimeoutMs: 100,
  rollingWindowMs: 10_000,
  consecutiveFailures: 3,
  // Off here, so the counts above decide; the confirming read has tests of its own.
  confirmTimeoutMs: 0,
};

/** "At once" / "within about the breaker timeout", with room for a loaded machine. */
export const BOUND_MS = 10 * TEST_BREAKER.timeoutMs;

export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
