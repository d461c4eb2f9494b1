// Policy regexes run on the event loop against paths and header values that clients choose. V8's
// backtracking engine can take exponential time on some (nested quantifiers, overlapping
// alternatives); V8 can hand a match that backtracks more than a bound over to its linear-time
// engine instead, for every regex that engine can run. So validation refuses the regexes it cannot
// run (lookarounds, backreferences, bounded repeats over 16), and the command line turns the
// hand-over on at start, before any policy is compiled.
import v8 from 'node:v8';

/** Backtracks a match may take before V8 goes on with its linear-time engine. */
const REGEX_BACKTRACKS_BEFORE_LINEAR = 1000;

let enabled = false;

/** Turns on V8's linear-time engine: for matches that backtrack too much, and the `l` flag. Idempotent. */
export function useLinearRegexFallback(): void {
  if (enabled) return;
  enabled = true;
  v8.setFlagsFromString('--enable-experimental-regexp-engine');
  v8.setFlagsFromString('--enable-experimental-regexp-engine-on-excessive-backtracks');
  v8.setFlagsFromString(`--regexp-backtracks-before-fallback=${REGEX_BACKTRACKS_BEFORE_LINEAR}`);
}

/** Whether V8's linear-time engine can run `source` (it compiles with the `l` flag). */
export function runsInLinearTime(source: string): boolean {
  useLinearRegexFallback();
  try {
    new RegExp(source, 'l');
    return true;
  } catch {
    return false;
  }
}
