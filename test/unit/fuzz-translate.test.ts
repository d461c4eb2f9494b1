// Property and fuzz tests of the Envoy message translation: CheckRequest (ext_authz) and
// ProcessingRequest (ext_proc) shaped as @grpc/proto-loader decodes them (keepCase, defaults off:
// any field may be missing), with odd addresses, odd attribute values and header blocks around the
// size cap. Whatever the message: the translation returns, and what it returns is either a request
// the pipeline can decide or a refusal that names what is wrong.
//
// Bounded: a fixed number of runs per property and a time limit (test/harness/fuzz.ts).
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { translateCheckRequest, type Translation, type TranslationLimits } from '../../src/grpc/authz/request';
import type { CheckRequest, HeaderValue, ProcessingRequest, StructValue } from '../../src/grpc/envoy-types';
import { ATTRIBUTES_KEY, translateRequestHeaders } from '../../src/grpc/extproc/request';
import { parseIp } from '../../src/middlebox/ip';
import { decide } from '../../src/middlebox/pipeline';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { snapshot } from '../harness/policy';
import { FUZZ_TIME_LIMIT_MS, fuzz } from '../harness/fuzz';

const SNAPSHOT = snapshot({
  shop: `{ firewall: { default: allow, rules: [
      { name: no-admin, action: deny, paths: ["/admin/*"] },
      { name: blocked, action: deny, from: ["192.0.2.0/24", "2001:db8::/32"], to: ["10.0.0.0/8"] },
      { name: debug, action: deny, headers: [{ name: x-debug, regex: "^1" }], hosts: ["*.local"] },
      { name: ssh, action: deny, ports: [22], principals: ["spiffe://x/*"] } ] },
    rateLimits: [ { name: all, limit: 1000000, per: 1s, by: [sourceIp, "header:x-key", host, path, principal] } ],
    nat: [ { name: vip, match: { hosts: ["vip.local"] }, to: ["10.0.0.1:80", "10.0.0.2:80"], affinity: "header:x-user" } ] }`,
});

const REASONS = new Set(['missing_attributes', 'invalid_source_address', 'invalid_destination_address', 'headers_too_large']);

// --- generators: the shapes proto-loader produces, with odd contents ------------------------------------

/** Mostly absent fields are absent (proto3, defaults off); the rest of the time they are there. */
function sometimes<T>(arb: fc.Arbitrary<T>, absentOneIn = 5): fc.Arbitrary<T | undefined> {
  return fc.option(arb, { nil: undefined, freq: absentOneIn });
}

/** Drops absent fields, as the decoder leaves them out. */
function present<T extends object>(value: T): T {
  for (const key of Object.keys(value) as (keyof T)[]) if (value[key] === undefined) delete value[key];
  return value;
}

const oddAddress = fc.oneof(
  fc.constantFrom(
    '', '10.0.0.256', '1.2.3', '010.0.0.1', '[::1]', '[::1', '::ffff:1.2.3.999', 'fe80::1%eth0', '2001:db8:::1', 'localhost', ' 127.0.0.1',
    '127.0.0.1 ', '1.2.3.4:80', '[2001:db8::1]:80', ':80', 'a:b:c', '%', '[]',
  ),
  fc.ipV4Extended(),
  fc.string({ maxLength: 20 }),
);
const goodAddress = fc.oneof(
  fc.ipV4(),
  fc.ipV6(),
  fc.ipV4().map((ip) => `::ffff:${ip}`),
  fc.constantFrom('127.0.0.1', '0.0.0.0', '255.255.255.255', '::', '::1', '192.0.2.9', '2001:db8::7', '10.1.2.3'),
);
const addressText = fc.oneof({ weight: 4, arbitrary: goodAddress }, { weight: 1, arbitrary: oddAddress });

