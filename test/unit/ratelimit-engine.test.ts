import assert from 'node:assert/strict';
import { decide } from '../../src/middlebox/pipeline';
import { bucketKey, decideRateLimit } from '../../src/middlebox/ratelimit/engine';
import type { Verdict } from '../../src/middlebox/types';
import type { RateLimitGrant, RateLimitPort, RateLimitRequest } from '../../src/state/port';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { snapshot } from '../harness/policy';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { request } from '../harness/request';

const RESET_MS = 30_000;
const RETRY_MS = 2_500;

/** Counts tokens per rule and key in a Map; every call is recorded. */
class FakePort implements RateLimitPort {
  readonly counts = new Map<string, number>();
  readonly consumed: RateLimitRequest[] = [];
  readonly refunded: RateLimitRequest[] = [];
  retryAfterMs = RETRY_MS;

  consume(req: RateLimitRequest): RateLimitGrant | Promise<RateLimitGrant> {
    this.consumed.push(req);
    const id = `${req.rule.id}\u0000${req.key}`;
    const used = this.counts.get(id) ?? 0;
    const allowed = used < req.rule.limit;
    if (allowed) this.counts.set(id, used + 1);
    const remaining = req.rule.limit - used - (allowed ? 1 : 0);
    return { allowed, limit: req.rule.limit, remaining, resetMs: RESET_MS, retryAfterMs: remaining > 0 ? 0 : this.retryAfterMs };
  }

  refund(req: RateLimitRequest): void {
    this.refunded.push(req);
    const id = `${req.rule.id}\u0000${req.key}`;
    this.counts.set(id, (this.counts.get(id) ?? 0) - 1);
  }

  used(ruleId: string, key = ''): number {
    return this.counts.get(`${ruleId}\u0000${key}`) ?? 0;
  }
}

/** The same, answering through Promises (as the etcd-backed port does). */
class AsyncFakePort extends FakePort {
  override consume(req: RateLimitRequest): Promise<RateLimitGrant> {
    const grant = super.consume(req) as RateLimitGrant;
    return new Promise((resolve) => setImmediate(() => resolve(grant)));
  }
}

/** Runs a decision to its verdict, whichever way it answers. */
async function settle(v: Verdict | Promise<Verdict> | undefined): Promise<Verdict> {
  assert.ok(v !== undefined, 'a rate limit should have applied');
  return v;
}

// A fixed-window minute; 15.5 s into it.
const NOW = 28_333_333 * 60_000 + 15_500;

const PER_IP_10 = `{ rateLimits: [{ name: per-ip, limit: 10, per: 1m, by: [sourceIp], algorithm: fixed-window }] }`;

function header(v: Verdict, name: string, which: 'headers' | 'responseHeaders' = 'headers'): string | undefined {
  return v[which]?.find((h) => h.key === name)?.value;
}

