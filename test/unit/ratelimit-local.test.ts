import assert from 'node:assert/strict';
import type { CompiledRateLimit, RateLimitAlgorithm } from '../../src/policy/types';
import type { RateLimitRequest } from '../../src/state/port';
import { BoundedMap } from '../../src/state/ratelimit/bounded-map';
import { bucketId, LocalRateLimitStore } from '../../src/state/ratelimit/local';

function rule(fields: { limit: number; perMs?: number; algorithm?: RateLimitAlgorithm; burst?: number; name?: string }): CompiledRateLimit {
  const name = fields.name ?? 'l';
  return {
    id: `shop/${name}`,
    policy: 'shop',
    name,
    matches: () => true,
    keyParts: [],
    algorithm: fields.algorithm ?? 'fixed-window',
    limit: fields.limit,
    perMs: fields.perMs ?? 60_000,
    burst: fields.burst,
    consistency: 'local',
    shadow: false,
    headers: false,
  };
}

// The start of a minute window.
const T0 = 28_333_334 * 60_000;

function ask(r: CompiledRateLimit, now: number, key = ''): RateLimitRequest {
  return { rule: r, key, now };
}

/** How many of `times` consumes at `now` the store allows. */
function admitted(store: LocalRateLimitStore, r: CompiledRateLimit, now: number, times: number, key = ''): number {
  let n = 0;
  for (let i = 0; i < times; i++) if (store.consume(ask(r, now, key)).allowed) n++;
  return n;
}

describe('LocalRateLimitStore', () => {
  it('admits limit ÷ replicas per window', () => {
    const store = new LocalRateLimitStore({ replicas: () => 3 });
    const r = rule({ limit: 30 });
    assert.equal(admitted(store, r, T0 + 10, 50), 10);
    assert.equal(admitted(store, r, T0 + 59_999, 5), 0);
    assert.equal(admitted(store, r, T0 + 60_000, 50), 10, 'the next window');
  });

  it('divides every algorithm, and the burst, by the replicas', () => {
    const store = new LocalRateLimitStore({ replicas: () => 3 });
    assert.equal(admitted(store, rule({ limit: 30, algorithm: 'sliding-window', name: 's' }), T0 + 10, 50), 10);
    assert.equal(admitted(store, rule({ limit: 30, algorithm: 'token-bucket', name: 't' }), T0, 50), 10);
    const bursty = rule({ limit: 30, burst: 60, algorithm: 'token-bucket', name: 'b' });
    assert.equal(admitted(store, bursty, T0, 50), 20);
    // refill at 30/3 per minute: 6 s per token
    assert.equal(admitted(store, bursty, T0 + 5_999, 5), 0);
    assert.equal(admitted(store, bursty, T0 + 6_000, 5), 1);
  });

  it('reports the configured limit and this replica\'s remaining share', () => {
    const store = new LocalRateLimitStore({ replicas: () => 3 });
    const r = rule({ limit: 30 });
    const g = store.consume(ask(r, T0 + 15_500));
    assert.deepEqual(g, { allowed: true, limit: 30, remaining: 9, resetMs: 44_500, retryAfterMs: 0 });
    admitted(store, r, T0 + 15_500, 9);
    assert.deepEqual(store.consume(ask(r, T0 + 20_000)), { allowed: false, limit: 30, remaining: 0, resetMs: 40_000, retryAfterMs: 40_000 });
  });

  it('follows a change of replicas() at once', () => {
    let replicas = 3;
    const store = new LocalRateLimitStore({ replicas: () => replicas });
    const r = rule({ limit: 30 });
    assert.equal(admitted(store, r, T0 + 1, 50), 10);
    replicas = 1;
    assert.equal(admitted(store, r, T0 + 2, 50), 20, 'a replica left: the whole limit, less what was used');
    replicas = 6;
    assert.equal(admitted(store, r, T0 + 60_000, 50), 5, 'more replicas: a smaller share');
    replicas = 2;
    assert.equal(admitted(store, r, T0 + 60_001, 50), 10);
  });

  it('treats fewer than one replica as one', () => {
    const store = new LocalRateLimitStore({ replicas: () => 0 });
    assert.equal(admitted(store, rule({ limit: 7 }), T0, 20), 7);
  });

  // A share below one token would admit nothing anywhere: each replica gets at least one.
  it('a share below one token still admits requests', () => {
    for (const algorithm of ['fixed-window', 'sliding-window', 'token-bucket'] as const) {
      const store = new LocalRateLimitStore({ replicas: () => 3 });
      const r = rule({ limit: 2, algorithm });
      let total = 0;
      for (let m = 0; m < 5; m++) total += admitted(store, r, T0 + m * 60_000, 5);
      assert.ok(total >= 1, `${algorithm}: ${total} admitted in 5 minutes`);
    }
  });

  it('keeps separate buckets per rule and per key', () => {
    const store = new LocalRateLimitStore({ replicas: () => 1 });
    const a = rule({ limit: 2, name: 'a' });
    const b = rule({ limit: 2, name: 'b' });
    assert.equal(admitted(store, a, T0, 5, 'k1'), 2);
    assert.equal(admitted(store, a, T0, 5, 'k2'), 2);
    assert.equal(admitted(store, b, T0, 5, 'k1'), 2);
    assert.equal(store.size, 3);
    assert.notEqual(bucketId(ask(a, T0, 'k1')), bucketId(ask(b, T0, 'k1')));
    assert.notEqual(bucketId(ask(a, T0, 'k1')), bucketId(ask(a, T0, 'k2')));
  });

  it('refund gives the token back in the same window only', () => {
    const store = new LocalRateLimitStore({ replicas: () => 1 });
    const r = rule({ limit: 2 });
    assert.equal(admitted(store, r, T0, 2), 2);
    store.refund(ask(r, T0 + 1));
    assert.equal(admitted(store, r, T0 + 2, 5), 1);
    store.refund(ask(r, T0 + 60_000));
    assert.equal(admitted(store, r, T0 + 60_001, 5), 2, 'a late refund adds nothing to the next window');
    store.refund(ask(r, T0, 'never-seen'));
    assert.equal(store.size, 1, 'refunding an unknown bucket creates nothing');
  });

  it('caps the tracked buckets and counts evictions', () => {
    const store = new LocalRateLimitStore({ replicas: () => 1, maxBuckets: 100 });
    const r = rule({ limit: 1 });
    for (let i = 0; i < 1000; i++) assert.equal(store.consume(ask(r, T0, `k${i}`)).allowed, true);
    assert.ok(store.size <= 100, `size ${store.size}`);
    assert.equal(store.size, 100);
    assert.equal(store.evictions, 900);
    // the most recent keys are still tracked; an evicted key starts afresh
    assert.equal(store.consume(ask(r, T0, 'k999')).allowed, false);
    assert.equal(store.consume(ask(r, T0, 'k0')).allowed, true);
    assert.equal(store.evictions, 901);
  });

  it('keeps the most recently used buckets', () => {
    const store = new LocalRateLimitStore({ replicas: () => 1, maxBuckets: 3 });
    const r = rule({ limit: 1 });
    for (const key of ['a', 'b', 'c']) store.consume(ask(r, T0, key));
    store.consume(ask(r, T0, 'a')); // denied, but used: a is now the most recent
    store.consume(ask(r, T0, 'd')); // evicts b
    assert.equal(store.evictions, 1);
    assert.equal(store.consume(ask(r, T0, 'a')).allowed, false, 'a was kept');
    assert.equal(store.consume(ask(r, T0, 'd')).allowed, false, 'd was kept');
    assert.equal(store.consume(ask(r, T0, 'b')).allowed, true, 'b was evicted and starts afresh');
  });

  it('defaults to a cap of 100000 buckets', () => {
    const store = new LocalRateLimitStore({ replicas: () => 1 });
    const r = rule({ limit: 1 });
    for (let i = 0; i < 100_001; i++) store.consume(ask(r, T0, String(i)));
    assert.equal(store.size, 100_000);
    assert.equal(store.evictions, 1);
  });
});

