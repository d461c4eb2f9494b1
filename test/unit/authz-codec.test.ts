// The Check codec the server uses (protobufjs without proto-loader's object conversions) against
// proto-loader's: the same bytes decode to the same decision input, and every response the
// middlebox builds encodes to a message that decodes the same.
import assert from 'node:assert/strict';
import { translateCheckRequest } from '../../src/grpc/authz/request';
import { checkResponse } from '../../src/grpc/authz/response';
import type { CheckRequest, CheckResponse } from '../../src/grpc/envoy-types';
import { authorizationService, fastCheckCodec } from '../../src/grpc/protos';
import type { Verdict } from '../../src/middlebox/types';
import { httpCheck } from '../harness/check';

const slow = authorizationService().Check!;
const fast = fastCheckCodec();

const REQUESTS: Array<[string, CheckRequest]> = [
  ['plain GET', httpCheck({ path: '/products/42?x=1', host: 'app.local:8080' })],
  ['headers, IPv6 source', httpCheck({ source: '2001:db8::7', headers: { authorization: 'Bearer x', 'x-multi': 'a,b', 'x-empty': '' } })],
  ['unicode header value', httpCheck({ headers: { 'x-name': 'café ☕' } })],
  ['no http (network filter)', { attributes: { source: { address: { socket_address: { address: '10.1.2.3', port_value: 5555 } } }, destination: { address: { socket_address: { address: '127.0.0.1', port_value: 15007 } } } } }],
  ['peer principal, no ports', { attributes: { source: { principal: 'spiffe://cluster.local/ns/a/sa/b', address: { socket_address: { address: '10.0.0.9' } } }, request: { http: { path: '/a', headers: {} } } } } as CheckRequest],
  [
    'header_map with raw values instead of headers',
    { attributes: { source: { address: { socket_address: { address: '10.0.0.1', port_value: 1 } } }, request: { http: { header_map: { headers: [{ key: ':path', raw_value: Buffer.from('/raw') }, { key: 'x-r', raw_value: Buffer.from('v') }] } } } } } as unknown as CheckRequest,
  ],
  ['no attributes', {}],
  ['source that is not an IP', { attributes: { source: { address: { socket_address: { address: 'not-an-ip', port_value: 1 } } } } }],
];

const VERDICTS: Array<[string, Verdict, 'http' | 'tcp', string[]?]> = [
  ['allow', { allow: true, reason: 'allowed' }, 'http'],
  [
    'allow with headers, response headers, a shadow denial, client x-middlebox-* to remove',
    {
      allow: true,
      reason: 'allowed',
      headers: [{ key: 'x-middlebox-ratelimit-remaining', value: '41' }],
      responseHeaders: [{ key: 'x-ratelimit-limit', value: '100' }],
      shadowDenials: [{ middlebox: 'firewall', policy: 'p', rule: 'r' }],
    } as Verdict,
    'http',
    ['x-middlebox-forged'],
  ],
  ['firewall deny', { allow: false, status: 403, reason: 'firewall_rule', middlebox: 'firewall', policy: 'p', rule: 'no-admin' } as Verdict, 'http'],
  ['rate limited', { allow: false, status: 429, reason: 'rate_limited', middlebox: 'ratelimit', policy: 'p', rule: 'r', headers: [{ key: 'retry-after', value: '1' }] } as Verdict, 'http'],
  ['tcp allow', { allow: true, reason: 'allowed' }, 'tcp'],
  ['tcp deny', { allow: false, status: 403, reason: 'firewall_rule', middlebox: 'firewall', policy: 'p', rule: 'tcp' } as Verdict, 'tcp'],
];

describe('Check codec (protobufjs, no object conversions)', () => {
  for (const [name, req] of REQUESTS) {
    it(`decodes to the same decision input as proto-loader: ${name}`, () => {
      const bytes = slow.requestSerialize(req);
      const viaFast = translateCheckRequest(fast.decodeRequest(bytes) as CheckRequest);
      const viaSlow = translateCheckRequest(slow.requestDeserialize(bytes) as CheckRequest);
      assert.deepEqual(viaFast, viaSlow);
    });
  }

  for (const [name, verdict, protocol, own] of VERDICTS) {
    it(`encodes what proto-loader encodes: ${name}`, () => {
      const res = checkResponse(verdict, 'decision-1', protocol, own);
      const viaFast = fast.encodeResponse(res);
      const viaSlow = slow.responseSerialize(res);
      assert.deepEqual(slow.responseDeserialize(viaFast) as CheckResponse, slow.responseDeserialize(viaSlow) as CheckResponse);
      assert.equal(viaFast.equals(viaSlow), true, 'byte for byte');
    });
  }
});
