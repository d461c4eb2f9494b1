import assert from 'node:assert/strict';
import { decide } from '../../src/middlebox/pipeline';
import {
  decideNat,
  MAX_FLOW_KEY_CHARS,
  DESTINATION_HEADER,
  NAT_RESPONSE_HEADER,
  requestChanges,
  responseChanges,
  translateUrl,
} from '../../src/middlebox/nat/engine';
import { rendezvous } from '../../src/middlebox/nat/rendezvous';
import type { NatDecision, RequestAttributes, Verdict } from '../../src/middlebox/types';
import type { CompiledNatRule, PolicySnapshot } from '../../src/policy/types';
import type { NatTablePort } from '../../src/state/port';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { snapshot } from '../harness/policy';
import { request } from '../harness/request';

const NOW = 1_700_000_000_000;

const A = '10.0.0.1:8080';
const B = '10.0.0.2:8080';
const C = '10.0.0.3:8080';
const D = '10.0.0.4:8080';
const POOL = [A, B, C, D];
const POOL_YAML = JSON.stringify(POOL);

type Call =
  | { op: 'lookup'; rule: string; flow: string }
  | { op: 'assign'; rule: string; flow: string; backend: string; replacing: string | undefined; now: number }
  | { op: 'touch'; rule: string; flow: string; now: number }
  | { op: 'nextIndex'; rule: string };

/** MemoryNatTable that records every call. */
class SpyTable extends MemoryNatTable {
  readonly calls: Call[] = [];

  override lookup(rule: CompiledNatRule, flow: string): string | undefined {
    this.calls.push({ op: 'lookup', rule: rule.id, flow });
    return super.lookup(rule, flow);
  }

  override assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, now: number): string | Promise<string> {
    this.calls.push({ op: 'assign', rule: rule.id, flow, backend, replacing, now });
    return super.assign(rule, flow, backend, replacing, now);
  }

  override touch(rule: CompiledNatRule, flow: string, now: number): void {
    this.calls.push({ op: 'touch', rule: rule.id, flow, now });
    super.touch(rule, flow, now);
  }

  override nextIndex(ruleId: string): number {
    this.calls.push({ op: 'nextIndex', rule: ruleId });
    return super.nextIndex(ruleId);
  }

  /** Writes a mapping directly, as another replica would have. */
  seed(rule: CompiledNatRule, flow: string, backend: string): void {
    this.flows.set(`${rule.id}\u0000${flow}`, { backend, touchedAt: 0 });
  }

  touchedAt(rule: CompiledNatRule, flow: string): number | undefined {
    return this.flows.get(`${rule.id}\u0000${flow}`)?.touchedAt;
  }

  ops(op: Call['op']): Call[] {
    return this.calls.filter((c) => c.op === op);
  }
}

/** assign answers through a Promise, as the etcd table does for a new flow. */
class AsyncTable extends SpyTable {
  /** What the "shared table" answers instead of the proposed backend, when set. */
  raceWinner: string | undefined;

  override assign(rule: CompiledNatRule, flow: string, backend: string, replacing: string | undefined, now: number): Promise<string> {
    const answer = super.assign(rule, flow, backend, replacing, now) as string;
    return new Promise((resolve) => setImmediate(() => resolve(this.raceWinner ?? answer)));
  }
}

function ruleOf(snap: PolicySnapshot, id: string): CompiledNatRule {
  for (const p of snap.policies) for (const r of p.nat) if (r.id === id) return r;
  throw new Error(`no NAT rule ${id}`);
}

function sync(d: NatDecision | Promise<NatDecision> | undefined): NatDecision {
  assert.ok(d !== undefined, 'a NAT rule should have applied');
  assert.ok(!(d instanceof Promise), 'a synchronous table should give a synchronous decision');
  return d;
}

function keys(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `flow-${i}`);
}

