// Property and fuzz tests of the policy parser: arbitrary text, and valid policies mutated into
// wrong ones (as YAML block, YAML flow and JSON). Whatever the input: parsePolicies returns, every
// error is located (file:line:column), and what it accepts compiles, decides, and survives the
// JSON round trip that `policy apply` → etcd → replica makes.
//
// Bounded: a fixed number of runs per property and a time limit (test/harness/fuzz.ts).
import assert from 'node:assert/strict';
import fc from 'fast-check';
import YAML from 'yaml';
import { decide } from '../../src/middlebox/pipeline';
import { compileSnapshot } from '../../src/policy/compile';
import { parsePolicies, type ParsedPolicies } from '../../src/policy/parse';
import { MAX_ALIAS_EXPANSION } from '../../src/policy/validate';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { request } from '../harness/request';
import { FUZZ_TIME_LIMIT_MS, fuzz } from '../harness/fuzz';

const FILE = 'fuzz.yaml';
const HEAD = { apiVersion: 'middlebox.io/v1alpha1', kind: 'Policy' };

/** Valid policies that use every field, the seeds of the mutations. */
const BASE: Record<string, unknown>[] = [
  {
    ...HEAD,
    metadata: { name: 'shop', labels: { team: 'web', 'example.com/tier': 'front' } },
    spec: {
      selector: { hosts: ['shop.local', '*.shop.local', '[::1]'], paths: ['/api/*', { regex: '^/v[0-9]+/' }], methods: ['GET', 'post'], ports: [8080, 443] },
      shadow: false,
      firewall: {
        default: 'deny',
        rules: [
          {
            name: 'office', action: 'allow', from: ['203.0.113.0/24', '2001:db8::/32', '192.0.2.7', '::ffff:10.1.2.3/120'], to: ['10.0.0.0/8'],
            ports: [8080], methods: ['GET'], hosts: ['*'], paths: ['/exact', '/'],
            headers: [{ name: 'x-a' }, { name: 'x-b', value: 'v' }, { name: 'X-C', regex: '^a+$' }, { name: 'x-d', present: false }],
            principals: ['spiffe://cluster.local/ns/shop/*', 'spiffe://x/y'],
          },
          { name: 'trial', action: 'deny', shadow: true, paths: [{ regex: '^/beta(/|$)' }] },
        ],
      },
      rateLimits: [
        { name: 'per-client', limit: 100, per: '1s', by: ['sourceIp'], algorithm: 'sliding-window', consistency: 'leased' },
        {
          name: 'writes', match: { methods: ['POST', 'PUT'] }, limit: 20, per: '1h30m', by: ['header:X-Api-Key', 'principal', 'host', 'path'],
          algorithm: 'token-bucket', burst: 5, consistency: 'strict', headers: true, shadow: true,
        },
        { name: 'fixed', limit: 1, per: '500ms', algorithm: 'fixed-window', consistency: 'local' },
      ],
      nat: [
        {
          name: 'web', match: { hosts: ['vip.local'], ports: [80], paths: ['/app/*'] }, to: ['10.0.0.1:8080', '[2001:db8::1]:80'],
          affinity: 'sourceIp', rewriteHost: true, sourceAs: '10.9.9.9', idleTimeout: '5m',
        },
        { name: 'h', to: ['127.0.0.1:1'], affinity: 'header:x-user' },
      ],
    },
  },
  { ...HEAD, metadata: { name: 'edge' }, spec: { firewall: { rules: [{ name: 'tcp', action: 'deny', ports: [22], to: ['::/0', '0.0.0.0/0'] }] } } },
  { ...HEAD, metadata: { name: 'empty' }, spec: {} },
];

/** Values an author gets wrong: near misses of every field's syntax, and plain odd values. */
const ODD = fc.oneof(
  fc.constantFrom<unknown>(
    '10.0.0.0/33', '300.1.1.1', '010.1.1.1', '::/129', '1.2.3.4/', '/a*b', '/a/**', 'a/b', '/x?y', '/x#y', 'GEt', 'FETCH', -1, 0, 65536, 1.5,
    Infinity, NaN, '1h30m', '30s1m', '0s', '', null, true, false, [], {}, 'header:', 'header:bad name', '[::1]', '*.', '**', '(', 'x'.repeat(1100),
    '__proto__', 'constructor', '\u0000', 'ünïcödé', 'a'.repeat(64), 'spiffe://a/*/b', '*', 'token-bucket', 'strict', 'deny', 'allow', 'none',
    'sourceIp', 'header:X-Ok', '127.0.0.1:0', '127.0.0.1:65536', '::1:80', '[::1]:80', 2 ** 53, -0,
  ),
  fc.jsonValue({ maxDepth: 2 }),
  fc.string({ maxLength: 12 }),
);