const text = fc.oneof(fc.string({ maxLength: 30 }), fc.string({ unit: 'binary', maxLength: 30 }));
const headerName = fc.oneof(
  fc.constantFrom(':authority', ':path', ':method', 'host', 'Host', 'X-Debug', 'x-key', 'x-user', 'x-request-id', '', 'x-envoy-original-dst-host'),
  fc.string({ maxLength: 12 }),
);
/** Mostly small, sometimes near or past the 64 KiB cap. */
const headerText = fc.oneof(
  { weight: 12, arbitrary: fc.oneof(text, fc.constantFrom('1', 'vip.local', '/admin/x', 'GET')) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 70_000 }).map((n) => 'v'.repeat(n)) },
);

const headerValue: fc.Arbitrary<HeaderValue> = fc
  .record({ key: sometimes(headerName, 10), value: sometimes(headerText, 3), raw_value: sometimes(fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)), 2) })
  .map(present);

const port = fc.oneof(fc.integer({ min: 1, max: 65535 }), fc.constantFrom(0, 65536, 70_000));

const peer = fc
  .record({
    address: sometimes(
      fc
        .record({
          socket_address: sometimes(fc.record({ address: sometimes(addressText, 10), port_value: sometimes(port) }).map(present), 10),
          pipe: sometimes(fc.record({ path: text }), 2),
        })
        .map(present),
      8,
    ),
    principal: sometimes(fc.oneof(text, fc.constant('spiffe://x/y')), 2),
    service: sometimes(text, 2),
  })
  .map(present);

const httpAttributes = fc
  .record({
    id: sometimes(text),
    method: sometimes(fc.oneof(fc.constantFrom('GET', 'post', '', 'CONNECT'), text)),
    headers: sometimes(fc.dictionary(headerName, headerText, { maxKeys: 8 }), 2),
    header_map: sometimes(fc.record({ headers: sometimes(fc.array(headerValue, { maxLength: 8 }), 8) }).map(present), 2),
    path: sometimes(fc.oneof(fc.constantFrom('/', '/admin/x', '/a?b#c', '?x', '', '#', '/%2e%2e/admin'), fc.webPath(), text)),
    host: sometimes(fc.oneof(fc.constantFrom('vip.local', 'a.local:8080', '[::1]:80', '[::1', 'HOST.LOCAL.', ':', ''), fc.domain(), text)),
    scheme: sometimes(text, 2),
    protocol: sometimes(text, 2),
  })
  .map(present);

const checkRequest: fc.Arbitrary<CheckRequest> = fc
  .record({
    attributes: sometimes(
      fc
        .record({
          source: sometimes(peer, 10),
          destination: sometimes(peer, 10),
          request: sometimes(fc.record({ http: sometimes(httpAttributes, 4) }).map(present), 3),
        })
        .map(present),
      20,
    ),
  })
  .map(present);

