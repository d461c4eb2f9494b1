// The bounds on one input: policy size, rules per policy, distinct rate-limit keys per rule, header
// bytes examined. Each is exceeded here with a small setting, and what happens is checked: a
// located error, a refusal, or a counted drop. (gRPC message size is gRPC's: see serve-lifecycle.)
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_TRANSLATION_LIMITS, translateCheckRequest } from '../../src/grpc/authz/request';
import { AuthorizationService } from '../../src/grpc/authz/service';
import { ATTRIBUTES_KEY, translateRequestHeaders } from '../../src/grpc/extproc/request';
import type { ProcessingRequest } from '../../src/grpc/envoy-types';
import { sumMetric, parseMetrics } from '../../src/lab/middlebox';
import { stateLifetimeMs } from '../../src/middlebox/ratelimit/algorithms';
import { decideRateLimit } from '../../src/middlebox/ratelimit/engine';
import type { Verdict } from '../../src/middlebox/types';
import type { Logger } from '../../src/observability/logger';
import { silentLogger } from '../../src/observability/logger';
import { MiddleboxMetrics } from '../../src/observability/metrics';
import { DEFAULT_POLICY_LIMITS, type PolicyLimits } from '../../src/policy/limits';
import { formatPolicyError, parsePolicies, parsePolicyFile } from '../../src/policy/parse';
import type { PolicySnapshot } from '../../src/policy/types';
import { BOUNDS } from '../../src/settings';
import { intOpt, UsageError } from '../../src/cli/command';
import { boundOpt } from '../../src/cli/policy';
import { sameAddress } from '../../src/cli/serve';
import { DecisionLog } from '../../src/observability/decision-log';
import { readPolicyState, readStored } from '../../src/state/etcd/policies';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { StaticPolicySource, type RateLimitGrant, type RateLimitPort, type RateLimitRequest } from '../../src/state/port';
import { KeyCappedRateLimits, OVERFLOW_KEY } from '../../src/state/ratelimit/key-cap';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { httpCheck } from '../harness/check';
import { captureLogger } from '../harness/log';
import { snapshot } from '../harness/policy';
import { request } from '../harness/request';

const HEADER = 'apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: shop }\n';

function limits(over: Partial<PolicyLimits>): PolicyLimits {
  return { ...DEFAULT_POLICY_LIMITS, ...over };
}

/** A policy with `n` firewall rules, one a line from line 8 on. */
function firewallRules(n: number): string {
  const rules = Array.from({ length: n }, (_, i) => `      - { name: r${i}, action: deny, paths: ["/p${i}"] }\n`).join('');
  return `${HEADER}spec:\n  firewall:\n    default: allow\n    rules:\n${rules}`;
}