type MutationKind = 'delete' | 'replace' | 'rename' | 'unknown-key' | 'wrap' | 'duplicate';
interface Mutation {
  at: number;
  kind: MutationKind;
  value: unknown;
}

const MUTATION: fc.Arbitrary<Mutation> = fc.record({
  at: fc.nat(),
  kind: fc.constantFrom<MutationKind>('delete', 'replace', 'replace', 'rename', 'unknown-key', 'wrap', 'duplicate'),
  value: ODD,
});

type Slot = [container: Record<string, unknown> | unknown[], key: string | number];

function slots(value: unknown, out: Slot[] = []): Slot[] {
  if (Array.isArray(value)) value.forEach((v, i) => (out.push([value, i]), slots(v, out)));
  else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      out.push([value as Record<string, unknown>, k]);
      slots(v, out);
    }
  }
  return out;
}

function mutate(base: unknown, mutations: Mutation[]): unknown {
  const doc = structuredClone(base);
  for (const m of mutations) {
    const all = slots(doc);
    if (all.length === 0) break;
    const [container, key] = all[m.at % all.length]!;
    const current = (container as Record<string | number, unknown>)[key];
    const set = (v: unknown) => ((container as Record<string | number, unknown>)[key] = v);
    switch (m.kind) {
      case 'delete':
        if (Array.isArray(container)) container.splice(key as number, 1);
        else delete container[key as string];
        break;
      case 'replace':
        set(m.value);
        break;
      case 'rename':
        if (!Array.isArray(container)) {
          delete container[key as string];
          container[String(key).slice(0, -1) || 'x'] = current;
        }
        break;
      case 'unknown-key':
        if (current !== null && typeof current === 'object' && !Array.isArray(current)) {
          (current as Record<string, unknown>)[typeof m.value === 'string' && m.value !== '' ? m.value : 'extra'] = 1;
        }
        break;
      case 'wrap':
        set([current]);
        break;
      case 'duplicate':
        if (Array.isArray(container)) container.splice(key as number, 0, structuredClone(current));
        break;
    }
  }
  return doc;
}

type Style = 'block' | 'flow' | 'json';

function serialise(doc: unknown, style: Style): string {
  if (style === 'json') return JSON.stringify(doc);
  return YAML.stringify(doc, { collectionStyle: style === 'flow' ? 'flow' : 'block', lineWidth: 0 });
}

/** Character-level edits on the text: deleted and inserted characters, YAML punctuation likely. */
const EDITS = fc.array(
  fc.record({ at: fc.nat(), remove: fc.nat(3), insert: fc.oneof(fc.string({ maxLength: 3 }), fc.constantFrom(':', '- ', '{', '}', '[', ']', '\n', '  ', '&a ', '*a', '!!str ', '"', "'", '#', '---\n')) }),
  { maxLength: 3 },
);

function edit(text: string, edits: { at: number; remove: number; insert: string }[]): string {
  let out = text;
  for (const e of edits) {
    const at = out.length === 0 ? 0 : e.at % (out.length + 1);
    out = out.slice(0, at) + e.insert + out.slice(at + e.remove);
  }
  return out;
}

const PROBES = [
  request(),
  request({ protocol: 'tcp', port: 22 }),
  request({ from: null, host: 'vip.local', path: '/app/x', method: 'POST', headers: { 'x-a': '1', 'x-b': 'v', 'x-c': 'aaa', 'x-user': 'u' } }),
  request({ from: '2001:db8::5', to: '::ffff:10.0.0.9', port: 80, host: 'api.shop.local', path: '/beta', principal: 'spiffe://cluster.local/ns/shop/a' }),
];

