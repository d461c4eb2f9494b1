// Durations as policies write them: whole numbers with units h, m, s, ms, largest unit first,
// each unit at most once ("500ms", "1s", "1h30m").

const UNIT_MS: Readonly<Record<string, number>> = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1 };
const UNIT_ORDER = ['h', 'm', 's', 'ms'];
const TERM = /(\d{1,12})(ms|h|m|s)/y;

/** Milliseconds, or undefined when the text is not a duration. "0s" is a duration (0). */
export function parseDuration(text: string): number | undefined {
  if (text.length === 0) return undefined;
  TERM.lastIndex = 0;
  let total = 0;
  let nextUnit = 0;
  while (TERM.lastIndex < text.length) {
    const term = TERM.exec(text);
    if (term === null) return undefined;
    const unit = UNIT_ORDER.indexOf(term[2]);
    // Out-of-order or repeated units ("30s1m", "1m1m") are more likely typos than intent.
    if (unit < nextUnit) return undefined;
    nextUnit = unit + 1;
    total += Number(term[1]) * UNIT_MS[term[2]];
  }
  return total;
}