describe('rendezvous', () => {
  it('is deterministic and picks from the pool', () => {
    for (const flow of keys(50)) {
      const first = rendezvous(flow, POOL);
      assert.ok(first !== undefined && POOL.includes(first));
      assert.equal(rendezvous(flow, POOL), first);
      // the order the pool is written in does not matter
      assert.equal(rendezvous(flow, [...POOL].reverse()), first);
    }
  });

  it('gives undefined for an empty pool and the only backend for a pool of one', () => {
    assert.equal(rendezvous('x', []), undefined);
    assert.equal(rendezvous('x', [A]), A);
  });

  it('spreads 1000 flows roughly evenly over every backend', () => {
    const counts = new Map<string, number>(POOL.map((b) => [b, 0]));
    for (const flow of keys(1000)) {
      const b = rendezvous(flow, POOL)!;
      counts.set(b, counts.get(b)! + 1);
    }
    for (const [b, n] of counts) assert.ok(n >= 175 && n <= 325, `${b} got ${n} of 1000 flows (expected about 250)`);
  });

  it('moves only the flows of a removed backend', () => {
    const before = new Map(keys(1000).map((f) => [f, rendezvous(f, POOL)!]));
    const without = POOL.filter((b) => b !== B);
    let moved = 0;
    for (const [flow, was] of before) {
      const now = rendezvous(flow, without)!;
      if (was === B) {
        moved++;
        assert.notEqual(now, B);
      } else {
        assert.equal(now, was, `${flow} moved from ${was} to ${now} though its backend stayed`);
      }
    }
    assert.ok(moved > 0);
    // the removed backend's flows spread over all the others
    const targets = new Set([...before].filter(([, was]) => was === B).map(([f]) => rendezvous(f, without)));
    assert.equal(targets.size, 3);
  });

  it('moves flows only to an added backend', () => {
    const before = new Map(keys(1000).map((f) => [f, rendezvous(f, POOL)!]));
    const E = '10.0.0.5:8080';
    const grown = [...POOL, E];
    let moved = 0;
    for (const [flow, was] of before) {
      const now = rendezvous(flow, grown)!;
      if (now !== was) {
        moved++;
        assert.equal(now, E, `${flow} moved from ${was} to ${now}, not to the new backend`);
      }
    }
    // about a fifth of the flows
    assert.ok(moved >= 120 && moved <= 280, `${moved} flows moved to the new backend`);
  });
});

