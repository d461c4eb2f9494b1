// Property and fuzz tests of the request matchers the engines share (src/middlebox/firewall/match.ts)
// and the address parsing under them: no input makes them throw, and each kind of pattern matches
// what it was built from ("a CIDR contains every address built from its prefix", "a glob matches
// the literal path it was built from") and not its near misses.
//
// Bounded: a fixed number of runs per property and a time limit (test/harness/fuzz.ts).
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  destinationMatcher,
  headerMatcher,
  hostMatcher,
  methodMatcher,
  pathMatcher,
  portMatcher,
  principalMatcher,
  sourceMatcher,
  trafficMatcher,
} from '../../src/middlebox/firewall/match';
import { CidrSet, parseCidr, parseIp } from '../../src/middlebox/ip';
import type { RequestAttributes } from '../../src/middlebox/types';
import type { HeaderMatchSpec, PathPattern } from '../../src/policy/types';
import { parsePolicies } from '../../src/policy/parse';
import { compileSnapshot } from '../../src/policy/compile';
import { request } from '../harness/request';
import { FUZZ_TIME_LIMIT_MS, fuzz } from '../harness/fuzz';

// --- addresses --------------------------------------------------------------------------------------------

const addressy = fc.oneof(
  fc.ipV4(),
  fc.ipV6(),
  fc.ipV4Extended(),
  fc.tuple(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: -2, max: 140 })).map(([ip, p]) => `${ip}/${p}`),
  fc.array(fc.constantFrom('0', '1', 'f', 'ff', 'ffff', ':', '::', '.', '255', '256', '%', 'eth0', '[', ']', '/', '32', '129', ' ', '-'), { maxLength: 14 }).map((t) => t.join('')),
  fc.string({ maxLength: 40 }),
);

/** An address of the family, as bytes; IPv6 written out in full (no "::"), as a test should not lean on the parser it tests. */
function bytesText(bytes: readonly number[]): string {
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return groups.join(':');
}

function isMapped(bytes: readonly number[]): boolean {
  return bytes.length === 16 && bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
}

/** `base` with the bits from `prefix` on taken from `host`. */
function withHostBits(base: readonly number[], host: readonly number[], prefix: number): number[] {
  return base.map((b, i) => {
    const bits = Math.max(0, Math.min(8, prefix - i * 8));
    const mask = bits === 0 ? 0 : (0xff << (8 - bits)) & 0xff;
    return (b & mask) | (host[i]! & ~mask & 0xff);
  });
}

const family = fc.constantFrom(4, 6);
/** A network base, an address's host bits and a prefix length, for one family. */
const range = family.chain((f) => {
  const n = f === 4 ? 4 : 16;
  const bytes = fc.array(fc.integer({ min: 0, max: 255 }), { minLength: n, maxLength: n });
  // Zeros and 0xff runs are where IPv4-mapped addresses and edge prefixes live.
  const biased = fc.oneof(bytes, fc.constant([...Array(10).fill(0), 0xff, 0xff, 192, 0, 2, 1].slice(16 - n)));
  return fc.record({ base: biased, host: bytes, prefix: fc.integer({ min: 0, max: n * 8 }) });
});

function sourceRequest(ip: string): RequestAttributes {
  return request({ from: ip, to: ip });
}