/** Everything parsePolicies promises, checked on one result. */
function checkParsed(text: string, result: ParsedPolicies): void {
  const lines = text.split(/\r\n|\r|\n/).length;
  for (const e of result.errors) {
    assert.equal(e.file, FILE);
    assert.ok(Number.isInteger(e.line) && e.line! >= 1 && e.line! <= lines + 1, `line of ${JSON.stringify(e)}`);
    assert.ok(Number.isInteger(e.column) && e.column! >= 1, `column of ${JSON.stringify(e)}`);
    assert.equal(typeof e.message, 'string');
    assert.ok(e.message.length > 0);
  }
  // What validation accepts compiles and decides (compile throws on anything validation should have refused).
  const snapshot = compileSnapshot(result.documents, 1);
  for (const req of PROBES) {
    const verdict = decide(snapshot, req, { rateLimits: new LocalRateLimitStore({ replicas: () => 2 }), nat: new MemoryNatTable() }, 1_700_000_000_000, { nat: true });
    assert.ok(!(verdict instanceof Promise) && typeof verdict.allow === 'boolean');
  }
  // `policy apply` stores the normalised document as JSON; every replica must accept it as it is.
  for (const doc of result.documents) {
    const again = parsePolicies(JSON.stringify(doc), 'etcd');
    assert.deepEqual(again.errors, [], `stored form of ${doc.metadata.name} is refused`);
    assert.deepEqual(again.documents, [doc]);
  }
}

