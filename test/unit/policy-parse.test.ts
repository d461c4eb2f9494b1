import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDuration } from '../../src/policy/duration';
import { formatPolicyError, parsePolicies, parsePolicyFile } from '../../src/policy/parse';
import type { PolicyDocument, PolicyError } from '../../src/policy/types';

// The example from DESIGN.md ("Policy file").
const DESIGN_EXAMPLE = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  selector: { hosts: ["shop.local"], paths: ["/api/*"] }   # which traffic; omitted = all
  shadow: false                               # true: decide and log, never enforce
  firewall:
    default: allow                            # allow | deny
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"], from: ["0.0.0.0/0", "::/0"] }
      - { name: office, action: allow, from: ["203.0.113.0/24"], methods: [GET, POST], ports: [8080] }
  rateLimits:
    - { name: per-client, limit: 100, per: 1s, by: [sourceIp], algorithm: sliding-window, consistency: leased }
    - { name: writes, match: { methods: [POST, PUT] }, limit: 20, per: 1m, by: ["header:x-api-key"], algorithm: token-bucket, burst: 5, consistency: strict }
  nat:
    - { name: vip, match: { hosts: ["vip.local"] }, to: ["127.0.0.1:18081", "127.0.0.1:18082"], affinity: sourceIp }
`;

const DESIGN_EXAMPLE_JSON = JSON.stringify({
  apiVersion: 'middlebox.io/v1alpha1',
  kind: 'Policy',
  metadata: { name: 'shop' },
  spec: {
    selector: { hosts: ['shop.local'], paths: ['/api/*'] },
    shadow: false,
    firewall: {
      default: 'allow',
      rules: [
        { name: 'no-admin', action: 'deny', paths: ['/admin/*'], from: ['0.0.0.0/0', '::/0'] },
        { name: 'office', action: 'allow', from: ['203.0.113.0/24'], methods: ['GET', 'POST'], ports: [8080] },
      ],
    },
    rateLimits: [
      { name: 'per-client', limit: 100, per: '1s', by: ['sourceIp'], algorithm: 'sliding-window', consistency: 'leased' },
      {
        name: 'writes', match: { methods: ['POST', 'PUT'] }, limit: 20, per: '1m', by: ['header:x-api-key'],
        algorithm: 'token-bucket', burst: 5, consistency: 'strict',
      },
    ],
    nat: [{ name: 'vip', match: { hosts: ['vip.local'] }, to: ['127.0.0.1:18081', '127.0.0.1:18082'], affinity: 'sourceIp' }],
  },
}, null, 2);

const EXPECTED_SHOP: PolicyDocument = {
  apiVersion: 'middlebox.io/v1alpha1',
  kind: 'Policy',
  metadata: { name: 'shop' },
  spec: {
    selector: { hosts: ['shop.local'], paths: ['/api/*'] },
    shadow: false,
    firewall: {
      default: 'allow',
      rules: [
        { name: 'no-admin', action: 'deny', from: ['0.0.0.0/0', '::/0'], paths: ['/admin/*'] },
        { name: 'office', action: 'allow', from: ['203.0.113.0/24'], methods: ['GET', 'POST'], ports: [8080] },
      ],
    },
    rateLimits: [
      { name: 'per-client', limit: 100, per: '1s', by: ['sourceIp'], algorithm: 'sliding-window', consistency: 'leased' },
      {
        name: 'writes', match: { methods: ['POST', 'PUT'] }, limit: 20, per: '1m', by: ['header:x-api-key'],
        algorithm: 'token-bucket', burst: 5, consistency: 'strict',
      },
    ],
    nat: [{ name: 'vip', match: { hosts: ['vip.local'] }, to: ['127.0.0.1:18081', '127.0.0.1:18082'], affinity: 'sourceIp', idleTimeout: '5m' }],
  },
};

const HEADER = 'apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: shop }\n';

/** A policy whose firewall rule (line 8) is `rule`. */
function withRule(rule: string): string {
  return `${HEADER}spec:\n  firewall:\n    default: deny\n    rules:\n      - ${rule}\n`;
}

/** A policy whose rate limit (line 6) is `limit`. */
function withRateLimit(limit: string): string {
  return `${HEADER}spec:\n  rateLimits:\n    - ${limit}\n`;
}

/** A policy whose NAT entry (line 6) is `nat`. */
function withNat(nat: string): string {
  return `${HEADER}spec:\n  nat:\n    - ${nat}\n`;
}

function parse(text: string) {
  return parsePolicies(text, 'policy.yaml');
}

function singleError(text: string): PolicyError {
  const { documents, errors } = parse(text);
  assert.equal(errors.length, 1, `expected one error, got:\n${errors.map(formatPolicyError).join('\n')}`);
  assert.deepEqual(documents, [], 'a document with an error must not be returned');
  return errors[0];
}

function assertRefused(text: string, line: number, path: string, message: RegExp): void {
  const error = singleError(text);
  assert.equal(error.file, 'policy.yaml');
  assert.equal(error.path, path, formatPolicyError(error));
  assert.equal(error.line, line, formatPolicyError(error));
  assert.ok(typeof error.column === 'number' && error.column >= 1, formatPolicyError(error));
  assert.match(error.message, message);
}

describe('parsePolicies', () => {
  it('parses and normalises the DESIGN.md example', () => {
    const { documents, errors } = parse(DESIGN_EXAMPLE);
    assert.deepEqual(errors, []);
    assert.deepEqual(documents, [EXPECTED_SHOP]);
  });

  it('parses the JSON equivalent to the same document', () => {
    const { documents, errors } = parse(DESIGN_EXAMPLE_JSON);
    assert.deepEqual(errors, []);
    assert.deepEqual(documents, [EXPECTED_SHOP]);
  });

  it('reads several documents, skipping empty ones', () => {
    const text = `${HEADER}spec: {}\n---\n---\n# only a comment\n---\n` +
      'apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: other }\nspec: { shadow: true }\n';
    const { documents, errors } = parse(text);
    assert.deepEqual(errors, []);
    assert.deepEqual(documents.map((d) => d.metadata.name), ['shop', 'other']);
    assert.deepEqual(documents[1].spec, { shadow: true });
  });

  it('refuses a text with no policy at all: empty, only comments, or only null documents', () => {
    for (const text of ['', '\n# nothing here\n', '---\n---\n', 'null\n', '~\n---\nnull\n']) {
      const { documents, errors } = parse(text);
      assert.deepEqual(documents, [], JSON.stringify(text));
      assert.equal(errors.length, 1, JSON.stringify(text));
      assert.match(errors[0]!.message, /^no policy in it/);
      assert.equal(errors[0]!.line, 1);
    }
  });

  it('returns the valid documents of a file alongside the errors of the others', () => {
    const text = `${HEADER}spec: {}\n---\napiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: bad }\nspec: { shadow: 1 }\n`;
    const { documents, errors } = parse(text);
    assert.deepEqual(documents.map((d) => d.metadata.name), ['shop']);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].line, 9);
    assert.equal(errors[0].path, 'spec.shadow');
  });

  it('fills in defaults and normalises case and addresses', () => {
    const text = `${HEADER}spec:
  selector: { hosts: ["*.Shop.LOCAL"], methods: [get] }
  firewall:
    rules:
      - name: r
        action: allow
        from: ["10.1.2.3/8", "::FFFF:192.0.2.1"]
        headers: [{ name: X-Api-Key }, { name: X-Debug, present: false }]
  rateLimits:
    - { name: l, limit: 5, per: 1h30m, by: ["header:X-Tenant"] }
  nat:
    - { name: n, to: ["[2001:DB8::0001]:443", "[::ffff:10.0.0.1]:80"], affinity: "header:X-User", sourceAs: "2001:db8:0::9" }
`;
    const { documents, errors } = parse(text);
    assert.deepEqual(errors, []);
    assert.deepEqual(documents[0].spec, {
      selector: { hosts: ['*.shop.local'], methods: ['GET'] },
      firewall: {
        default: 'allow',
        rules: [{
          name: 'r', action: 'allow', from: ['10.0.0.0/8', '192.0.2.1/32'],
          headers: [{ name: 'x-api-key' }, { name: 'x-debug', present: false }],
        }],
      },
      rateLimits: [{ name: 'l', limit: 5, per: '1h30m', by: ['header:x-tenant'], algorithm: 'sliding-window', consistency: 'leased' }],
      nat: [{ name: 'n', to: ['[2001:db8::1]:443', '10.0.0.1:80'], affinity: 'header:x-user', sourceAs: '2001:db8::9', idleTimeout: '5m' }],
    });
  });

  it('gives a firewall without rules an empty list and default allow', () => {
    const { documents } = parse(`${HEADER}spec: { firewall: {} }\n`);
    assert.deepEqual(documents[0].spec.firewall, { default: 'allow', rules: [] });
  });

  it('follows YAML anchors', () => {
    const text = `${HEADER}spec:\n  firewall:\n    rules:\n      - { name: a, action: deny, from: &office ["192.0.2.0/24"] }\n      - { name: b, action: allow, to: *office }\n`;
    const { documents, errors } = parse(text);
    assert.deepEqual(errors, []);
    assert.deepEqual(documents[0].spec.firewall?.rules[1].to, ['192.0.2.0/24']);
  });

  it('reports every problem in a document, in file order', () => {
    const text = `apiVersion: v1\nkind: Policy\nmetadata: { name: Shop }\nspec:\n  firewall: { default: block, rules: [] }\n`;
    const { errors } = parse(text);
    assert.deepEqual(errors.map((e) => [e.line, e.path]), [
      [1, 'apiVersion'],
      [3, 'metadata.name'],
      [5, 'spec.firewall.default'],
    ]);
  });

  describe('refuses, with the line', () => {
    it('YAML syntax errors', () => {
      const error = singleError(`${HEADER}spec:\n  firewall: { default: deny\n  nat: []\n`);
      assert.equal(error.line, 6);
      assert.match(error.message, /^invalid YAML: /);
    });

    it('duplicate keys', () => {
      const error = singleError(`${HEADER}spec: {}\nkind: Policy\n`);
      assert.equal(error.line, 5);
      assert.match(error.message, /unique/);
    });

    it('unknown fields, suggesting the likely one', () => {
      assertRefused(withRule('{ name: r, action: deny, form: ["10.0.0.0/8"] }'), 8, 'spec.firewall.rules[0].form', /^unknown field \(did you mean "from"\?\)$/);
      assertRefused(`${HEADER}spec: {}\nstatus: {}\n`, 5, 'status', /^unknown field$/);
      assertRefused(`${HEADER}spec:\n  firewal: {}\n`, 5, 'spec.firewal', /did you mean "firewall"/);
      assertRefused(withNat('{ name: n, to: ["10.0.0.1:80"], match: { methods: [GET] } }'), 6, 'spec.nat[0].match.methods', /unknown field/);
    });

    it('wrong types', () => {
      assertRefused(withRule('{ name: 5, action: deny }'), 8, 'spec.firewall.rules[0].name', /expected a string, got a number/);
      assertRefused(withRule('{ name: r, action: deny, ports: 80 }'), 8, 'spec.firewall.rules[0].ports', /expected a list, got a number/);
      assertRefused(withRule('{ name: r, action: deny, from: { a: 1 } }'), 8, 'spec.firewall.rules[0].from', /expected a list, got a map/);
      assertRefused(withRule('{ name: r, action: deny, shadow: "yes" }'), 8, 'spec.firewall.rules[0].shadow', /expected a boolean, got a string/);
      assertRefused(withRule('{ name: r, action: deny, ports: ["80"] }'), 8, 'spec.firewall.rules[0].ports[0]', /expected a number, got a string/);
      assertRefused(`${HEADER}spec: [a]\n`, 4, 'spec', /expected a map, got a list/);
      assertRefused(`${HEADER}spec:\n`, 4, 'spec', /expected a map, got nothing/);
      assertRefused(withRateLimit('{ name: l, limit: "100", per: 1s }'), 6, 'spec.rateLimits[0].limit', /expected a number/);
      assertRefused(withRateLimit('{ name: l, limit: 1.5, per: 1s }'), 6, 'spec.rateLimits[0].limit', /whole number/);
    });

    it('a document that is not a map', () => {
      assertRefused('just text\n', 1, '(document)', /expected a map, got a string/);
    });

    it('missing or wrong apiVersion, kind, metadata.name, spec', () => {
      assertRefused('kind: Policy\nmetadata: { name: shop }\nspec: {}\n', 1, 'apiVersion', /required field is missing/);
      assertRefused('apiVersion: middlebox.io/v1alpha2\nkind: Policy\nmetadata: { name: shop }\nspec: {}\n', 1, 'apiVersion', /must be middlebox\.io\/v1alpha1/);
      assertRefused('apiVersion: middlebox.io/v1alpha1\nkind: Pod\nmetadata: { name: shop }\nspec: {}\n', 2, 'kind', /must be Policy/);
      assertRefused('apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { labels: {} }\nspec: {}\n', 3, 'metadata.name', /required field is missing/);
      assertRefused(HEADER, 1, 'spec', /required field is missing/);
    });

    it('names that are not DNS labels', () => {
      const long = 'a'.repeat(64);
      assertRefused(`apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: ${long} }\nspec: {}\n`, 3, 'metadata.name', /1-63 characters/);
      assertRefused('apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: Shop }\nspec: {}\n', 3, 'metadata.name', /"Shop"/);
      assertRefused('apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: -shop }\nspec: {}\n', 3, 'metadata.name', /"-shop"/);
      assertRefused(withRule('{ name: no_admin, action: deny }'), 8, 'spec.firewall.rules[0].name', /"no_admin"/);
      assert.equal(parse(`apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: ${'a'.repeat(63)} }\nspec: {}\n`).errors.length, 0);
    });

    it('bad labels', () => {
      const labelled = (labels: string) => `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata:\n  name: shop\n  labels: ${labels}\nspec: {}\n`;
      assertRefused(labelled('{ __proto__: x }'), 5, 'metadata.labels', /not a label key/);
      assertRefused(labelled('{ tier: 1 }'), 5, 'metadata.labels.tier', /expected a string, got a number/);
      assertRefused(labelled('[a]'), 5, 'metadata.labels', /expected a map/);
      const { documents } = parse(labelled('{ app.kubernetes.io/name: shop, tier: "1" }'));
      assert.deepEqual(documents[0].metadata, { name: 'shop', labels: { 'app.kubernetes.io/name': 'shop', tier: '1' } });
    });

    it('bad CIDRs', () => {
      assertRefused(withRule('{ name: r, action: deny, from: ["10.0.0.0/33"] }'), 8, 'spec.firewall.rules[0].from[0]', /"10\.0\.0\.0\/33" is not a CIDR/);
      assertRefused(withRule('{ name: r, action: deny, to: ["10.0.0.0/8", "office"] }'), 8, 'spec.firewall.rules[0].to[1]', /"office" is not a CIDR/);
    });

    it('bad and overlong regexes', () => {
      assertRefused(withRule('{ name: r, action: deny, paths: [{ regex: "^/(a" }] }'), 8, 'spec.firewall.rules[0].paths[0].regex', /invalid regex/);
      assertRefused(withRule(`{ name: r, action: deny, headers: [{ name: a, regex: "${'x'.repeat(1025)}" }] }`), 8, 'spec.firewall.rules[0].headers[0].regex', /limit is 1024/);
      assert.equal(parse(withRule(`{ name: r, action: deny, paths: [{ regex: "${'x'.repeat(1024)}" }] }`)).errors.length, 0);
    });

    it('regexes the linear-time engine cannot run: lookarounds, backreferences, bounded repeats over 16', () => {
      const refused = (regex: string) =>
        assertRefused(withRule(`{ name: r, action: deny, headers: [{ name: x-id, regex: ${regex} }] }`), 8, 'spec.firewall.rules[0].headers[0].regex', /cannot run in linear time/);
      refused('"(a)\\\\1"');
      refused('"^(?=\\\\d)(\\\\w|\\\\d)+$"');
      refused('"(?<!/internal)/admin"');
      refused('"^(\\\\w|\\\\d)+[a-z]{0,32}$"');
      assertRefused(withRule('{ name: r, action: deny, paths: [{ regex: "(?<x>a)\\\\k<x>" }] }'), 8, 'spec.firewall.rules[0].paths[0].regex', /linear time/);
      // Nested quantifiers and alternatives (the linear engine takes them over), bounded repeats up
      // to 16, and an escaped backslash before a digit are fine.
      for (const ok of ['"^(\\\\w+\\\\s?)*$"', '"^(\\\\w|\\\\d)+$"', '"^(\\\\d{1,3}\\\\.){3}\\\\d{1,3}$"', '"[a-z]{0,16}"', '"a\\\\\\\\1"']) {
        assert.deepEqual(parse(withRule(`{ name: r, action: deny, headers: [{ name: x-id, regex: ${ok} }] }`)).errors, [], ok);
      }
    });

    it('a rule on the "host" header, which never reaches the middlebox (":authority" does)', () => {
      assertRefused(withRule('{ name: r, action: deny, headers: [{ name: Host, present: false }] }'), 8, 'spec.firewall.rules[0].headers[0].name', /use hosts: \[\.\.\.\], or the name ":authority"/);
      assert.deepEqual(parse(withRule('{ name: r, action: deny, headers: [{ name: ":authority", value: admin.local }] }')).errors, []);
    });

    it('duplicate rule names within a list', () => {
      const text = `${HEADER}spec:\n  firewall:\n    rules:\n      - { name: r, action: deny }\n      - { name: s, action: deny }\n      - { name: r, action: allow }\n`;
      assertRefused(text, 9, 'spec.firewall.rules[2].name', /duplicate name "r"/);
      assertRefused(`${HEADER}spec:\n  rateLimits:\n    - { name: l, limit: 1, per: 1s }\n    - { name: l, limit: 2, per: 1s }\n`, 7, 'spec.rateLimits[1].name', /duplicate name "l"/);
      assertRefused(`${HEADER}spec:\n  nat:\n    - { name: n, to: ["10.0.0.1:80"] }\n    - { name: n, to: ["10.0.0.2:80"] }\n`, 7, 'spec.nat[1].name', /duplicate name "n"/);
    });

    it('the same name in a firewall rule and a rate limit is fine', () => {
      const text = `${HEADER}spec:\n  firewall: { rules: [{ name: x, action: deny }] }\n  rateLimits: [{ name: x, limit: 1, per: 1s }]\n`;
      assert.deepEqual(parse(text).errors, []);
    });

    it('duplicate policy names within one file', () => {
      const text = `${HEADER}spec: {}\n---\napiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata:\n  name: shop\nspec: {}\n`;
      const { documents, errors } = parse(text);
      assert.equal(errors.length, 1);
      assert.equal(errors[0].line, 9);
      assert.equal(errors[0].path, 'metadata.name');
      assert.match(errors[0].message, /"shop" is defined twice/);
      assert.deepEqual(documents.map((d) => d.metadata.name), ['shop']);
    });

    it('ports out of range', () => {
      assertRefused(withRule('{ name: r, action: deny, ports: [0] }'), 8, 'spec.firewall.rules[0].ports[0]', /out of range/);
      assertRefused(withRule('{ name: r, action: deny, ports: [80, 65536] }'), 8, 'spec.firewall.rules[0].ports[1]', /65536 is out of range/);
      assert.equal(parse(withRule('{ name: r, action: deny, ports: [1, 65535] }')).errors.length, 0);
    });

    it('unknown HTTP methods', () => {
      assertRefused(withRule('{ name: r, action: deny, methods: [get, FETCH] }'), 8, 'spec.firewall.rules[0].methods[1]', /"FETCH" is not an HTTP method/);
    });

    it('hosts that are not a name, *.suffix or *', () => {
      assertRefused(withRule('{ name: r, action: deny, hosts: ["shop.local:8080"] }'), 8, 'spec.firewall.rules[0].hosts[0]', /not a host/);
      assertRefused(withRule('{ name: r, action: deny, hosts: ["*shop.local"] }'), 8, 'spec.firewall.rules[0].hosts[0]', /not a host/);
      assertRefused(withRule('{ name: r, action: deny, hosts: ["a.*.local"] }'), 8, 'spec.firewall.rules[0].hosts[0]', /not a host/);
      assertRefused(withRule('{ name: r, action: deny, hosts: [""] }'), 8, 'spec.firewall.rules[0].hosts[0]', /not a host/);
      assert.equal(parse(withRule('{ name: r, action: deny, hosts: ["*", "*.a.b", "a-b.c", "10.0.0.1", "[::1]"] }')).errors.length, 0);
    });

    it('paths that are not "/exact", "/prefix/*" or {regex}', () => {
      assertRefused(withRule('{ name: r, action: deny, paths: ["api"] }'), 8, 'spec.firewall.rules[0].paths[0]', /must start with "\/"/);
      assertRefused(withRule('{ name: r, action: deny, paths: ["/api*"] }'), 8, 'spec.firewall.rules[0].paths[0]', /trailing "\/\*"/);
      assertRefused(withRule('{ name: r, action: deny, paths: ["/a/*/b"] }'), 8, 'spec.firewall.rules[0].paths[0]', /trailing "\/\*"/);
      assertRefused(withRule('{ name: r, action: deny, paths: ["/a?b=1"] }'), 8, 'spec.firewall.rules[0].paths[0]', /query string/);
      assertRefused(withRule('{ name: r, action: deny, paths: [{ regex: "^/a", flags: i }] }'), 8, 'spec.firewall.rules[0].paths[0].flags', /unknown field/);
      assertRefused(withRule('{ name: r, action: deny, paths: [5] }'), 8, 'spec.firewall.rules[0].paths[0]', /expected a path string or \{regex/);
    });

    it('empty match lists', () => {
      assertRefused(withRule('{ name: r, action: deny, from: [] }'), 8, 'spec.firewall.rules[0].from', /must not be empty/);
    });

    it('bad header matches', () => {
      assertRefused(withRule('{ name: r, action: deny, headers: [{ name: a, value: x, regex: y }] }'), 8, 'spec.firewall.rules[0].headers[0].regex', /either value or regex/);
      assertRefused(withRule('{ name: r, action: deny, headers: [{ name: a, present: false, value: x }] }'), 8, 'spec.firewall.rules[0].headers[0].present', /present: false/);
      assertRefused(withRule('{ name: r, action: deny, headers: [{ name: "bad name" }] }'), 8, 'spec.firewall.rules[0].headers[0].name', /not a valid header name/);
      assertRefused(withRule('{ name: r, action: deny, headers: [{ value: x }] }'), 8, 'spec.firewall.rules[0].headers[0].name', /required field is missing/);
      assertRefused(withRule('{ name: r, action: deny, headers: [{ name: A }, { name: a, value: x }] }'), 8, 'spec.firewall.rules[0].headers[1]', /"a" is listed twice/);
    });

    it('principals with a "*" other than at the end', () => {
      assertRefused(withRule('{ name: r, action: deny, principals: ["spiffe://*/ns/a"] }'), 8, 'spec.firewall.rules[0].principals[0]', /only allowed at the end/);
    });

    it('bad firewall default and action', () => {
      assertRefused(`${HEADER}spec:\n  firewall: { default: block }\n`, 5, 'spec.firewall.default', /"block" is not one of allow, deny/);
      assertRefused(withRule('{ name: r, action: reject }'), 8, 'spec.firewall.rules[0].action', /"reject" is not one of allow, deny/);
      assertRefused(withRule('{ name: r }'), 8, 'spec.firewall.rules[0].action', /required field is missing/);
      assertRefused(`${HEADER}spec:\n  firewall: { rules: { name: r } }\n`, 5, 'spec.firewall.rules', /expected a list, got a map/);
    });

    it('bad rate limits', () => {
      const at = 'spec.rateLimits[0]';
      assertRefused(withRateLimit('{ name: l, limit: 0, per: 1s }'), 6, `${at}.limit`, /positive whole number/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1x }'), 6, `${at}.per`, /not a positive duration/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 0s }'), 6, `${at}.per`, /not a positive duration/);
      assertRefused(withRateLimit('{ name: l, limit: 1 }'), 6, `${at}.per`, /required field is missing/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, by: [ip] }'), 6, `${at}.by[0]`, /"ip" is not a rate-limit key/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, by: ["header:"] }'), 6, `${at}.by[0]`, /not a valid header name/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, by: [host, host] }'), 6, `${at}.by[1]`, /listed twice/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, algorithm: leaky-bucket }'), 6, `${at}.algorithm`, /is not one of fixed-window, sliding-window, token-bucket/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, burst: 5 }'), 6, `${at}.burst`, /only to algorithm token-bucket, not sliding-window \(the default\)/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, algorithm: fixed-window, burst: 5 }'), 6, `${at}.burst`, /not fixed-window/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, algorithm: token-bucket, burst: 0 }'), 6, `${at}.burst`, /positive whole number/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, consistency: eventual }'), 6, `${at}.consistency`, /is not one of strict, leased, local/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, shadow: 1 }'), 6, `${at}.shadow`, /expected a boolean/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, headers: "true" }'), 6, `${at}.headers`, /expected a boolean/);
      assertRefused(withRateLimit('{ name: l, limit: 1, per: 1s, match: { ports: [0] } }'), 6, `${at}.match.ports[0]`, /out of range/);
    });

    it('bad NAT entries', () => {
      const at = 'spec.nat[0]';
      assertRefused(withNat('{ name: n, to: [] }'), 6, `${at}.to`, /must not be empty/);
      assertRefused(withNat('{ name: n }'), 6, `${at}.to`, /required field is missing/);
      assertRefused(withNat('{ name: n, to: ["::1:80"] }'), 6, `${at}.to[0]`, /write IPv6 as \[addr\]:port/);
      assertRefused(withNat('{ name: n, to: ["10.0.0.1"] }'), 6, `${at}.to[0]`, /not ip:port/);
      assertRefused(withNat('{ name: n, to: ["10.0.0.1:70000"] }'), 6, `${at}.to[0]`, /not ip:port/);
      assertRefused(withNat('{ name: n, to: ["backend:80"] }'), 6, `${at}.to[0]`, /not ip:port/);
      assertRefused(withNat('{ name: n, to: ["10.0.0.1:80", "10.0.0.1:80"] }'), 6, `${at}.to[1]`, /listed twice/);
      assertRefused(withNat('{ name: n, to: ["10.0.0.1:80"], affinity: cookie }'), 6, `${at}.affinity`, /not an affinity/);
      assertRefused(withNat('{ name: n, to: ["10.0.0.1:80"], rewriteHost: yes }'), 6, `${at}.rewriteHost`, /expected a boolean/);
      assertRefused(withNat('{ name: n, to: ["10.0.0.1:80"], sourceAs: "10.0.0" }'), 6, `${at}.sourceAs`, /not an IP address/);
    });
  });
});