describe('fuzz: matchers', function () {
  this.timeout(FUZZ_TIME_LIMIT_MS * 2 + 20_000);

  it('parseIp and parseCidr never throw; what they accept is canonical and parses again to itself', () => {
    fuzz(
      fc.property(addressy, (text) => {
        const ip = parseIp(text);
        if (ip) {
          assert.equal(ip.bytes.length, ip.family === 4 ? 4 : 16);
          assert.ok(!isMapped([...ip.bytes]), 'IPv4-mapped addresses become IPv4');
          assert.equal(parseIp(ip.text)?.text, ip.text);
        }
        const cidr = parseCidr(text);
        if (cidr) {
          assert.ok(cidr.prefix >= 0 && cidr.prefix <= cidr.bytes.length * 8);
          assert.deepEqual(parseCidr(cidr.text), cidr);
          // Host bits are zero: the network address is in its own range, and so is the text parsed.
          const network = parseIp(cidr.text.slice(0, cidr.text.lastIndexOf('/')))!;
          assert.ok(new CidrSet([cidr]).contains(network));
        }
      }),
      2000,
    );
  });

  it('a CIDR contains every address built from its prefix', () => {
    fuzz(
      fc.property(range, ({ base, host, prefix }) => {
        const address = withHostBits(base, host, prefix);
        const cidrText = `${bytesText(base)}/${prefix}`;
        const cidr = parseCidr(cidrText)!;
        assert.ok(cidr, cidrText);
        // IPv6 ranges match IPv6 only; a mapped address is IPv4 to the matchers (see ip.ts).
        fc.pre(!(isMapped(address) && cidr.family === 6));
        const ip = bytesText(address);
        assert.ok(new CidrSet([cidr]).contains(parseIp(ip)!), `${ip} in ${cidrText}`);
        assert.ok(sourceMatcher([cidrText])(sourceRequest(ip)), `from ${ip} in ${cidrText}`);
        assert.ok(destinationMatcher([cidrText])(sourceRequest(ip)), `to ${ip} in ${cidrText}`);
      }),
      2000,
    );
  });

  it('a CIDR does not contain an address that differs inside its prefix', () => {
    fuzz(
      fc.property(range, fc.nat(), ({ base, host, prefix }, which) => {
        fc.pre(prefix > 0);
        const address = withHostBits(base, host, prefix);
        const bit = which % prefix;
        address[bit >> 3]! ^= 0x80 >> (bit & 7);
        const cidrText = `${bytesText(base)}/${prefix}`;
        const ip = bytesText(address);
        assert.equal(sourceMatcher([cidrText])(sourceRequest(ip)), false, `${ip} not in ${cidrText}`);
      }),
      2000,
    );
  });

  it('a CIDR written in a policy matches as the matcher does (validate → compile → match)', () => {
    fuzz(
      fc.property(range, ({ base, host, prefix }) => {
        const address = withHostBits(base, host, prefix);
        const cidrText = `${bytesText(base)}/${prefix}`;
        const { documents, errors } = parsePolicies(
          `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec: {firewall: {rules: [{name: r, action: deny, from: ["${cidrText}"]}]}}\n`,
          'p.yaml',
        );
        assert.deepEqual(errors, []);
        const rule = compileSnapshot(documents, 1).policies[0]!.firewall!.rules[0]!;
        const req = sourceRequest(bytesText(address));
        assert.equal(rule.matches(req), sourceMatcher([cidrText])(req));
      }),
      300,
    );
  });

  // --- paths ------------------------------------------------------------------------------------------

  const segment = fc.string({ unit: fc.constantFrom(...'abcXYZ019-._~%:@!$&\'()+,;='), minLength: 1, maxLength: 6 });
  const segments = fc.array(segment, { minLength: 1, maxLength: 5 });

  it('a glob matches the literal path it was built from, and the paths below its prefix', () => {
    fuzz(
      fc.property(segments, fc.nat(), fc.array(segment, { maxLength: 3 }), (segs, cut, more) => {
        const path = `/${segs.join('/')}`;
        assert.ok(pathMatcher([path])(request({ path })), `${path} matches itself`);
        assert.equal(pathMatcher([path])(request({ path: `${path}/` })), false, 'an exact path is exact');

        const k = cut % (segs.length + 1);
        const base = k === 0 ? '' : `/${segs.slice(0, k).join('/')}`;
        const glob = `${base}/*`;
        const below = [path, `${path}/${more.join('/')}`, `${base}/`];
        for (const p of below) assert.ok(pathMatcher([glob])(request({ path: p })), `${glob} matches ${p}`);
        if (base !== '') {
          assert.ok(pathMatcher([glob])(request({ path: base })), `${glob} matches ${base} itself`);
          assert.equal(pathMatcher([glob])(request({ path: `${base}x` })), false, `${glob} does not match ${base}x`);
        }
      }),
      1000,
    );
  });

  it('a glob or regex written in a policy is accepted and matches as the matcher does', () => {
    const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    fuzz(
      fc.property(segments, fc.boolean(), (segs, prefix) => {
        const path = `/${segs.join('/')}`;
        const patterns: PathPattern[] = [prefix ? `${path}/*` : path, { regex: `^${escape(path)}$` }];
        const { documents, errors } = parsePolicies(
          `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: {name: p}\nspec: {selector: {paths: ${JSON.stringify(patterns)}}}\n`,
          'p.yaml',
        );
        assert.deepEqual(errors, []);
        const selector = compileSnapshot(documents, 1).policies[0]!.selector;
        for (const p of [path, `${path}x`, `${path}/y`, '/', '/other']) {
          const req = request({ path: p });
          assert.equal(selector(req), pathMatcher(patterns)(req), p);
        }
        assert.ok(selector(request({ path })));
        assert.ok(pathMatcher([patterns[1]!])(request({ path })), 'the escaped literal regex matches its path');
        assert.equal(pathMatcher([patterns[1]!])(request({ path: `${path}x` })), false);
      }),
      300,
    );
  });

  // --- hosts, headers, principals, ports, methods --------------------------------------------------------

  it('hosts: a name matches itself, "*.suffix" its subdomains only, "*" anything', () => {
    fuzz(
      fc.property(fc.domain(), fc.domain(), (suffix, other) => {
        const host = suffix.toLowerCase();
        assert.ok(hostMatcher([suffix])(request({ host })));
        assert.ok(hostMatcher([`*.${suffix}`])(request({ host: `a.${host}` })));
        assert.equal(hostMatcher([`*.${suffix}`])(request({ host })), false, 'not the suffix itself');
        assert.equal(hostMatcher([`*.${suffix}`])(request({ host: `x${host}` })), false, 'not a longer name ending in it');
        assert.ok(hostMatcher(['*'])(request({ host: other })));
        assert.equal(hostMatcher(['*'])(request({ protocol: 'tcp' })), false, 'a TCP connection has no host');
      }),
      500,
    );
  });

  const headerName = fc.stringMatching(/^[a-z0-9!#$%&'*+.^_`|~-]{1,12}$/);
  const headerValue = fc.string({ maxLength: 20 });

  it('headers: each kind of entry holds exactly when it should; never on a TCP connection', () => {
    const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    fuzz(
      fc.property(headerName, headerValue, fc.dictionary(headerName, headerValue, { maxKeys: 4 }), (name, value, others) => {
        const headers = { ...others, [name]: value };
        const withIt = request({ headers });
        const { [name]: _dropped, ...rest } = headers;
        const without = request({ headers: rest });
        const cases: [HeaderMatchSpec, boolean, boolean][] = [
          [{ name }, true, false],
          [{ name: name.toUpperCase() }, true, false],
          [{ name, present: false }, false, true],
          [{ name, value }, true, false],
          [{ name, value: `${value}x` }, false, false],
          [{ name, regex: `^${escape(value)}$` }, true, false],
        ];
        for (const [spec, expectedWith, expectedWithout] of cases) {
          assert.equal(headerMatcher([spec])(withIt), expectedWith, `${JSON.stringify(spec)} with`);
          assert.equal(headerMatcher([spec])(without), expectedWithout, `${JSON.stringify(spec)} without`);
          assert.equal(headerMatcher([spec])(request({ protocol: 'tcp' })), false, `${JSON.stringify(spec)} on tcp`);
        }
        // Every entry must hold.
        assert.equal(headerMatcher([{ name, value }, { name: `${name}-absent` }])(withIt), `${name}-absent` in headers);
      }),
      500,
    );
  });

  it('principals: exact, or a prefix with a trailing "*"', () => {
    fuzz(
      // A "*" in an id is the prefix wildcard (validation allows it only at the end), so ids here have none.
      fc.property(fc.webUrl().filter((u) => !u.includes('*')), fc.string({ maxLength: 10 }), (id, tail) => {
        assert.ok(principalMatcher([id])(request({ principal: id })));
        assert.equal(principalMatcher([id])(request({ principal: `${id}${tail}` })), tail === '');
        assert.ok(principalMatcher([`${id}*`])(request({ principal: `${id}${tail}` })));
        assert.equal(principalMatcher([`${id}*`])(request({})), false, 'no principal, no match');
      }),
      500,
    );
  });

  it('no request makes a matcher throw, whatever it lacks or carries', () => {
    const oddText = fc.oneof(fc.string({ maxLength: 30 }), fc.string({ unit: 'binary', maxLength: 30 }), fc.constant(''));
    const maybe = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });
    const req: fc.Arbitrary<RequestAttributes> = fc
      .record({
        protocol: fc.constantFrom<'http' | 'tcp'>('http', 'tcp'),
        sourceIp: maybe(addressy),
        destIp: maybe(addressy),
        port: maybe(fc.integer({ min: -1, max: 70_000 })),
        principal: maybe(oddText),
        method: maybe(oddText),
        host: maybe(oddText),
        path: maybe(oddText),
        headers: fc.dictionary(oddText, oddText, { maxKeys: 5 }),
      })
      .map((r) => ({
        protocol: r.protocol,
        source: { ip: r.sourceIp === undefined ? undefined : parseIp(r.sourceIp), principal: r.principal },
        destination: { ip: r.destIp === undefined ? undefined : parseIp(r.destIp), port: r.port },
        method: r.method,
        host: r.host,
        path: r.path,
        headers: new Map(Object.entries(r.headers)),
      }));
    const matchers = [
      portMatcher([1, 80, 65535]),
      methodMatcher(['GET', 'post']),
      hostMatcher(['a.b', '*.c.d', '*', '[::1]']),
      pathMatcher(['/', '/a/*', '/*', { regex: '^/v[0-9]+/' }, { regex: '' }]),
      sourceMatcher(['0.0.0.0/0', '::/0', '::ffff:10.0.0.0/104', '192.0.2.7']),
      destinationMatcher(['10.0.0.0/8', '2001:db8::/32']),
      principalMatcher(['spiffe://a/*', 'x', '*']),
      headerMatcher([{ name: 'x' }, { name: 'y', present: false }, { name: 'z', value: '' }, { name: 'w', regex: '.' }]),
      trafficMatcher({ hosts: ['*'], paths: ['/*'], methods: ['GET'], ports: [80] }),
      trafficMatcher(undefined),
    ];
    fuzz(
      fc.property(req, (r) => {
        for (const m of matchers) assert.equal(typeof m(r), 'boolean');
      }),
      2000,
    );
  });
});