describe('decideNat', () => {
  describe('rule selection', () => {
    it('returns undefined when no rule matches, and without NAT rules at all', () => {
      const snap = snapshot({ vip: `{ nat: [{ name: web, match: { hosts: [vip.local] }, to: ${POOL_YAML} }] }` });
      const table = new SpyTable();
      assert.equal(decideNat(snap, request({ host: 'other.local' }), table, NOW), undefined);
      assert.equal(decideNat(snapshot({ fw: '{ firewall: {} }' }), request(), table, NOW), undefined);
      assert.deepEqual(table.calls, [], 'an unmatched request does not touch the table');
    });

    it('uses the first matching rule in rule order', () => {
      const snap = snapshot({
        vip: `{ nat: [
          { name: api, match: { hosts: [vip.local], paths: ["/api/*"] }, to: ["${A}"] },
          { name: all, match: { hosts: [vip.local] }, to: ["${B}"] },
          { name: later, match: { hosts: [vip.local] }, to: ["${C}"] } ] }`,
      });
      const table = new MemoryNatTable();
      const api = sync(decideNat(snap, request({ host: 'vip.local', path: '/api/x' }), table, NOW));
      assert.deepEqual([api.policy, api.rule, api.backend], ['vip', 'api', A]);
      const other = sync(decideNat(snap, request({ host: 'vip.local', path: '/web' }), table, NOW));
      assert.deepEqual([other.policy, other.rule, other.backend], ['vip', 'all', B]);
    });

    it('uses policies in name order, whatever order they are given in', () => {
      const snap = snapshot({
        zeta: `{ nat: [{ name: z, to: ["${A}"] }] }`,
        alpha: `{ nat: [{ name: a, match: { ports: [9999] }, to: ["${B}"] }] }`,
        mid: `{ nat: [{ name: m, to: ["${C}"] }] }`,
      });
      const table = new MemoryNatTable();
      const d = sync(decideNat(snap, request(), table, NOW));
      assert.deepEqual([d.policy, d.rule, d.backend], ['mid', 'm', C], 'alpha does not match port 8080; mid comes before zeta');
      const onPort = sync(decideNat(snap, request({ port: 9999 }), table, NOW));
      assert.deepEqual([onPort.policy, onPort.rule, onPort.backend], ['alpha', 'a', B]);
    });

    it('respects the policy selector', () => {
      const snap = snapshot({
        a: `{ selector: { hosts: [shop.local] }, nat: [{ name: shop, to: ["${A}"] }] }`,
        b: `{ nat: [{ name: rest, to: ["${B}"] }] }`,
      });
      const table = new MemoryNatTable();
      assert.equal(sync(decideNat(snap, request({ host: 'shop.local' }), table, NOW)).backend, A);
      const d = sync(decideNat(snap, request({ host: 'else.local' }), table, NOW));
      assert.deepEqual([d.policy, d.backend], ['b', B]);
    });

    it('respects match hosts, ports and paths', () => {
      const snap = snapshot({
        vip: `{ nat: [{ name: web, match: { hosts: ["*.vip.local"], ports: [80], paths: ["/app/*"] }, to: ["${A}"] }] }`,
      });
      const table = new MemoryNatTable();
      const ok = request({ host: 'a.vip.local', port: 80, path: '/app/x' });
      assert.equal(sync(decideNat(snap, ok, table, NOW)).backend, A);
      assert.equal(decideNat(snap, request({ host: 'vip.local', port: 80, path: '/app/x' }), table, NOW), undefined);
      assert.equal(decideNat(snap, request({ host: 'a.vip.local', port: 81, path: '/app/x' }), table, NOW), undefined);
      assert.equal(decideNat(snap, request({ host: 'a.vip.local', port: 80, path: '/other' }), table, NOW), undefined);
    });

    it('carries rewriteHost and sourceAs into the decision', () => {
      const snap = snapshot({
        vip: `{ nat: [{ name: web, to: ["${A}"], rewriteHost: true, sourceAs: 192.0.2.10 }] }`,
      });
      assert.deepEqual(sync(decideNat(snap, request(), new MemoryNatTable(), NOW)), {
        policy: 'vip',
        rule: 'web',
        backend: A,
        flow: undefined,
        rewriteHost: true,
        sourceAs: '192.0.2.10',
      });
    });
  });

  describe('affinity none', () => {
    const snap = snapshot({ vip: `{ nat: [{ name: rr, to: ${POOL_YAML}, affinity: none }] }` });

    it('goes round robin over the pool without recording flows', () => {
      const table = new SpyTable();
      const got = Array.from({ length: 8 }, () => sync(decideNat(snap, request(), table, NOW)));
      assert.deepEqual(got.map((d) => d.backend), [...POOL, ...POOL]);
      assert.ok(got.every((d) => d.flow === undefined));
      assert.equal(table.ops('assign').length, 0);
      assert.equal(table.ops('lookup').length, 0);
      assert.equal(table.ops('nextIndex').length, 8);
      assert.ok(table.ops('nextIndex').every((c) => c.rule === 'vip/rr'));
    });

    it('skips drained backends', () => {
      const table = new MemoryNatTable();
      table.drain(B);
      table.drain(D);
      const got = Array.from({ length: 6 }, () => sync(decideNat(snap, request(), table, NOW)).backend);
      assert.deepEqual(got, [A, C, A, C, A, C]);
    });

    it('uses the whole pool when every backend is drained', () => {
      const table = new MemoryNatTable();
      for (const b of POOL) table.drain(b);
      const got = Array.from({ length: 4 }, () => sync(decideNat(snap, request(), table, NOW)).backend);
      assert.deepEqual(got, POOL);
    });
  });

  it('keys a flow by the digest of a header value longer than MAX_FLOW_KEY_CHARS, by the value otherwise', () => {
    const snap = snapshot({ vip: `{ nat: [{ name: web, match: { hosts: [vip.local] }, to: ${POOL_YAML}, affinity: "header:X-User" }] }` });
    const long = 'u'.repeat(MAX_FLOW_KEY_CHARS + 1);
    const flows = [long, long, 'u'.repeat(MAX_FLOW_KEY_CHARS)].map((v) => sync(decideNat(snap, request({ host: 'vip.local', headers: { 'x-user': v } }), new SpyTable(), NOW)).flow!);
    assert.match(flows[0]!, /^sha256:[A-Za-z0-9_-]{43}$/);
    assert.equal(flows[1], flows[0], 'the same value, the same flow');
    assert.equal(flows[2], 'u'.repeat(MAX_FLOW_KEY_CHARS));
    // A client sending another flow's digest as its value gets a key of its own.
    const forged = sync(decideNat(snap, request({ host: 'vip.local', headers: { 'x-user': flows[0]! } }), new SpyTable(), NOW)).flow!;
    assert.match(forged, /^sha256:/);
    assert.notEqual(forged, flows[0]);
  });

  for (const [affinity, flowOf] of [
    ['sourceIp', (i: number) => request({ host: 'vip.local', from: `192.0.2.${i}` })],
    ['"header:X-User"', (i: number) => request({ host: 'vip.local', headers: { 'x-user': `user-${i}` } })],
  ] as Array<[string, (i: number) => RequestAttributes]>) {
    describe(`affinity ${affinity}`, () => {
      const snap = snapshot({ vip: `{ nat: [{ name: web, match: { hosts: [vip.local] }, to: ${POOL_YAML}, affinity: ${affinity} }] }` });
      const rule = ruleOf(snap, 'vip/web');
      const keyOf = (req: RequestAttributes) =>
        rule.affinity.kind === 'sourceIp' ? req.source.ip!.text : req.headers.get('x-user')!;

      it('sends a flow to its rendezvous backend, records it, and keeps it there', () => {
        const table = new SpyTable();
        const seen = new Set<string>();
        for (let i = 1; i <= 40; i++) {
          const req = flowOf(i);
          const flow = keyOf(req);
          const first = sync(decideNat(snap, req, table, NOW));
          assert.equal(first.flow, flow);
          assert.equal(first.backend, rendezvous(flow, POOL));
          assert.equal(table.lookup(rule, flow), first.backend, 'recorded in the table');
          for (let j = 1; j <= 3; j++) {
            assert.equal(sync(decideNat(snap, req, table, NOW + j)).backend, first.backend);
          }
          seen.add(first.backend);
        }
        assert.equal(seen.size, POOL.length, 'forty flows use every backend');
        const assigns = table.ops('assign') as Array<Extract<Call, { op: 'assign' }>>;
        assert.equal(assigns.length, 40, 'one assign per new flow');
        assert.ok(assigns.every((c) => c.replacing === undefined && c.now === NOW && c.rule === 'vip/web'));
        assert.equal(table.ops('touch').length, 120, 'later requests touch the mapping');
        assert.equal(table.ops('nextIndex').length, 0);
      });

      it('keeps the flow on its mapped backend when another backend drains', () => {
        const req = flowOf(7);
        const table = new MemoryNatTable();
        const first = sync(decideNat(snap, req, table, NOW)).backend;
        const other = POOL.find((b) => b !== first)!;
        table.drain(other);
        assert.equal(sync(decideNat(snap, req, table, NOW + 1)).backend, first);
      });

      it('keeps mapped flows where they are when the pool grows', () => {
        const E = '10.0.0.5:8080';
        const grown = snapshot({
          vip: `{ nat: [{ name: web, match: { hosts: [vip.local] }, to: ${JSON.stringify([...POOL, E])}, affinity: ${affinity} }] }`,
        });
        const table = new MemoryNatTable();
        // a flow that rendezvous would send to the new backend once it is in the pool
        let i = 1;
        while (rendezvous(keyOf(flowOf(i)), [...POOL, E]) !== E) i++;
        const req = flowOf(i);
        const before = sync(decideNat(snap, req, table, NOW)).backend;
        assert.notEqual(before, E);
        assert.equal(sync(decideNat(grown, req, table, NOW + 1)).backend, before, 'the recorded mapping wins');
        // a flow the table has never seen goes by rendezvous over the grown pool
        let j = i + 1;
        while (rendezvous(keyOf(flowOf(j)), [...POOL, E]) !== E) j++;
        assert.equal(sync(decideNat(grown, flowOf(j), table, NOW + 1)).backend, E);
      });

      it('obeys an existing mapping over rendezvous and touches it', () => {
        const req = flowOf(3);
        const flow = keyOf(req);
        const elsewhere = POOL.find((b) => b !== rendezvous(flow, POOL))!;
        const table = new SpyTable();
        table.seed(rule, flow, elsewhere);
        const d = sync(decideNat(snap, req, table, NOW + 5));
        assert.equal(d.backend, elsewhere);
        assert.equal(table.ops('assign').length, 0);
        assert.deepEqual(table.ops('touch'), [{ op: 'touch', rule: 'vip/web', flow, now: NOW + 5 }]);
        assert.equal(table.touchedAt(rule, flow), NOW + 5);
      });

      it('replaces a mapping to a backend that left the pool', () => {
        const req = flowOf(4);
        const flow = keyOf(req);
        const table = new SpyTable();
        table.seed(rule, flow, '10.9.9.9:8080');
        const d = sync(decideNat(snap, req, table, NOW));
        assert.equal(d.backend, rendezvous(flow, POOL));
        assert.deepEqual(table.ops('assign'), [
          { op: 'assign', rule: 'vip/web', flow, backend: d.backend, replacing: '10.9.9.9:8080', now: NOW },
        ]);
        assert.equal(table.lookup(rule, flow), d.backend);
      });

      it('replaces a mapping to a drained backend, and sends new flows around drained ones', () => {
        const req = flowOf(5);
        const flow = keyOf(req);
        const table = new SpyTable();
        const before = sync(decideNat(snap, req, table, NOW)).backend;
        table.drain(before);
        const after = sync(decideNat(snap, req, table, NOW + 1));
        assert.notEqual(after.backend, before);
        assert.equal(after.backend, rendezvous(flow, POOL.filter((b) => b !== before)));
        const assigns = table.ops('assign') as Array<Extract<Call, { op: 'assign' }>>;
        assert.equal(assigns.length, 2);
        assert.equal(assigns[1]!.replacing, before);
        assert.equal(table.lookup(rule, flow), after.backend);
        // no new flow lands on the drained backend
        for (let i = 100; i < 160; i++) assert.notEqual(sync(decideNat(snap, flowOf(i), table, NOW)).backend, before);
      });

      it('uses the whole pool when every backend is drained, and keeps existing mappings then', () => {
        const table = new MemoryNatTable();
        const mapped = sync(decideNat(snap, flowOf(9), table, NOW)).backend;
        for (const b of POOL) table.drain(b);
        for (let i = 10; i < 30; i++) {
          const req = flowOf(i);
          assert.equal(sync(decideNat(snap, req, table, NOW)).backend, rendezvous(keyOf(req), POOL));
        }
        assert.equal(sync(decideNat(snap, flowOf(9), table, NOW)).backend, mapped);
      });

      it('falls back to round robin when the request lacks the key', () => {
        const req = rule.affinity.kind === 'sourceIp'
          ? request({ host: 'vip.local', from: null })
          : request({ host: 'vip.local', headers: {} });
        const table = new SpyTable();
        const got = Array.from({ length: 4 }, () => sync(decideNat(snap, req, table, NOW)));
        assert.deepEqual(got.map((d) => d.backend), POOL);
        assert.ok(got.every((d) => d.flow === undefined));
        assert.equal(table.ops('assign').length, 0);
        assert.equal(table.ops('nextIndex').length, 4);
      });
    });
  }

  it('treats an empty affinity header as missing', () => {
    const snap = snapshot({ vip: `{ nat: [{ name: web, to: ${POOL_YAML}, affinity: "header:x-user" }] }` });
    const table = new SpyTable();
    const d = sync(decideNat(snap, request({ headers: { 'x-user': '' } }), table, NOW));
    assert.equal(d.flow, undefined);
    assert.equal(table.ops('assign').length, 0);
  });

  describe('with an asynchronous table', () => {
    const snap = snapshot({ vip: `{ nat: [{ name: web, to: ${POOL_YAML}, affinity: sourceIp }] }` });
    const rule = ruleOf(snap, 'vip/web');

    it('returns a Promise for a new flow and a plain decision once it is known', async () => {
      const table = new AsyncTable();
      const pending = decideNat(snap, request({ from: '192.0.2.77' }), table, NOW);
      assert.ok(pending instanceof Promise);
      const d = await pending;
      assert.equal(d.backend, rendezvous('192.0.2.77', POOL));
      assert.equal(d.flow, '192.0.2.77');
      assert.equal(sync(decideNat(snap, request({ from: '192.0.2.77' }), table, NOW)).backend, d.backend);
    });

    it('follows the mapping the shared table answers with when a replica raced it', async () => {
      const table = new AsyncTable();
      const flow = '192.0.2.78';
      const winner = POOL.find((b) => b !== rendezvous(flow, POOL))!;
      table.raceWinner = winner;
      assert.equal((await decideNat(snap, request({ from: flow }), table, NOW))!.backend, winner);
    });

    it('ignores an answer naming a backend outside the pool', async () => {
      const table = new AsyncTable();
      table.raceWinner = '10.9.9.9:8080';
      const d = await decideNat(snap, request({ from: '192.0.2.79' }), table, NOW);
      assert.equal(d!.backend, rendezvous('192.0.2.79', POOL));
      assert.ok(rule.backends.includes(d!.backend));
    });

    it('stays synchronous for round robin', () => {
      const rr = snapshot({ vip: `{ nat: [{ name: rr, to: ${POOL_YAML} }] }` });
      sync(decideNat(rr, request(), new AsyncTable(), NOW));
    });
  });
});

