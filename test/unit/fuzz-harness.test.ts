// The bound the fuzz tests run under: a property the time limit cut short fails unless it got
// through enough runs, so that a fuzz test cannot pass having tested almost nothing.
import assert from 'node:assert/strict';
import type fc from 'fast-check';
import { MIN_FUZZ_RUNS, judgeRun } from '../harness/fuzz';

function details(): fc.RunDetails<unknown> {
  return { failed: false, interrupted: false, numRuns: 0, numSkips: 0, numShrinks: 0, seed: 7, counterexample: null, counterexamplePath: null, errorInstance: null, failures: [], executionSummary: [], verbose: 0, runConfiguration: {} } as unknown as fc.RunDetails<unknown>;
}

describe('fuzz harness: judgeRun', () => {
  it('passes a property that ran all its runs', () => {
    judgeRun({ ...details(), numRuns: 300 }, 300);
  });

  it('fails a property the time limit stopped before the minimum of runs, naming the seed', () => {
    assert.throws(() => judgeRun({ ...details(), interrupted: true, numRuns: MIN_FUZZ_RUNS - 1 }, 300), /only 24 runs of 300 .*\(at least 25 wanted; seed 7\)/);
  });

  it('passes a property the time limit stopped after the minimum (slow machines still pass)', () => {
    judgeRun({ ...details(), interrupted: true, numRuns: MIN_FUZZ_RUNS }, 300);
  });

  it('asks no more than a property was given', () => {
    judgeRun({ ...details(), interrupted: true, numRuns: 10 }, 10);
    assert.throws(() => judgeRun({ ...details(), interrupted: true, numRuns: 9 }, 10), /only 9 runs of 10/);
  });

  it('fails a failed property', () => {
    assert.throws(() => judgeRun({ ...details(), failed: true, numRuns: 3 }, 300), /fail/i);
  });
});
