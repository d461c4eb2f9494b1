// The latency bench's split of response times by when in the rate-limit window a request started.
import assert from 'node:assert/strict';
import { nearestRankMs, sliceStats } from '../../bench/slice';

describe('bench: response times by the slice of the window their request started in', () => {
  it('nearest rank, in ms', () => {
    assert.equal(nearestRankMs([], 0.99), null);
    const us = Array.from({ length: 100 }, (_, i) => (i + 1) * 1000);
    assert.equal(nearestRankMs(us, 0.99), 99);
    assert.equal(nearestRankMs(us, 0.5), 50);
    assert.equal(nearestRankMs([7000], 0.99), 7);
  });

  it('finds a tail that gathers in one slice, and the p99 without it', () => {
    // 1,000 requests, one per ms of a 1 s window, 0.5 ms each, except: 5 of the 10 that start at
    // 900–909 ms take 3 ms, 5 elsewhere take 3 ms too and 10 elsewhere 2 ms. The p99 is 2 ms; of
    // the ten slower, half started in the slice; without it, the p99 is still 2 ms.
    const phases = Array.from({ length: 1000 }, (_, i) => i);
    const durations = phases.map((ph) => (ph >= 900 && ph < 905 ? 3000 : ph % 200 === 3 ? 3000 : ph % 200 === 1 || ph % 200 === 2 ? 2000 : 500));
    const s = sliceStats(durations, phases, { fromMs: 900, toMs: 910 });
    assert.deepEqual(s, { fromMs: 900, toMs: 910, requestShare: 0.01, tailShare: 0.5, p99OutsideMs: 2 });
    // Slow responses spread over the window, and the one slower than the p99 outside the slice.
    const spread = sliceStats(
      phases.map((ph) => (ph % 100 === 3 ? 3000 : ph === 500 ? 4000 : 500)),
      phases,
      { fromMs: 900, toMs: 910 },
    );
    assert.equal(spread.tailShare, 0, 'the one response above the p99 started outside the slice');
  });

  it('the p99 of the rest leaves the slice out', () => {
    // 2,000 requests, two per ms: the 20 that start at 900–909 ms take 3 ms, 5 others 1 ms, the
    // rest 0.5 ms. The run's p99 is 1 ms and every response above it is in the slice; without the
    // slice the p99 is 0.5 ms.
    const phases = Array.from({ length: 2000 }, (_, i) => Math.floor(i / 2));
    const durations = phases.map((ph, i) => (ph >= 900 && ph < 910 ? 3000 : i % 400 === 1 ? 1000 : 500));
    assert.deepEqual(sliceStats(durations, phases, { fromMs: 900, toMs: 910 }), { fromMs: 900, toMs: 910, requestShare: 0.01, tailShare: 1, p99OutsideMs: 0.5 });
  });

  it('refuses lists that do not pair up, and an empty run has no shares', () => {
    assert.throws(() => sliceStats([1, 2], [1], { fromMs: 0, toMs: 1 }), /one start phase per response time/);
    assert.deepEqual(sliceStats([], [], { fromMs: 0, toMs: 10 }), { fromMs: 0, toMs: 10, requestShare: null, tailShare: null, p99OutsideMs: null });
  });
});