describe('requestChanges', () => {
  const base: NatDecision = { policy: 'vip', rule: 'web', backend: A, rewriteHost: false };

  it('always writes the destination header, and nothing more by default', () => {
    assert.deepEqual(requestChanges(base, request()), {
      set: [{ key: DESTINATION_HEADER, value: A }],
      remove: [],
      clearRouteCache: false,
    });
    assert.equal(DESTINATION_HEADER, 'x-envoy-original-dst-host');
  });

  it('overwrites a destination the client wrote', () => {
    const changes = requestChanges(base, request({ headers: { [DESTINATION_HEADER]: '169.254.169.254:80' } }));
    assert.deepEqual(changes.set, [{ key: DESTINATION_HEADER, value: A }]);
    assert.deepEqual(changes.remove, []);
  });

  it('rewrites :authority only with rewriteHost, and then asks for the route to be picked again', () => {
    const changes = requestChanges({ ...base, rewriteHost: true }, request());
    assert.deepEqual(changes.set, [
      { key: DESTINATION_HEADER, value: A },
      { key: ':authority', value: A },
    ]);
    assert.equal(changes.clearRouteCache, true);
    assert.ok(!requestChanges(base, request()).set.some((h) => h.key === ':authority'));
  });

  it('hides the source behind sourceAs', () => {
    const changes = requestChanges({ ...base, sourceAs: '192.0.2.10' }, request({ headers: { 'x-forwarded-for': '198.51.100.7' } }));
    assert.deepEqual(changes.set, [
      { key: DESTINATION_HEADER, value: A },
      { key: 'x-forwarded-for', value: '192.0.2.10' },
      { key: 'x-real-ip', value: '192.0.2.10' },
    ]);
    assert.equal(changes.clearRouteCache, false);
  });

  it('without a NAT decision removes a client-supplied destination and changes nothing else', () => {
    assert.deepEqual(requestChanges(undefined, request({ headers: { [DESTINATION_HEADER]: '169.254.169.254:80', 'x-forwarded-for': '1.2.3.4' } })), {
      set: [],
      remove: [DESTINATION_HEADER],
      clearRouteCache: false,
    });
    assert.deepEqual(requestChanges(undefined, request()), { set: [], remove: [], clearRouteCache: false });
  });
});