describe('decideRateLimit', () => {
  const ports: Array<[string, () => RateLimitPort]> = [
    ['a synchronous fake port', () => new FakePort()],
    ['an asynchronous fake port', () => new AsyncFakePort()],
    ['LocalRateLimitStore (1 replica)', () => new LocalRateLimitStore({ replicas: () => 1 })],
  ];

  for (const [name, makePort] of ports) {
    describe(`with ${name}`, () => {
      it('admits limit requests and denies the next with 429 rate_limited', async () => {
        const snap = snapshot({ shop: PER_IP_10 });
        const port = makePort();
        for (let i = 0; i < 10; i++) {
          const v = await settle(decideRateLimit(snap, request(), port, NOW + i));
          assert.equal(v.allow, true, `request ${i + 1}`);
          assert.equal(v.reason, 'allowed');
          assert.equal(v.responseHeaders, undefined, 'no headers unless the rule asks');
          assert.equal(v.shadowDenials, undefined);
        }
        const denied = await settle(decideRateLimit(snap, request(), port, NOW + 10));
        const local = port instanceof LocalRateLimitStore;
        // LocalRateLimitStore: window ends 44.49 s later; the fakes: reset 30 s, retry 2.5 s.
        const retry = local ? '45' : '3';
        const reset = local ? '45' : '30';
        assert.deepEqual(denied, {
          allow: false,
          status: 429,
          middlebox: 'ratelimit',
          policy: 'shop',
          rule: 'per-ip',
          reason: 'rate_limited',
          headers: [
            { key: 'retry-after', value: retry },
            { key: 'ratelimit-limit', value: '10' },
            { key: 'ratelimit-remaining', value: '0' },
            { key: 'ratelimit-reset', value: reset },
          ],
          shadowDenials: undefined,
        });
        // another source has its own bucket
        assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.1' }), port, NOW + 11))).allow, true);
        // the denial took nothing: still denied, and the next window admits again
        assert.equal((await settle(decideRateLimit(snap, request(), port, NOW + 12))).allow, false);
        if (local) {
          for (let i = 0; i < 10; i++) assert.equal((await settle(decideRateLimit(snap, request(), port, NOW + 60_000 + i))).allow, true);
        }
      });

      it('gives the first limit its token back when a second limit denies', async () => {
        const snap = snapshot({
          shop: `{ rateLimits: [
            { name: global, limit: 3, per: 1m, algorithm: fixed-window },
            { name: per-ip, limit: 1, per: 1m, by: [sourceIp], algorithm: fixed-window } ] }`,
        });
        const port = makePort();
        assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.1' }), port, NOW))).allow, true);
        for (let i = 0; i < 5; i++) {
          const v = await settle(decideRateLimit(snap, request({ from: '192.0.2.1' }), port, NOW + 1 + i));
          assert.equal(v.allow, false);
          assert.equal(v.rule, 'per-ip', 'the denying limit is named');
        }
        if (port instanceof FakePort) {
          assert.equal(port.refunded.length, 5);
          assert.ok(port.refunded.every((r) => r.rule.id === 'shop/global' && r.key === '' && r.now >= NOW + 1));
          assert.equal(port.used('shop/global'), 1);
        }
        // the global bucket kept 2 of its 3 tokens through the 5 denials
        assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.2' }), port, NOW + 10))).allow, true);
        assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.3' }), port, NOW + 11))).allow, true);
        const full = await settle(decideRateLimit(snap, request({ from: '192.0.2.4' }), port, NOW + 12));
        assert.equal(full.allow, false);
        assert.equal(full.rule, 'global');
      });

      it('gives back tokens across policies too', async () => {
        const snap = snapshot({
          'a-wide': `{ rateLimits: [{ name: all, limit: 2, per: 1m, algorithm: fixed-window }] }`,
          'b-narrow': `{ rateLimits: [{ name: per-key, limit: 1, per: 1m, by: ["header:x-api-key"], algorithm: fixed-window }] }`,
        });
        const port = makePort();
        const k1 = request({ headers: { 'x-api-key': 'k1' } });
        assert.equal((await settle(decideRateLimit(snap, k1, port, NOW))).allow, true);
        const denied = await settle(decideRateLimit(snap, k1, port, NOW + 1));
        assert.deepEqual([denied.allow, denied.policy, denied.rule], [false, 'b-narrow', 'per-key']);
        assert.equal((await settle(decideRateLimit(snap, request({ headers: { 'x-api-key': 'k2' } }), port, NOW + 2))).allow, true);
        const third = await settle(decideRateLimit(snap, request({ headers: { 'x-api-key': 'k3' } }), port, NOW + 3));
        assert.deepEqual([third.allow, third.policy, third.rule], [false, 'a-wide', 'all']);
      });

      it('advertises the tightest limit that asks for headers', async () => {
        const snap = snapshot({
          shop: `{ rateLimits: [
            { name: wide, limit: 10, per: 1m, algorithm: fixed-window, headers: true },
            { name: tight, limit: 3, per: 1m, by: [sourceIp], algorithm: fixed-window, headers: true },
            { name: silent, limit: 2, per: 1m, by: [path], algorithm: fixed-window, headers: false } ] }`,
        });
        const port = makePort();
        const first = await settle(decideRateLimit(snap, request({ path: '/a' }), port, NOW));
        assert.equal(first.allow, true);
        const reset = port instanceof LocalRateLimitStore ? '45' : '30';
        assert.deepEqual(first.responseHeaders, [
          { key: 'ratelimit-limit', value: '3' },
          { key: 'ratelimit-remaining', value: '2' },
          { key: 'ratelimit-reset', value: reset },
        ]);
        // a different source: its own per-ip bucket is fuller than the shared one
        for (let i = 0; i < 7; i++) await settle(decideRateLimit(snap, request({ from: `192.0.2.${i + 1}`, path: `/p${i}` }), port, NOW + 1));
        const other = await settle(decideRateLimit(snap, request({ from: '192.0.2.99', path: '/z' }), port, NOW + 2));
        assert.equal(other.allow, true);
        assert.equal(header(other, 'ratelimit-limit', 'responseHeaders'), '10');
        assert.equal(header(other, 'ratelimit-remaining', 'responseHeaders'), '1');
      });
    });
  }

  it('returns undefined (synchronously) when no rate limit applies, without asking the port', () => {
    const port = new FakePort();
    assert.equal(decideRateLimit(snapshot({}), request(), port, NOW), undefined);
    assert.equal(decideRateLimit(snapshot({ fw: '{ firewall: { default: allow } }' }), request(), port, NOW), undefined);
    const snap = snapshot({
      api: `{ selector: { hosts: ["api.local"] }, rateLimits: [{ name: l, limit: 1, per: 1s }] }`,
      shop: `{ rateLimits: [{ name: l, limit: 1, per: 1s, match: { paths: ["/api/*"], methods: [POST] } }] }`,
    });
    assert.equal(decideRateLimit(snap, request({ path: '/api/x', method: 'GET' }), port, NOW), undefined);
    assert.equal(decideRateLimit(snap, request({ path: '/shop', method: 'POST' }), port, NOW), undefined);
    assert.equal(port.consumed.length, 0);
  });

  it('counts only requests that the policy selector and the rule match select', async () => {
    const snap = snapshot({
      api: `{ selector: { hosts: ["api.local"] }, rateLimits: [{ name: all, limit: 2, per: 1m }] }`,
      shop: `{ rateLimits: [{ name: writes, limit: 1, per: 1m, match: { methods: [POST] } }] }`,
    });
    const port = new FakePort();
    // GET shop.local: nothing applies
    for (let i = 0; i < 5; i++) assert.equal(decideRateLimit(snap, request(), port, NOW), undefined);
    // GET api.local: only api/all
    assert.equal((await settle(decideRateLimit(snap, request({ host: 'api.local' }), port, NOW))).allow, true);
    assert.deepEqual(port.consumed.map((r) => r.rule.id), ['api/all']);
    // POST shop.local: only shop/writes
    assert.equal((await settle(decideRateLimit(snap, request({ method: 'POST' }), port, NOW))).allow, true);
    const second = await settle(decideRateLimit(snap, request({ method: 'POST' }), port, NOW));
    assert.deepEqual([second.allow, second.policy, second.rule], [false, 'shop', 'writes']);
    // POST api.local: both, in policy order
    port.consumed.length = 0;
    const both = await settle(decideRateLimit(snap, request({ host: 'api.local', method: 'POST' }), port, NOW));
    assert.deepEqual(port.consumed.map((r) => r.rule.id), ['api/all', 'shop/writes']);
    assert.equal(both.rule, 'writes');
    assert.equal(port.used('api/all'), 1, 'api/all got its token back');
  });

  describe('bucket keys', () => {
    it('separate buckets per sourceIp', async () => {
      const snap = snapshot({ shop: `{ rateLimits: [{ name: l, limit: 2, per: 1m, by: [sourceIp] }] }` });
      const port = new FakePort();
      for (const from of ['192.0.2.1', '192.0.2.1', '192.0.2.2', '2001:db8::1', '2001:db8::1']) {
        assert.equal((await settle(decideRateLimit(snap, request({ from }), port, NOW))).allow, true, from);
      }
      assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.1' }), port, NOW))).allow, false);
      assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.2' }), port, NOW))).allow, true);
      assert.deepEqual([...new Set(port.consumed.map((r) => r.key))].sort(), ['192.0.2.1', '192.0.2.2', '2001:db8::1']);
    });

    it('reads a header key, and groups requests without the header under ""', async () => {
      const snap = snapshot({ shop: `{ rateLimits: [{ name: l, limit: 1, per: 1m, by: ["header:X-Api-Key"] }] }` });
      const rule = snap.policies[0]!.rateLimits[0]!;
      assert.equal(bucketKey(rule, request({ headers: { 'x-api-key': 'k1' } })), 'k1');
      assert.equal(bucketKey(rule, request()), '');
      assert.equal(bucketKey(rule, request({ protocol: 'tcp' })), '');
      const port = new FakePort();
      assert.equal((await settle(decideRateLimit(snap, request({ headers: { 'x-api-key': 'k1' } }), port, NOW))).allow, true);
      assert.equal((await settle(decideRateLimit(snap, request({ headers: { 'x-api-key': 'k2' } }), port, NOW))).allow, true);
      assert.equal((await settle(decideRateLimit(snap, request({ headers: { 'x-api-key': 'k1' } }), port, NOW))).allow, false);
      assert.equal((await settle(decideRateLimit(snap, request(), port, NOW))).allow, true, 'first keyless request');
      assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.9' }), port, NOW))).allow, false, 'keyless requests share one bucket');
    });

    it('a limit keyed by what a TCP connection lacks (host, path, a header; a principal it has not) does not apply to it', async () => {
      const snap = snapshot({
        shop: `{ rateLimits: [{ name: by-path, limit: 1, per: 1m, by: [path] }, { name: by-key, limit: 1, per: 1m, by: [sourceIp, "header:x-api-key"] }, { name: by-caller, limit: 1, per: 1m, by: [principal] }, { name: per-client, limit: 5, per: 1m, by: [sourceIp] }] }`,
      });
      const port = new FakePort();
      for (let i = 0; i < 3; i++) {
        // Without the rule, every connection would share by-path's (and by-caller's) one "" bucket (limit 1).
        assert.equal((await settle(decideRateLimit(snap, request({ protocol: 'tcp' }), port, NOW))).allow, true, `connection ${i + 1}`);
      }
      assert.deepEqual([...new Set(port.consumed.map((r) => r.rule.id))], ['shop/per-client'], 'only the limit keyed by the source');
      port.consumed.length = 0;
      await settle(decideRateLimit(snap, request({ protocol: 'tcp', principal: 'spiffe://shop/db' }), port, NOW));
      assert.deepEqual(port.consumed.map((r) => r.rule.id), ['shop/by-caller', 'shop/per-client'], 'a connection with a principal: its limit applies');
      port.consumed.length = 0;
      await settle(decideRateLimit(snap, request(), port, NOW));
      assert.deepEqual(port.consumed.map((r) => r.rule.id), ['shop/by-path', 'shop/by-key', 'shop/by-caller', 'shop/per-client'], 'HTTP requests: all four');
    });

    it('combines several keys without collisions', async () => {
      const snap = snapshot({ shop: `{ rateLimits: [{ name: l, limit: 1, per: 1m, by: [sourceIp, "header:x-api-key", path] }] }` });
      const rule = snap.policies[0]!.rateLimits[0]!;
      const a = bucketKey(rule, request({ from: '192.0.2.1', headers: { 'x-api-key': 'k' }, path: '/x' }));
      assert.notEqual(a, bucketKey(rule, request({ from: '192.0.2.1', headers: { 'x-api-key': 'k' }, path: '/y' })));
      assert.notEqual(a, bucketKey(rule, request({ from: '192.0.2.2', headers: { 'x-api-key': 'k' }, path: '/x' })));
      assert.notEqual(a, bucketKey(rule, request({ from: '192.0.2.1', path: '/x' })));
      assert.equal(a, bucketKey(rule, request({ from: '192.0.2.1', headers: { 'x-api-key': 'k' }, path: '/x', method: 'POST' })));
      // "ab" + "c" must not be the bucket of "a" + "bc"
      const twoHeaders = snapshot({ shop: `{ rateLimits: [{ name: l, limit: 1, per: 1m, by: ["header:a", "header:b"] }] }` }).policies[0]!.rateLimits[0]!;
      assert.notEqual(bucketKey(twoHeaders, request({ headers: { a: 'ab', b: 'c' } })), bucketKey(twoHeaders, request({ headers: { a: 'a', b: 'bc' } })));

      const port = new FakePort();
      const req = request({ from: '192.0.2.1', headers: { 'x-api-key': 'k' }, path: '/x' });
      assert.equal((await settle(decideRateLimit(snap, req, port, NOW))).allow, true);
      assert.equal((await settle(decideRateLimit(snap, req, port, NOW))).allow, false);
      assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.1', headers: { 'x-api-key': 'k2' }, path: '/x' }), port, NOW))).allow, true);
    });

    it('uses one global bucket with no keys', async () => {
      const snap = snapshot({ shop: `{ rateLimits: [{ name: l, limit: 1, per: 1m }] }` });
      const port = new FakePort();
      assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.1' }), port, NOW))).allow, true);
      assert.equal((await settle(decideRateLimit(snap, request({ from: '192.0.2.2', path: '/x' }), port, NOW))).allow, false);
      assert.deepEqual(port.consumed.map((r) => r.key), ['', '']);
    });
  });

  describe('shadow', () => {
    it('a shadow limit records its denial and allows', async () => {
      const snap = snapshot({ trial: `{ rateLimits: [{ name: l, limit: 1, per: 1m, shadow: true, headers: true }] }` });
      const port = new FakePort();
      const first = await settle(decideRateLimit(snap, request(), port, NOW));
      assert.deepEqual([first.allow, first.shadowDenials, first.responseHeaders], [true, undefined, undefined], 'a shadow rule advertises nothing');
      for (let i = 0; i < 3; i++) {
        const v = await settle(decideRateLimit(snap, request(), port, NOW));
        assert.equal(v.allow, true);
        assert.equal(v.reason, 'allowed');
        assert.deepEqual(v.shadowDenials, [{ middlebox: 'ratelimit', policy: 'trial', rule: 'l', status: 429 }]);
        assert.equal(v.headers, undefined);
      }
      assert.equal(port.refunded.length, 0);
    });

    it('a shadow policy makes its limits shadow', async () => {
      const snap = snapshot({ trial: `{ shadow: true, rateLimits: [{ name: l, limit: 1, per: 1m }] }` });
      const port = new FakePort();
      await settle(decideRateLimit(snap, request(), port, NOW));
      const v = await settle(decideRateLimit(snap, request(), port, NOW));
      assert.equal(v.allow, true);
      assert.deepEqual(v.shadowDenials, [{ middlebox: 'ratelimit', policy: 'trial', rule: 'l', status: 429 }]);
    });

    it('an enforced denial keeps the shadow denials beside it', async () => {
      const snap = snapshot({
        a: `{ rateLimits: [{ name: s, limit: 1, per: 1m, shadow: true }] }`,
        b: `{ rateLimits: [{ name: e, limit: 1, per: 1m }] }`,
      });
      const port = new FakePort();
      await settle(decideRateLimit(snap, request(), port, NOW));
      const v = await settle(decideRateLimit(snap, request(), port, NOW));
      assert.deepEqual([v.allow, v.status, v.policy, v.rule], [false, 429, 'b', 'e']);
      assert.deepEqual(v.shadowDenials, [{ middlebox: 'ratelimit', policy: 'a', rule: 's', status: 429 }]);
    });
  });

  it('retry-after is at least one second, rounded up', async () => {
    const snap = snapshot({ shop: `{ rateLimits: [{ name: l, limit: 1, per: 1s }] }` });
    for (const [ms, seconds] of [[0, '1'], [1, '1'], [999, '1'], [1000, '1'], [1001, '2'], [59_500, '60']] as const) {
      const port = new FakePort();
      port.retryAfterMs = ms;
      await settle(decideRateLimit(snap, request(), port, NOW));
      assert.equal(header(await settle(decideRateLimit(snap, request(), port, NOW)), 'retry-after'), seconds, `${ms}ms`);
    }
  });

  it('answers synchronously with a synchronous port and with a Promise with an asynchronous one', async () => {
    const snap = snapshot({ shop: PER_IP_10 });
    const sync = decideRateLimit(snap, request(), new FakePort(), NOW);
    assert.ok(sync !== undefined && !(sync instanceof Promise));
    assert.equal(sync.allow, true);
    const local = decideRateLimit(snap, request(), new LocalRateLimitStore({ replicas: () => 1 }), NOW);
    assert.ok(local !== undefined && !(local instanceof Promise));
    const pending = decideRateLimit(snap, request(), new AsyncFakePort(), NOW);
    assert.ok(pending instanceof Promise);
    assert.equal((await pending).allow, true);
  });
});