describe('BoundedMap', () => {
  it('drops the least recently set entry when full', () => {
    const m = new BoundedMap<number>(3);
    m.set('a', 1);
    m.set('b', 2);
    m.set('c', 3);
    assert.equal(m.evictions, 0);
    m.set('a', 10); // refresh: a becomes the most recent
    m.set('d', 4);
    assert.equal(m.size, 3);
    assert.equal(m.evictions, 1);
    assert.equal(m.get('b'), undefined);
    assert.equal(m.get('a'), 10);
    assert.deepEqual([...m.values()], [3, 10, 4], 'oldest first');
    m.set('e', 5);
    assert.equal(m.get('c'), undefined);
    assert.deepEqual([...m.values()], [10, 4, 5]);
    assert.equal(m.evictions, 2);
  });

  it('updating an entry neither grows the map nor evicts', () => {
    const m = new BoundedMap<number>(2);
    m.set('a', 1);
    m.set('b', 2);
    for (let i = 0; i < 10; i++) m.set('a', i);
    assert.equal(m.size, 2);
    assert.equal(m.evictions, 0);
    assert.equal(m.get('b'), 2);
  });

  it('delete frees a slot', () => {
    const m = new BoundedMap<string>(2);
    m.set('a', 'x');
    m.set('b', 'y');
    m.delete('a');
    assert.equal(m.size, 1);
    m.set('c', 'z');
    assert.equal(m.evictions, 0);
    assert.deepEqual([...m.values()], ['y', 'z']);
  });

  it('stays within capacity under many distinct keys', () => {
    const m = new BoundedMap<number>(100);
    for (let i = 0; i < 1000; i++) m.set(`k${i}`, i);
    assert.equal(m.size, 100);
    assert.equal(m.evictions, 900);
    assert.equal(m.get('k899'), undefined);
    assert.equal(m.get('k900'), 900);
    assert.equal(m.get('k999'), 999);
  });
});
