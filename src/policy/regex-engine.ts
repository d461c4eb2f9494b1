// Policy regexes run on the event loop against paths and header values that clients choose. V8's
// backtracking engine can take exponential time on some (nested quantifiers, overlapping
// alternatives); V8 can hand a match that backtracks more than a bound over to its linear-time
// engine instead. The command line turns that on at start, before any policy is compiled.
// Backreferences (refused by validation) and lookarounds are beyond the linear engine.
import v8 from 'node:v8';

/** Backtracks a match may take before V8 goes on with its linear-time engine. */
export const REGEX_BACKTRACKS_BEFORE_LINEAR = 1000;

let enabled = false;

export function useLinearRegexFallback(): void {
  if (enabled) return;
  enabled = true;
  v8.setFlagsFromString('--enable-experimental-regexp-engine-on-excessive-backtracks');
  v8.setFlagsFromString(`--regexp-backtracks-before-fallback=${REGEX_BACKTRACKS_BEFORE_LINEAR}`);
}
