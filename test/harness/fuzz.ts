// Bounded property runs for the fuzz tests: a fixed number of runs per property and a time limit,
// so that the unit suite takes seconds. FUZZ_RUNS=N raises the runs (and lifts the time limit);
// FUZZ_SEED=S replays the seed a failure printed.
import fc from 'fast-check';

const RUNS = Number(process.env.FUZZ_RUNS) || 0;
/** How long one property may run before it stops where it is. */
export const FUZZ_TIME_LIMIT_MS = RUNS ? 3_600_000 : 4_000;
/**
 * A property stopped by the time limit before this many runs fails: the code under it (or the
 * generator) has become slow enough that the test no longer tests much. Its passing runs take a
 * small fraction of the limit.
 */
export const MIN_FUZZ_RUNS = 25;

function params(numRuns: number): fc.Parameters<unknown> {
  return { numRuns: RUNS || numRuns, interruptAfterTimeLimit: FUZZ_TIME_LIMIT_MS, seed: process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined };
}

/**
 * Throws what fc.assert would for a failure, and for a run the time limit cut short (see
 * MIN_FUZZ_RUNS); `wanted` is the runs the property was given.
 */
export function judgeRun(details: fc.RunDetails<unknown>, wanted: number): void {
  if (details.failed) throw new Error(fc.defaultReportMessage(details) ?? `property failed after ${details.numRuns} runs (seed ${details.seed})`);
  const floor = Math.min(wanted, MIN_FUZZ_RUNS);
  if (details.interrupted && details.numRuns < floor) {
    throw new Error(`only ${details.numRuns} runs of ${wanted} before the ${FUZZ_TIME_LIMIT_MS} ms limit (at least ${floor} wanted; seed ${details.seed})`);
  }
}

/** Runs a property `numRuns` times (FUZZ_RUNS overrides), bounded by the time limit. */
export function fuzz<Ts>(property: fc.IProperty<Ts>, numRuns: number): void {
  const p = params(numRuns);
  judgeRun(fc.check(property, p) as fc.RunDetails<unknown>, p.numRuns!);
}

/** The same for an asynchronous property. */
export async function fuzzAsync<Ts>(property: fc.IAsyncProperty<Ts>, numRuns: number): Promise<void> {
  const p = params(numRuns);
  judgeRun((await fc.check(property, p)) as fc.RunDetails<unknown>, p.numRuns!);
}