describe('responseChanges and translateUrl', () => {
  const nat = (backend: string): NatDecision => ({ policy: 'vip', rule: 'web', backend, rewriteHost: false });

  it('translates URLs naming the backend to the virtual host, keeping path, query and fragment', () => {
    const cases: Array<[string, string, string]> = [
      ['http://10.0.0.1:8080/a/b?x=1&y=2#frag', A, 'http://vip.local/a/b?x=1&y=2#frag'],
      ['https://10.0.0.1:8080/a', A, 'https://vip.local/a'],
      ['http://10.0.0.1:8080', A, 'http://vip.local'],
      ['http://10.0.0.1:8080?q', A, 'http://vip.local?q'],
      ['http://10.0.0.1:8080#f', A, 'http://vip.local#f'],
      ['HTTP://10.0.0.1:8080/x', A, 'HTTP://vip.local/x'],
      // default ports, written or not
      ['http://10.0.0.1/x', '10.0.0.1:80', 'http://vip.local/x'],
      ['http://10.0.0.1:80/x', '10.0.0.1:80', 'http://vip.local/x'],
      ['https://10.0.0.1/x', '10.0.0.1:443', 'https://vip.local/x'],
      ['https://10.0.0.1:443/x', '10.0.0.1:443', 'https://vip.local/x'],
      // IPv6
      ['http://[::1]:8080/x?y#z', '[::1]:8080', 'http://vip.local/x?y#z'],
      ['https://[::1]/x', '[::1]:443', 'https://vip.local/x'],
      ['http://[::1]/x', '[::1]:80', 'http://vip.local/x'],
    ];
    for (const [url, backend, want] of cases) assert.equal(translateUrl(url, backend, 'vip.local'), want, `${url} via ${backend}`);
    assert.equal(translateUrl('http://10.0.0.1:8080/x', A, 'vip.local:8443'), 'http://vip.local:8443/x');
  });

  it('leaves URLs that point elsewhere, or are relative, alone', () => {
    const cases: Array<[string, string]> = [
      ['http://10.0.0.2:8080/x', A],
      ['http://10.0.0.1:8081/x', A],
      ['http://10.0.0.1/x', A], // port 80 is not 8080
      ['http://10.0.0.1:8080.evil.com/x', A],
      ['http://10.0.0.10:8080/x', A],
      ['https://10.0.0.1/x', '10.0.0.1:80'], // https's default is 443
      ['http://10.0.0.1/x', '10.0.0.1:443'],
      ['http://[::1]:8081/x', '[::1]:8080'],
      ['http://[::2]:8080/x', '[::1]:8080'],
      ['http://::1:8080/x', '[::1]:8080'],
      ['/relative/path?x', A],
      ['relative', A],
      ['ftp://10.0.0.1:8080/x', A],
      ['http://shop.example.com/x', A],
    ];
    for (const [url, backend] of cases) assert.equal(translateUrl(url, backend, 'vip.local'), url, `${url} via ${backend}`);
  });

  it('translates location and content-location and names the rule in x-middlebox-nat', () => {
    const headers = new Map([
      ['location', 'http://10.0.0.1:8080/next?x=1'],
      ['content-location', 'https://10.0.0.1:8080/doc#top'],
      ['link', '<http://10.0.0.1:8080/x>'],
    ]);
    assert.deepEqual(responseChanges(nat(A), 'vip.local', headers), [
      { key: NAT_RESPONSE_HEADER, value: 'vip/web' },
      { key: 'location', value: 'http://vip.local/next?x=1' },
      { key: 'content-location', value: 'https://vip.local/doc#top' },
    ]);
    assert.equal(NAT_RESPONSE_HEADER, 'x-middlebox-nat');
  });

  it('only names the rule when nothing points at the backend', () => {
    const headers = new Map([
      ['location', '/relative'],
      ['content-location', 'http://elsewhere.local/x'],
    ]);
    assert.deepEqual(responseChanges(nat(A), 'vip.local', headers), [{ key: NAT_RESPONSE_HEADER, value: 'vip/web' }]);
    assert.deepEqual(responseChanges(nat(A), 'vip.local', new Map()), [{ key: NAT_RESPONSE_HEADER, value: 'vip/web' }]);
  });
});