describe('formatPolicyError', () => {
  it('starts with file:line:', () => {
    const [error] = parse(withRule('{ name: r, action: deny, form: [] }')).errors;
    assert.equal(formatPolicyError(error), 'policy.yaml:8:34: spec.firewall.rules[0].form: unknown field (did you mean "from"?)');
    assert.equal(formatPolicyError({ file: 'p.yaml', line: 3, message: 'bad' }), 'p.yaml:3: bad');
    assert.equal(formatPolicyError({ file: 'p.yaml', message: 'cannot read the file: no such file' }), 'p.yaml: cannot read the file: no such file');
  });
});

describe('parsePolicyFile', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'middlebox-policy-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads a file and names it in errors', () => {
    const file = join(dir, 'shop.yaml');
    writeFileSync(file, `${DESIGN_EXAMPLE}---\n${HEADER}spec: { shadow: maybe }\n`);
    const { documents, errors } = parsePolicyFile(file);
    assert.deepEqual(documents, [EXPECTED_SHOP]);
    assert.equal(errors.length, 2, errors.map(formatPolicyError).join('\n'));
    assert.ok(errors.every((e) => e.file === file));
    assert.match(formatPolicyError(errors[0]), new RegExp(`^${file}:20:`));
    assert.equal(errors[0].path, 'metadata.name');
    assert.equal(errors[1].path, 'spec.shadow');
  });

  it('reports a missing file as an error', () => {
    const file = join(dir, 'missing.yaml');
    const { documents, errors } = parsePolicyFile(file);
    assert.deepEqual(documents, []);
    assert.deepEqual(errors, [{ file, message: 'cannot read the file: no such file' }]);
  });
});

describe('parseDuration', () => {
  it('reads units and combinations in milliseconds', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('1s'), 1_000);
    assert.equal(parseDuration('30s'), 30_000);
    assert.equal(parseDuration('1m'), 60_000);
    assert.equal(parseDuration('1h'), 3_600_000);
    assert.equal(parseDuration('1h30m'), 5_400_000);
    assert.equal(parseDuration('1m30s250ms'), 90_250);
    assert.equal(parseDuration('0s'), 0);
  });

  it('refuses anything else', () => {
    for (const text of ['', '1', 's', '1.5s', '-1s', '1d', '1 s', ' 1s', '1S', '30s1m', '1m1m', '1ms1s', '1sms']) {
      assert.equal(parseDuration(text), undefined, JSON.stringify(text));
    }
  });
});