describe('fuzz: policy parser', function () {
  this.timeout(FUZZ_TIME_LIMIT_MS * 2 + 20_000);

  it('the seed policies are valid (or the mutations below would prove nothing)', () => {
    for (const style of ['block', 'flow', 'json'] as const) {
      const text = BASE.map((d) => serialise(d, style)).join('\n---\n');
      const result = parsePolicies(text, FILE);
      assert.deepEqual(result.errors, [], style);
      assert.equal(result.documents.length, BASE.length);
      checkParsed(text, result);
    }
  });

  it('arbitrary text: never throws, every error located', () => {
    fuzz(
      fc.property(fc.oneof(fc.string({ maxLength: 400 }), fc.string({ unit: 'binary', maxLength: 400 })), (text) => {
        checkParsed(text, parsePolicies(text, FILE));
      }),
      400,
    );
  });

  it('YAML-ish token soup: never throws, every error located', () => {
    const token = fc.constantFrom(
      '{', '}', '[', ']', ': ', ', ', '- ', '\n', '  ', '&a ', '*a', '&b ', '*b', '!!str ', '!!int ', '!!map ', '!tag ', '? ', '# c\n', '"', "'", '|\n  ', '>\n  ',
      '---\n', '...\n', '%YAML 1.2\n', '<<: ', 'apiVersion: middlebox.io/v1alpha1\n', 'kind: Policy\n', 'metadata: ', 'name: ', 'spec: ', 'firewall: ',
      'rules: ', 'rateLimits: ', 'nat: ', 'selector: ', 'from: ', 'paths: ', 'headers: ', 'action: deny', 'x', '1', '10.0.0.0/8', '/a/*', 'null', '~',
    );
    fuzz(
      fc.property(fc.array(token, { maxLength: 60 }).map((t) => t.join('')), (text) => checkParsed(text, parsePolicies(text, FILE))),
      400,
    );
  });

  it('valid policies with mutations, as YAML block, YAML flow and JSON: never throws, errors located, accepted ones compile', () => {
    fuzz(
      fc.property(
        fc.array(fc.tuple(fc.constantFrom(...BASE.keys()), fc.array(MUTATION, { maxLength: 4 })), { minLength: 1, maxLength: 3 }),
        fc.constantFrom<Style>('block', 'flow', 'json'),
        EDITS,
        (docs, style, edits) => {
          const text = edit(docs.map(([i, m]) => serialise(mutate(BASE[i], m), style)).join('\n---\n'), edits);
          checkParsed(text, parsePolicies(text, FILE));
        },
      ),
      600,
    );
  });

  it('anchors and aliases: the work and the errors stay bounded by the text and the expansion limit', () => {
    fuzz(
      fc.property(fc.integer({ min: 1, max: 150 }), fc.integer({ min: 1, max: 150 }), fc.boolean(), (rules, entries, valid) => {
        const entry = valid ? '{name: x-h}' : '{name: "bad name"}';
        const text =
          `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec:\n  firewall:\n    rules:\n` +
          `      - &r {name: a, action: deny, headers: &h [${Array(entries).fill(entry).join(', ')}], from: &f [10.0.0.0/8]}\n` +
          Array(rules).fill('      - *r\n').join('');
        const result = parsePolicies(text, FILE);
        checkParsed(text, result);
        assert.ok(result.errors.length <= MAX_ALIAS_EXPANSION + text.length, `${result.errors.length} errors`);
      }),
      30,
    );
  });

  // Regressions: before validation bounded alias expansion and resolved aliases in one pass, these
  // took 40 s and over 2 GB (a 48 KB file), and 110 s (an 80 KB valid file).
  it('regression: a short document whose aliases stand for millions of values is refused quickly, once, located', () => {
    const entries = Array(2000).fill('{name: x-h}').join(', ');
    const text =
      `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec:\n  firewall:\n    rules:\n` +
      `      - &r {name: a, action: deny, headers: &h [${entries}]}\n${Array(2000).fill('      - *r\n').join('')}`;
    const started = Date.now();
    const result = parsePolicies(text, FILE);
    assert.ok(Date.now() - started < 10_000, `took ${Date.now() - started} ms`);
    assert.equal(result.documents.length, 0);
    const expansion = result.errors.filter((e) => /aliases expand this document/.test(e.message));
    assert.equal(expansion.length, 1);
    assert.equal(expansion[0]!.path, '*r');
    assert.ok(expansion[0]!.line! > 7);
    assert.ok(result.errors.length <= MAX_ALIAS_EXPANSION);
  });

  it('regression: many aliases of one value validate in linear time', () => {
    const text =
      `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec:\n  firewall:\n    rules:\n` +
      `      - {name: a, action: deny, from: [&c 10.0.0.0/8, ${Array(20_000).fill('*c').join(', ')}]}\n`;
    const started = Date.now();
    const result = parsePolicies(text, FILE);
    assert.ok(Date.now() - started < 10_000, `took ${Date.now() - started} ms`);
    assert.deepEqual(result.errors, []);
    assert.equal(result.documents[0]!.spec.firewall!.rules[0]!.from!.length, 20_001);
  });

  // Regression: two entries missing their names were also reported as a duplicate name "", with
  // no line and column when the name was absent.
  it('regression: entries without a name are reported once each, located, not as duplicates', () => {
    const text =
      `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec:\n  rateLimits:\n    - {limit: 1, per: 1s}\n    - {limit: 1, per: 1s}\n` +
      `  firewall: {rules: [{action: deny}, {name: 7, action: deny}]}\n  nat: [{to: ["1.2.3.4:5"]}, {to: ["1.2.3.4:6"]}]\n`;
    const result = parsePolicies(text, FILE);
    checkParsed(text, result);
    assert.deepEqual(
      result.errors.map((e) => `${e.line}:${e.column} ${e.path}: ${e.message}`),
      [
        '6:7 spec.rateLimits[0].name: required field is missing',
        '7:7 spec.rateLimits[1].name: required field is missing',
        '8:22 spec.firewall.rules[0].name: required field is missing',
        '8:45 spec.firewall.rules[1].name: expected a string, got a number (7)',
        '9:9 spec.nat[0].name: required field is missing',
        '9:30 spec.nat[1].name: required field is missing',
      ],
    );
  });

  it('aliases still resolve as YAML says: the last anchor of that name before the alias', () => {
    const text =
      `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec:\n  firewall:\n    rules:\n` +
      `      - {name: a, action: deny, from: &l ["10.0.0.0/8"]}\n      - {name: b, action: deny, from: *l}\n` +
      `      - {name: c, action: deny, from: &l ["192.0.2.0/24"]}\n      - {name: d, action: deny, from: *l}\n`;
    const result = parsePolicies(text, FILE);
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.documents[0]!.spec.firewall!.rules.map((r) => r.from), [['10.0.0.0/8'], ['10.0.0.0/8'], ['192.0.2.0/24'], ['192.0.2.0/24']]);
  });
});
