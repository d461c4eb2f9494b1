// Response times of the requests that started in one slice of every rate-limit window, against the
// rest: where a once-a-window event (a leased replica's etcd call) shows in a run's tail.

/** The q-quantile (0 < q ≤ 1) of ascending values by nearest rank: of 75 values, q 0.99 is the 75th. */
export function nearestRank(sorted: readonly number[], q: number): number | null {
  return sorted.length ? sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)]! : null;
}

/** The q-quantile of ascending response times (µs) by nearest rank, in ms. */
export function nearestRankMs(sortedUs: readonly number[], q: number): number | null {
  const v = nearestRank(sortedUs, q);
  return v === null ? null : v / 1000;
}

export interface SliceStats {
  /** The slice, in ms into each window. */
  fromMs: number;
  toMs: number;
  /** Share of the responses whose request started in it (about its share of the window). */
  requestShare: number | null;
  /** Share of the responses slower than the run's p99 whose request started in it. */
  tailShare: number | null;
  /** p99 of the responses whose request started outside it. */
  p99OutsideMs: number | null;
}

/**
 * How the responses to requests that started in [fromMs, toMs) of a window compare with the rest;
 * `phasesMs[i]` is when the request of `durationsUs[i]` started, in ms into its window.
 */
export function sliceStats(durationsUs: readonly number[], phasesMs: readonly number[], slice: { fromMs: number; toMs: number }): SliceStats {
  if (phasesMs.length !== durationsUs.length) throw new Error('sliceStats: one start phase per response time');
  const inSlice = (i: number) => phasesMs[i]! >= slice.fromMs && phasesMs[i]! < slice.toMs;
  const p99 = nearestRankMs([...durationsUs].sort((a, b) => a - b), 0.99);
  let inside = 0;
  let tail = 0;
  let tailInside = 0;
  const outside: number[] = [];
  durationsUs.forEach((d, i) => {
    const isIn = inSlice(i);
    if (isIn) inside += 1;
    else outside.push(d);
    if (p99 !== null && d > p99 * 1000) {
      tail += 1;
      if (isIn) tailInside += 1;
    }
  });
  const share = (part: number, whole: number) => (whole > 0 ? Math.round((part / whole) * 1e4) / 1e4 : null);
  return {
    ...slice,
    requestShare: share(inside, durationsUs.length),
    tailShare: share(tailInside, tail),
    p99OutsideMs: nearestRankMs(outside.sort((a, b) => a - b), 0.99),
  };
}