describe('decide (pipeline) with rate limits', () => {
  const FIREWALL_AND_LIMIT = `{
    firewall: { default: allow, rules: [
      { name: office, action: allow, from: ["203.0.113.0/24"] },
      { name: no-admin, action: deny, paths: ["/admin/*"] } ] },
    rateLimits: [{ name: per-ip, limit: 2, per: 1m, by: [sourceIp], algorithm: fixed-window, headers: true }] }`;

  it('fails closed without a snapshot and never asks the port', () => {
    const port = new FakePort();
    assert.deepEqual(decide(undefined, request(), { rateLimits: port, nat: new MemoryNatTable() }, NOW), { allow: false, status: 503, reason: 'policy_not_loaded' });
    assert.equal(port.consumed.length, 0);
  });

  it('a firewall-denied request never reaches the rate limiter', async () => {
    const snap = snapshot({ shop: FIREWALL_AND_LIMIT });
    for (const port of [new FakePort(), new AsyncFakePort()]) {
      for (let i = 0; i < 5; i++) {
        const v = decide(snap, request({ path: '/admin/x' }), { rateLimits: port, nat: new MemoryNatTable() }, NOW);
        assert.ok(!(v instanceof Promise), 'a firewall denial answers synchronously');
        assert.deepEqual([v.allow, v.status, v.middlebox, v.rule], [false, 403, 'firewall', 'no-admin']);
      }
      assert.equal(port.consumed.length, 0);
      assert.equal((await decide(snap, request(), { rateLimits: port, nat: new MemoryNatTable() }, NOW)).allow, true, 'the quota is untouched');
      assert.equal((await decide(snap, request(), { rateLimits: port, nat: new MemoryNatTable() }, NOW)).allow, true);
      assert.equal((await decide(snap, request(), { rateLimits: port, nat: new MemoryNatTable() }, NOW)).allow, false);
    }
  });

  it('returns the firewall verdict unchanged when no limit applies', () => {
    const snap = snapshot({ shop: '{ firewall: { rules: [{ name: office, action: allow, from: ["203.0.113.0/24"] }] } }' });
    const port = new FakePort();
    assert.deepEqual(decide(snap, request({ from: '203.0.113.5' }), { rateLimits: port, nat: new MemoryNatTable() }, NOW), {
      allow: true, reason: 'allowed', policy: 'shop', rule: 'office',
    });
    assert.equal(port.consumed.length, 0);
  });

  it('merges the firewall allow with the rate-limit headers (sync and async)', async () => {
    const snap = snapshot({ shop: FIREWALL_AND_LIMIT });
    const sync = decide(snap, request({ from: '203.0.113.5' }), { rateLimits: new FakePort(), nat: new MemoryNatTable() }, NOW);
    assert.ok(!(sync instanceof Promise));
    const pending = decide(snap, request({ from: '203.0.113.5' }), { rateLimits: new AsyncFakePort(), nat: new MemoryNatTable() }, NOW);
    assert.ok(pending instanceof Promise);
    for (const v of [sync, await pending]) {
      assert.equal(v.allow, true);
      assert.equal(v.policy, 'shop');
      assert.equal(v.rule, 'office');
      assert.deepEqual(v.responseHeaders, [
        { key: 'ratelimit-limit', value: '2' },
        { key: 'ratelimit-remaining', value: '1' },
        { key: 'ratelimit-reset', value: '30' },
      ]);
    }
  });

  it('denies with the rate-limit verdict and keeps shadow denials from both engines', async () => {
    const snap = snapshot({
      shop: FIREWALL_AND_LIMIT,
      trial: `{ shadow: true, firewall: { default: deny }, rateLimits: [{ name: t, limit: 1, per: 1m }] }`,
    });
    const port = new AsyncFakePort();
    const FW_SHADOW = { middlebox: 'firewall', policy: 'trial', rule: 'default', status: 403 };
    const RL_SHADOW = { middlebox: 'ratelimit', policy: 'trial', rule: 't', status: 429 };
    const first = await decide(snap, request(), { rateLimits: port, nat: new MemoryNatTable() }, NOW);
    assert.equal(first.allow, true);
    assert.deepEqual(first.shadowDenials, [FW_SHADOW]);
    const second = await decide(snap, request(), { rateLimits: port, nat: new MemoryNatTable() }, NOW);
    assert.equal(second.allow, true);
    assert.deepEqual(second.shadowDenials, [FW_SHADOW, RL_SHADOW]);
    const third = await decide(snap, request(), { rateLimits: port, nat: new MemoryNatTable() }, NOW);
    assert.deepEqual([third.allow, third.status, third.middlebox, third.policy, third.rule], [false, 429, 'ratelimit', 'shop', 'per-ip']);
    assert.deepEqual(third.shadowDenials, [FW_SHADOW, RL_SHADOW]);
  });
});