describe('bounds', () => {
  describe('policy size (maxPolicyBytes)', () => {
    it('refuses a text over the limit at 1:1, naming the limit and the setting, without parsing it', () => {
      const text = `${firewallRules(40)}`;
      const size = Buffer.byteLength(text);
      assert.ok(size > 2048);
      const { documents, errors } = parsePolicies(text, 'big.yaml', limits({ maxPolicyBytes: 2048 }));
      assert.deepEqual(documents, []);
      assert.equal(errors.length, 1);
      assert.equal(
        formatPolicyError(errors[0]!),
        `big.yaml:1:1: too large: ${size} bytes, more than 2048 (--max-policy-bytes, env MIDDLEBOX_MAX_POLICY_BYTES); split it into smaller policies`,
      );
      // Not even a YAML error past the size: the text is not parsed.
      assert.equal(parsePolicies(`${'x'.repeat(3000)}: [`, 'junk.yaml', limits({ maxPolicyBytes: 2048 })).errors.length, 1);
    });

    it('counts bytes, not characters', () => {
      const text = `${HEADER}spec: { firewall: { rules: [ { name: r, action: deny, paths: ["/${'é'.repeat(600)}"] } ] } }\n`;
      assert.ok(text.length < 1024 && Buffer.byteLength(text) > 1024);
      const { errors } = parsePolicies(text, 'utf8.yaml', limits({ maxPolicyBytes: 1024 }));
      assert.match(errors[0]!.message, /^too large: \d+ bytes, more than 1024 /);
    });

    it('accepts a text at the limit', () => {
      const text = firewallRules(3);
      const { documents, errors } = parsePolicies(text, 'ok.yaml', limits({ maxPolicyBytes: Buffer.byteLength(text) }));
      assert.deepEqual(errors, []);
      assert.equal(documents.length, 1);
    });

    it('refuses a policy whose stored form (aliases expanded) is over the limit, at its first line', () => {
      const cidrs = Array.from({ length: 20 }, (_, i) => `"10.0.${i}.0/24"`).join(', ');
      const rules = Array.from({ length: 20 }, (_, i) => `      - { name: r${i}, action: deny, from: *nets }\n`).join('');
      const text = `# small text, big policy\n${HEADER}spec:\n  selector: { hosts: &unused ["x.local"] }\n  firewall:\n    default: allow\n    rules:\n      - { name: first, action: deny, from: &nets [${cidrs}] }\n${rules}`;
      const lim = limits({ maxPolicyBytes: 4096 });
      assert.ok(Buffer.byteLength(text) <= 4096, `the text is ${Buffer.byteLength(text)} bytes`);
      const { documents, errors } = parsePolicies(text, 'aliases.yaml', lim);
      assert.deepEqual(documents, []);
      assert.equal(errors.length, 1, errors.map(formatPolicyError).join('\n'));
      assert.equal(errors[0]!.line, 2);
      assert.match(formatPolicyError(errors[0]!), /^aliases\.yaml:2:1: policy "shop" is \d+ bytes as stored in etcd \(JSON, aliases expanded\), more than 4096 \(--max-policy-bytes, env MIDDLEBOX_MAX_POLICY_BYTES\)/);
      // The other policies of the file are not affected.
      const two = parsePolicies(`${text}---\n${firewallRules(1).replace('name: shop', 'name: other')}`, 'aliases.yaml', lim);
      assert.deepEqual(two.documents.map((d) => d.metadata.name), ['other']);
    });

    it('refuses a file over the limit without reading it', () => {
      const dir = mkdtempSync(join(tmpdir(), 'mb-bounds-'));
      try {
        const file = join(dir, 'big.yaml');
        writeFileSync(file, firewallRules(100));
        const { documents, errors } = parsePolicyFile(file, limits({ maxPolicyBytes: 1024 }));
        assert.deepEqual(documents, []);
        assert.match(formatPolicyError(errors[0]!), new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:1:1: too large: \\d+ bytes, more than 1024 `));
        assert.deepEqual(parsePolicyFile(file).errors, [], 'within the default');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('a replica refuses a stored policy over the limit like any invalid one (etcd and the state file)', () => {
      const doc = parsePolicies(firewallRules(30), 'p.yaml').documents[0]!;
      const stored = JSON.stringify(doc);
      assert.ok(Buffer.byteLength(stored) > 1024);
      const small = limits({ maxPolicyBytes: 1024 });
      const refused = readStored('/middlebox/policies/shop', 'shop', stored, undefined, small);
      assert.equal(refused.document, undefined);
      assert.match(refused.errors.map(formatPolicyError).join('\n'), /^etcd:\/middlebox\/policies\/shop:1:1: too large: \d+ bytes, more than 1024 \(--max-policy-bytes/);
      assert.ok(readStored('/middlebox/policies/shop', 'shop', stored).document, 'within the default');
      const state = { version: 1, revision: '7', savedAt: '', policies: [doc] };
      assert.ok('error' in readPolicyState(state, 'policies.json', small));
      assert.ok('documents' in readPolicyState(state, 'policies.json'));
    });
  });

  describe('rules per policy (maxRulesPerPolicy)', () => {
    const two = limits({ maxRulesPerPolicy: 2 });

    it('refuses the first firewall rule past the limit, where it is written', () => {
      const { documents, errors } = parsePolicies(firewallRules(5), 'rules.yaml', two);
      assert.deepEqual(documents, []);
      assert.deepEqual(errors.map(formatPolicyError), [
        'rules.yaml:10:9: spec.firewall.rules[2]: more than 2 firewall rules in one policy (5 given; --max-rules-per-policy, env MIDDLEBOX_MAX_RULES_PER_POLICY); split them over several policies',
      ]);
    });

    it('counts rate limits and NAT rules per list', () => {
      const limitsText = `${HEADER}spec:\n  rateLimits:\n    - { name: a, limit: 1, per: 1s }\n    - { name: b, limit: 1, per: 1s }\n    - { name: c, limit: 1, per: 1s }\n`;
      assert.deepEqual(parsePolicies(limitsText, 'rl.yaml', two).errors.map(formatPolicyError), [
        'rl.yaml:8:7: spec.rateLimits[2]: more than 2 rate limits in one policy (3 given; --max-rules-per-policy, env MIDDLEBOX_MAX_RULES_PER_POLICY); split them over several policies',
      ]);
      const natText = `${HEADER}spec:\n  nat:\n${['a', 'b', 'c'].map((n) => `    - { name: ${n}, to: ["10.0.0.1:80"] }\n`).join('')}`;
      assert.match(formatPolicyError(parsePolicies(natText, 'nat.yaml', two).errors[0]!), /^nat\.yaml:8:7: spec\.nat\[2\]: more than 2 NAT rules in one policy/);
      // Two of each kind in one policy: each list is within the limit.
      const mixed = `${HEADER}spec:\n  firewall: { rules: [ { name: a, action: deny }, { name: b, action: deny } ] }\n  rateLimits: [ { name: a, limit: 1, per: 1s }, { name: b, limit: 1, per: 1s } ]\n  nat: [ { name: a, to: ["10.0.0.1:80"] }, { name: b, to: ["10.0.0.1:80"] } ]\n`;
      assert.deepEqual(parsePolicies(mixed, 'mixed.yaml', two).errors, []);
    });

    it('does not read the entries past the limit', () => {
      const text = `${firewallRules(2)}      - { name: r9, action: nonsense }\n      - { name: r10, action: deny, from: ["300.0.0.0/8"] }\n`;
      assert.equal(parsePolicies(text, 'rules.yaml', two).errors.length, 1);
      assert.equal(parsePolicies(text, 'rules.yaml').errors.length, 2, 'within the default, both are read and refused');
    });

    it('defaults to 1000', () => {
      assert.equal(DEFAULT_POLICY_LIMITS.maxRulesPerPolicy, 1000);
      assert.deepEqual(parsePolicies(firewallRules(1000), 'ok.yaml').errors, []);
      const { errors } = parsePolicies(firewallRules(1001), 'big.yaml');
      assert.deepEqual(errors.map((e) => [e.line, e.path]), [[1008, 'spec.firewall.rules[1000]']]);
    });
  });

  describe('listen addresses that must differ', () => {
    it('the same host:port, or unix path, is one address; port 0 is a new free port each time', () => {
      assert.equal(sameAddress('127.0.0.1:9001', '127.0.0.1:9001'), true);
      assert.equal(sameAddress('unix:/run/mb.sock', 'unix:/run/mb.sock'), true);
      assert.equal(sameAddress('127.0.0.1:0', '127.0.0.1:0'), false);
      assert.equal(sameAddress('127.0.0.1:9001', '127.0.0.1:9002'), false);
    });
  });

  describe('settings from the environment', () => {
    it('reads a whole number in range, after the flag and before the default; refuses anything else with one line', () => {
      const s = BOUNDS.maxPolicyBytes;
      assert.equal(boundOpt({}, s, 7777, {}), 7777);
      assert.equal(boundOpt({}, s, 7777, { [s.env]: '' }), 7777);
      assert.equal(boundOpt({}, s, 7777, { [s.env]: '4096' }), 4096);
      assert.equal(boundOpt({ [s.flag]: '2048' }, s, 7777, { [s.env]: '4096' }), 2048, 'the flag wins');
      assert.throws(() => boundOpt({}, s, 7777, { [s.env]: '1e3' }), (e: Error) => e instanceof UsageError && /MIDDLEBOX_MAX_POLICY_BYTES must be a whole number from 1024 to \d+, got "1e3"/.test(e.message));
      assert.throws(() => boundOpt({}, s, 7777, { [s.env]: 'lots' }), /got "lots"/);
      assert.equal(intOpt({ n: String(Number.MAX_SAFE_INTEGER) }, 'n'), Number.MAX_SAFE_INTEGER, 'the largest whole number the messages offer');
      assert.throws(() => intOpt({ n: '9007199254740993' }, 'n'), /--n must be a whole number/);
      // Decimal digits only: what Number() would also take is a mistake, not a value.
      for (const text of ['', '0x1000', '4e3', ' 4096', '4096 ', '+4096', '4096.0']) {
        assert.throws(() => boundOpt({ [s.flag]: text }, s, 7777, {}), /--max-policy-bytes must be a whole number/, `flag ${JSON.stringify(text)}`);
        if (text.trim() !== '') assert.throws(() => boundOpt({}, s, 7777, { [s.env]: text }), /MIDDLEBOX_MAX_POLICY_BYTES must be a whole number/, `env ${JSON.stringify(text)}`);
      }
      const m = BOUNDS.maxMessageBytes;
      assert.throws(() => boundOpt({}, m, 4096, { [m.env]: String(2 ** 31) }), /MIDDLEBOX_MAX_MESSAGE_BYTES/);
    });
  });

  describe('distinct rate-limit keys per rule (KeyCappedRateLimits)', () => {
    // A fixed-window minute, 10 s in.
    const NOW = 28_333_333 * 60_000 + 10_000;
    const PER_KEY = `{ rateLimits: [{ name: per-key, limit: 2, per: 1m, by: ["header:x-key"], algorithm: fixed-window, consistency: local }] }`;
    const keyed = (key: string) => request({ headers: { 'x-key': key } });

    function capped(cap: number, logger?: Logger) {
      const local = new LocalRateLimitStore({ replicas: () => 1 });
      return { local, port: new KeyCappedRateLimits(local, { maxKeysPerRule: cap, logger }) };
    }

    async function verdict(snap: PolicySnapshot, port: RateLimitPort, key: string, now = NOW): Promise<Verdict> {
      const v = decideRateLimit(snap, keyed(key), port, now);
      assert.ok(v !== undefined);
      return v;
    }

    it('gives each of the first N keys its own bucket, and counts the rest into one overflow bucket', async () => {
      const snap = snapshot({ api: PER_KEY });
      const { port } = capped(2);
      for (const key of ['a', 'b']) {
        assert.equal((await verdict(snap, port, key)).allow, true);
        assert.equal((await verdict(snap, port, key)).allow, true);
        assert.equal((await verdict(snap, port, key)).allow, false, `${key}'s own bucket is spent`);
      }
      assert.deepEqual(port.overflows, { strict: 0, leased: 0, local: 0 });
      // c and d are past the cap: together they get the limit of one bucket.
      assert.equal((await verdict(snap, port, 'c')).allow, true);
      assert.equal((await verdict(snap, port, 'd')).allow, true);
      const denied = await verdict(snap, port, 'c');
      assert.equal(denied.allow, false);
      assert.equal(denied.rule, 'per-key');
      assert.equal((await verdict(snap, port, 'e')).allow, false);
      assert.deepEqual(port.overflows, { strict: 0, leased: 0, local: 4 });
      assert.equal(port.trackedKeys, 2);
    });

    it('keeps the slots of keys in use; a key idle past its bucket lifetime makes room', async () => {
      const snap = snapshot({ api: PER_KEY });
      const { port } = capped(2);
      await verdict(snap, port, 'a');
      await verdict(snap, port, 'b');
      const idle = stateLifetimeMs(snap.policies[0]!.rateLimits[0]!) + 1000;
      assert.equal(idle, 61_000);
      // a stays in use; b does not.
      await verdict(snap, port, 'a', NOW + idle - 5000);
      await verdict(snap, port, 'c', NOW + idle - 5000);
      assert.equal(port.overflows.local, 1, 'no key is idle yet');
      const later = NOW + idle + 1;
      const v = await verdict(snap, port, 'c', later);
      assert.equal(v.allow, true);
      assert.equal(port.overflows.local, 1, 'c took the slot b gave up');
      await verdict(snap, port, 'd', later);
      assert.equal(port.overflows.local, 2, 'a is still in use: d overflows');
    });

    it('never caps a limit without `by` (one bucket)', async () => {
      const snap = snapshot({ api: '{ rateLimits: [{ name: all, limit: 100, per: 1m, consistency: local }] }' });
      const { port } = capped(1);
      for (const key of ['a', 'b', 'c']) assert.equal((await verdict(snap, port, key)).allow, true);
      assert.equal(port.overflows.local, 0);
      assert.equal(port.trackedKeys, 0);
    });

    it('refunds to the bucket it consumed from (the overflow bucket past the cap)', async () => {
      // Two limits on the same key: the second denies, so the first's token goes back.
      const snap = snapshot({
        api: `{ rateLimits: [
          { name: wide, limit: 100, per: 1m, by: ["header:x-key"], algorithm: fixed-window, consistency: local },
          { name: narrow, limit: 1, per: 1m, algorithm: fixed-window, consistency: local } ] }`,
      });
      const seen: Array<[string, string]> = [];
      const recorder: RateLimitPort = {
        consume: (req: RateLimitRequest): RateLimitGrant => {
          seen.push(['consume', req.key]);
          const allowed = req.rule.name === 'wide' || seen.filter(([op]) => op === 'consume').length === 1;
          return { allowed, limit: req.rule.limit, remaining: 0, resetMs: 1000, retryAfterMs: allowed ? 0 : 1000 };
        },
        refund: (req: RateLimitRequest) => void seen.push(['refund', req.key]),
      };
      const port = new KeyCappedRateLimits(recorder, { maxKeysPerRule: 1 });
      await verdict(snap, port, 'a'); // a takes the one slot
      seen.length = 0;
      const v = await verdict(snap, port, 'b');
      assert.equal(v.allow, false);
      assert.deepEqual(seen, [['consume', OVERFLOW_KEY], ['consume', ''], ['refund', OVERFLOW_KEY]]);
    });

    it('warns at most once a minute per limit, with the count since the last warning', async () => {
      const snap = snapshot({ api: PER_KEY });
      const warnings: Array<Record<string, unknown>> = [];
      const logger = { warn: (fields: Record<string, unknown>) => void warnings.push(fields) } as unknown as Logger;
      const { port } = capped(1, logger);
      await verdict(snap, port, 'a');
      for (let i = 0; i < 10; i++) await verdict(snap, port, `k${i}`, NOW + i);
      assert.equal(warnings.length, 1);
      assert.deepEqual(warnings[0], { rule: 'api/per-key', maxKeysPerRateLimit: 1, overflowed: 1 });
      await verdict(snap, port, 'a', NOW + 30_000); // keeps a's slot
      await verdict(snap, port, 'late', NOW + 60_000);
      assert.equal(warnings.length, 2);
      assert.equal(warnings[1]!.overflowed, 10);
    });

    it('forgets the keys of a limit no longer used', async () => {
      const snap = snapshot({ api: PER_KEY, other: `{ rateLimits: [{ name: o, limit: 5, per: 1s, by: [path], consistency: local }] }` });
      const { port } = capped(10);
      await verdict(snap, port, 'a');
      await verdict(snap, port, 'b');
      assert.equal(port.trackedKeys, 3, 'a and b, and every request\'s path /');
      // Minutes later, only `other` sees traffic: api/per-key's keys are dropped at the next sweep.
      await verdict(snapshot({ other: `{ rateLimits: [{ name: o, limit: 5, per: 1s, by: [path], consistency: local }] }` }), port, 'x', NOW + 5 * 60_000);
      assert.equal(port.trackedKeys, 1);
    });

    it('is counted in middlebox_ratelimit_keys_overflow_total by consistency', async () => {
      const snap = snapshot({ api: PER_KEY });
      const { port } = capped(1);
      const metrics = new MiddleboxMetrics({ processMetrics: false });
      metrics.watchRateLimits({ shared: { stats: { writes: 0, conflicts: 0, cachedDenials: 0, leasedWaits: 0 }, size: 0 }, keys: port });
      let samples = parseMetrics(await metrics.render());
      for (const consistency of ['strict', 'leased', 'local']) {
        assert.equal(sumMetric(samples, 'middlebox_ratelimit_keys_overflow_total', { consistency }), 0, `${consistency} is there from the start`);
      }
      for (const key of ['a', 'b', 'c', 'd']) await verdict(snap, port, key);
      samples = parseMetrics(await metrics.render());
      assert.equal(sumMetric(samples, 'middlebox_ratelimit_keys_overflow_total', { consistency: 'local' }), 3);
      await verdict(snap, port, 'e');
      samples = parseMetrics(await metrics.render());
      assert.equal(sumMetric(samples, 'middlebox_ratelimit_keys_overflow_total', { consistency: 'local' }), 4);
      assert.equal(sumMetric(samples, 'middlebox_ratelimit_keys_overflow_total', { consistency: 'strict' }), 0);
    });
  });

  describe('header bytes examined (maxHeaderBytes)', () => {
    const small = { maxHeaderBytes: 1024 };

    it('ext_authz: over the cap is 431 headers_too_large, naming the setting', () => {
      assert.equal(DEFAULT_TRANSLATION_LIMITS.maxHeaderBytes, 64 * 1024);
      assert.ok(translateCheckRequest(httpCheck({ headers: { 'x-a': 'a'.repeat(900) } }), small).ok);
      const t = translateCheckRequest(httpCheck({ headers: { 'x-a': 'a'.repeat(1100) } }), small);
      assert.ok(!t.ok);
      assert.deepEqual([t.status, t.reason], [431, 'headers_too_large']);
      assert.equal(t.message, 'request headers exceed 1024 bytes (--max-header-bytes)');
      assert.ok(translateCheckRequest(httpCheck({ headers: { 'x-a': 'a'.repeat(1100) } })).ok, 'within the default');
    });

    it('ext_proc: the same cap, the same refusal', () => {
      const msg = (bytes: number): ProcessingRequest => ({
        request_headers: { headers: { headers: [{ key: ':path', raw_value: Buffer.from('/') }, { key: 'x-a', raw_value: Buffer.from('a'.repeat(bytes)) }] } },
        attributes: { [ATTRIBUTES_KEY]: { fields: { 'source.address': { stringValue: '10.0.0.1:4000' } } } },
      }) as ProcessingRequest;
      assert.ok(translateRequestHeaders(msg(900), small).ok);
      const t = translateRequestHeaders(msg(1100), small);
      assert.ok(!t.ok);
      assert.deepEqual([t.status, t.reason, t.message], [431, 'headers_too_large', 'request headers exceed 1024 bytes (--max-header-bytes)']);
    });

    it('a refusal is counted and logged as a decision with reason headers_too_large', async () => {
      const metrics = new MiddleboxMetrics({ processMetrics: false });
      const { logger, lines } = captureLogger();
      const service = new AuthorizationService({
        policies: new StaticPolicySource(snapshot({})),
        ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() },
        logger: silentLogger(),
        decisionLog: new DecisionLog(logger),
        limits: small,
        metrics,
      });
      const refused = await service.decideCheck(httpCheck({ headers: { 'x-a': 'a'.repeat(1100) } }));
      assert.equal(refused.verdict.status, 431);
      const allowed = await service.decideCheck(httpCheck({ headers: { 'x-a': 'a'.repeat(900) } }));
      assert.equal(allowed.verdict.allow, true);
      const samples = parseMetrics(await metrics.render());
      assert.equal(sumMetric(samples, 'middlebox_decisions_total', { verdict: 'deny', reason: 'headers_too_large' }), 1);
      assert.equal(sumMetric(samples, 'middlebox_decisions_total', { verdict: 'allow' }), 1);
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(
        lines.map((l) => [l.msg, l.decision, l.status, l.reason, l.detail]),
        [['denied', refused.decisionId, 431, 'headers_too_large', 'request headers exceed 1024 bytes (--max-header-bytes)']],
      );
    });
  });
});