describe('decide with NAT', () => {
  const POLICY = `{
    firewall: { rules: [{ name: no-admin, action: deny, paths: ["/admin/*"] }] },
    rateLimits: [{ name: slow, match: { paths: ["/slow/*"] }, limit: 1, per: 1m, by: [sourceIp], algorithm: fixed-window }],
    nat: [{ name: web, match: { hosts: [vip.local] }, to: ${POOL_YAML}, affinity: sourceIp }] }`;
  const snap = snapshot({ vip: POLICY });
  const ports = (nat: NatTablePort) => ({ rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat });

  it('translates an allowed request only when asked to', async () => {
    const table = new SpyTable();
    const p = ports(table);
    const without = (await decide(snap, request({ host: 'vip.local' }), p, NOW)) as Verdict;
    assert.equal(without.allow, true);
    assert.equal(without.nat, undefined);
    const withFalse = (await decide(snap, request({ host: 'vip.local' }), p, NOW, { nat: false })) as Verdict;
    assert.equal(withFalse.nat, undefined);
    assert.deepEqual(table.calls, [], 'the NAT table is not consulted');

    const v = await decide(snap, request({ host: 'vip.local' }), p, NOW, { nat: true });
    assert.equal(v.allow, true);
    assert.deepEqual(v.nat, {
      policy: 'vip',
      rule: 'web',
      backend: rendezvous('198.51.100.7', POOL),
      flow: '198.51.100.7',
      rewriteHost: false,
      sourceAs: undefined,
    });
  });

  it('leaves nat unset when no NAT rule matches', async () => {
    const v = await decide(snap, request({ host: 'other.local' }), ports(new SpyTable()), NOW, { nat: true });
    assert.equal(v.allow, true);
    assert.equal(v.nat, undefined);
  });

  it('never translates a request the firewall denies', async () => {
    const table = new SpyTable();
    const v = await decide(snap, request({ host: 'vip.local', path: '/admin/x' }), ports(table), NOW, { nat: true });
    assert.deepEqual([v.allow, v.status, v.middlebox, v.rule, v.nat], [false, 403, 'firewall', 'no-admin', undefined]);
    assert.deepEqual(table.calls, []);
  });

  it('never translates a request a rate limit denies, but translates the allowed one before it', async () => {
    const table = new SpyTable();
    const p = ports(table);
    const first = await decide(snap, request({ host: 'vip.local', path: '/slow/x' }), p, NOW, { nat: true });
    assert.equal(first.allow, true);
    assert.ok(first.nat);
    const callsBefore = table.calls.length;
    const second = await decide(snap, request({ host: 'vip.local', path: '/slow/x' }), p, NOW + 1, { nat: true });
    assert.deepEqual([second.allow, second.status, second.middlebox, second.nat], [false, 429, 'ratelimit', undefined]);
    assert.equal(table.calls.length, callsBefore, 'a denied request does not touch the NAT table');
  });

  it('answers through a Promise when a new flow asks an asynchronous table, keeping the verdict', async () => {
    const pending = decide(snap, request({ host: 'vip.local', from: '192.0.2.200' }), ports(new AsyncTable()), NOW, { nat: true });
    assert.ok(pending instanceof Promise);
    const v = await pending;
    assert.equal(v.allow, true);
    assert.equal(v.reason, 'allowed');
    assert.equal(v.nat?.backend, rendezvous('192.0.2.200', POOL));
  });
});