/** google.protobuf.Value as protobufjs decodes it: one of its kinds, named in camelCase (or, in tests, snake_case). */
const structValue: fc.Arbitrary<StructValue> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ stringValue: addressText }) },
  { weight: 2, arbitrary: fc.record({ stringValue: fc.tuple(addressText, port).map(([a, p]) => (a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`)) }) },
  { weight: 1, arbitrary: fc.record({ string_value: addressText }) },
  { weight: 1, arbitrary: fc.record({ stringValue: fc.oneof(port.map(String), text) }) },
  { weight: 1, arbitrary: fc.record({ numberValue: fc.oneof(port, fc.integer(), fc.double()) }) },
  { weight: 1, arbitrary: fc.record({ number_value: fc.double() }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom<StructValue>(
      { kind: 'boolValue', boolValue: true } as StructValue,
      { kind: 'nullValue', nullValue: 0 } as StructValue,
      { kind: 'listValue', listValue: { values: [] } } as StructValue,
      { kind: 'structValue', structValue: { fields: {} } } as StructValue,
      {} as StructValue,
    ),
  },
);

const attributeFields = fc
  .record({
    'source.address': sometimes(structValue, 10),
    'source.port': sometimes(structValue, 2),
    'destination.address': sometimes(structValue, 5),
    'destination.port': sometimes(structValue, 2),
    'connection.uri_san_peer_certificate': sometimes(structValue, 2),
    'request.id': sometimes(structValue, 2),
    x: sometimes(structValue, 2),
  })
  .map((fields) => present(fields) as Record<string, StructValue>);

const processingRequest: fc.Arbitrary<ProcessingRequest> = fc
  .record({
    request_headers: sometimes(
      fc.record({ headers: sometimes(fc.record({ headers: sometimes(fc.array(headerValue, { maxLength: 8 }), 10) }).map(present), 10), end_of_stream: fc.boolean() }).map(present),
      10,
    ),
    attributes: sometimes(
      fc.oneof(
        { weight: 8, arbitrary: attributeFields.map((fields) => ({ [ATTRIBUTES_KEY]: { fields } })) },
        { weight: 1, arbitrary: fc.dictionary(fc.constantFrom(ATTRIBUTES_KEY, 'envoy.filters.http.ext_authz', ''), fc.record({ fields: attributeFields }), { maxKeys: 2 }) },
      ),
      10,
    ),
    observability_mode: sometimes(fc.boolean(), 2),
    request: sometimes(fc.constantFrom('request_headers', 'response_headers'), 2),
  })
  .map(present);

const limits = fc.oneof(fc.constant(64 * 1024), fc.integer({ min: 0, max: 100_000 })).map((maxHeaderBytes): TranslationLimits => ({ maxHeaderBytes }));

// --- what every translation must be ---------------------------------------------------------------------

function checkTranslation(t: Translation, maxHeaderBytes: number): void {
  if (!t.ok) {
    assert.ok(REASONS.has(t.reason), t.reason);
    assert.ok(t.status === 400 || t.status === 431, String(t.status));
    assert.equal(t.status === 431, t.reason === 'headers_too_large');
    assert.ok(t.message.length > 0);
    // Located: the message names the part of the message that is wrong.
    const names: Record<string, RegExp> = {
      missing_attributes: /attributes|source\.address/,
      invalid_source_address: /source/,
      invalid_destination_address: /destination/,
      headers_too_large: /headers/,
    };
    assert.match(t.message, names[t.reason]!);
    return;
  }
  const r = t.request;
  assert.ok(r.protocol === 'http' || r.protocol === 'tcp');
  let bytes = 0;
  for (const [name, value] of r.headers) {
    assert.equal(name, name.toLowerCase(), 'header names are lower case');
    bytes += Buffer.byteLength(name) + Buffer.byteLength(value);
  }
  // Repeated names join with ",", so the map can hold at most one byte per repeat more than was read.
  assert.ok(bytes <= maxHeaderBytes * 2 + 1, 'headers within the cap');
  for (const ip of [r.source.ip, r.destination.ip]) {
    if (ip === undefined) continue;
    assert.ok(ip.family === 4 ? ip.bytes.length === 4 : ip.bytes.length === 16);
    assert.equal(parseIp(ip.text)?.text, ip.text, 'canonical address text');
  }
  if (r.protocol === 'http') {
    assert.equal(typeof r.method, 'string');
    assert.equal(r.method, r.method!.toUpperCase());
    assert.equal(typeof r.host, 'string');
    assert.doesNotMatch(r.path!, /[?#]/, 'path without query or fragment');
  } else {
    assert.equal(r.headers.size, 0);
  }
  // Verdict-able: the pipeline decides it (every matcher, every key part, NAT) without throwing.
  const verdict = decide(SNAPSHOT, r, { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() }, 1_700_000_000_000, { nat: true });
  assert.ok(!(verdict instanceof Promise));
  assert.equal(typeof verdict.allow, 'boolean');
}

/** The bytes HeaderCollector counts for a list of HeaderValue. */
function headerBytes(values: readonly HeaderValue[] | undefined): number {
  let n = 0;
  for (const h of values ?? []) n += Buffer.byteLength(h.key ?? '') + Buffer.byteLength(h.value || (h.raw_value ? h.raw_value.toString('utf8') : ''));
  return n;
}

describe('fuzz: Envoy message translation', function () {
  this.timeout(FUZZ_TIME_LIMIT_MS * 2 + 20_000);

  it('CheckRequest: never throws; a decidable request or a located refusal', () => {
    fuzz(
      fc.property(checkRequest, limits, (msg, lim) => checkTranslation(translateCheckRequest(msg, lim), lim.maxHeaderBytes)),
      500,
    );
  });

  it('CheckRequest: refused for its headers exactly when they pass the cap', () => {
    fuzz(
      fc.property(checkRequest, limits, (msg, lim) => {
        const t = translateCheckRequest(msg, lim);
        const http = msg.attributes?.request?.http;
        if (!t.ok && t.reason !== 'headers_too_large') return;
        if (!http) return;
        let bytes = headerBytes(http.header_map?.headers);
        for (const name in http.headers ?? {}) bytes += Buffer.byteLength(name) + Buffer.byteLength(http.headers![name] ?? '');
        assert.equal(!t.ok, bytes > lim.maxHeaderBytes);
      }),
      300,
    );
  });

  it('CheckRequest: a well-formed HTTP check keeps its attributes', () => {
    fuzz(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: 1, max: 65535 }), fc.webPath(), fc.domain(), (ip, port, path, host) => {
        const p = path.startsWith('/') ? path : `/${path}`;
        const t = translateCheckRequest({
          attributes: {
            source: { address: { socket_address: { address: ip, port_value: port } } },
            destination: { address: { socket_address: { address: '10.0.0.1', port_value: 8080 } } },
            request: { http: { method: 'get', path: `${p}?q=1`, host: `${host}:8080`, headers: { 'X-A': 'b' } } },
          },
        });
        assert.ok(t.ok);
        assert.equal(t.request.source.ip?.text, parseIp(ip)!.text);
        assert.equal(t.request.source.port, port);
        assert.equal(t.request.path, p.replace(/#.*$/, ''));
        assert.equal(t.request.host, host.toLowerCase());
        assert.equal(t.request.method, 'GET');
        assert.equal(t.request.headers.get('x-a'), 'b');
        checkTranslation(t, 64 * 1024);
      }),
      300,
    );
  });

  it('ProcessingRequest: never throws; a decidable request or a located refusal', () => {
    fuzz(
      fc.property(processingRequest, limits, (msg, lim) => checkTranslation(translateRequestHeaders(msg, lim), lim.maxHeaderBytes)),
      500,
    );
  });

  it('ProcessingRequest: refused for its headers exactly when they pass the cap', () => {
    fuzz(
      fc.property(processingRequest, limits, (msg, lim) => {
        const t = translateRequestHeaders(msg, lim);
        const bytes = headerBytes(msg.request_headers?.headers?.headers);
        // Headers are read first, so the cap decides before anything else is looked at.
        assert.equal(!t.ok && t.reason === 'headers_too_large', bytes > lim.maxHeaderBytes);
      }),
      300,
    );
  });

  it('ProcessingRequest: source and destination "ip:port" attributes, in every form Envoy writes them', () => {
    const endpoint = fc.tuple(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: 1, max: 65535 }));
    fuzz(
      fc.property(endpoint, endpoint, fc.boolean(), ([sip, sport], [dip, dport], portSeparately) => {
        const hostPort = (ip: string, port: number) => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);
        const fields: Record<string, StructValue> = {
          'source.address': { stringValue: portSeparately ? sip : hostPort(sip, sport) },
          'destination.address': { stringValue: hostPort(dip, dport) },
        };
        if (portSeparately) fields['source.port'] = { numberValue: sport };
        const t = translateRequestHeaders(
          { request_headers: { headers: { headers: [{ key: ':path', value: '/x' }] } }, attributes: { [ATTRIBUTES_KEY]: { fields } } },
          { maxHeaderBytes: 1024 },
        );
        assert.ok(t.ok, JSON.stringify(t));
        assert.equal(t.request.source.ip?.text, parseIp(sip)!.text);
        assert.equal(t.request.source.port, sport);
        assert.equal(t.request.destination.ip?.text, parseIp(dip)!.text);
        assert.equal(t.request.destination.port, dport);
        checkTranslation(t, 1024);
      }),
      300,
    );
  });
});
