// ExternalProcessor/Process over the server's own gRPC transport on a loopback port, with a grpc-js
// client: the per-stream state machine as Envoy drives it, without Envoy.
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { ExternalProcessorService, type ExternalProcessorDeps } from '../../src/grpc/extproc/service';
import { AFTER_EXT_AUTHZ_HEADER, ATTRIBUTES_KEY } from '../../src/grpc/extproc/request';
import type { ProcessingRequest } from '../../src/grpc/envoy-types';
import { externalProcessorClient } from '../../src/grpc/protos';
import { GrpcTransport } from '../../src/grpc/transport';
import { rendezvous } from '../../src/middlebox/nat/rendezvous';
import { DecisionLog } from '../../src/observability/decision-log';
import { silentLogger } from '../../src/observability/logger';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { StaticPolicySource } from '../../src/state/port';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { captureLogger } from '../harness/log';
import { snapshot } from '../harness/policy';

const A = '10.0.0.1:8080';
const POOL = ['10.0.0.1:8080', '10.0.0.2:8080', '10.0.0.3:8080'];

const POLICY = `{
  firewall: { rules: [{ name: no-admin, action: deny, paths: ["/admin/*"] }] },
  rateLimits: [
    { name: slow, match: { paths: ["/slow/*"] }, limit: 1, per: 1h, algorithm: fixed-window },
    { name: counted, match: { hosts: [counted.local] }, limit: 1000, per: 1h, algorithm: fixed-window, headers: true } ],
  nat: [
    { name: web, match: { hosts: [vip.local] }, to: ["${A}"] },
    { name: sticky, match: { hosts: [sticky.local] }, to: ${JSON.stringify(POOL)}, affinity: sourceIp },
    { name: users, match: { hosts: [user.local] }, to: ["${A}"], rewriteHost: true, sourceAs: 192.0.2.10 } ] }`;

/** A decoded ProcessingResponse, loosely typed (oneof names, Buffers, numbers). */
type Answer = Record<string, any>;

interface Exchange {
  answers: Answer[];
  /** The status the stream ended with. */
  code: number;
  details: string;
}

type Headers = Record<string, string>;

function headerList(headers: Headers) {
  return Object.entries(headers).map(([key, value]) => ({ key, raw_value: Buffer.from(value) }));
}

/** Source (and more) attributes the way Envoy sends them; protobufjs names Value fields in camelCase. */
function attributes(fields: Record<string, string>) {
  return {
    [ATTRIBUTES_KEY]: { fields: Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, { stringValue: v }])) },
  };
}

function requestHeaders(headers: Headers, extra: Partial<ProcessingRequest> & Record<string, unknown> = {}): Record<string, unknown> {
  return {
    request_headers: { headers: { headers: headerList(headers) }, end_of_stream: false },
    attributes: attributes({ 'source.address': '203.0.113.9:40000', 'destination.address': '127.0.0.1:15001' }),
    ...extra,
  };
}

function responseHeaders(headers: Headers, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { response_headers: { headers: { headers: headerList(headers) } }, ...extra };
}

const GET = (authority: string, path = '/', more: Headers = {}): Headers => ({
  ':method': 'GET',
  ':scheme': 'http',
  ':authority': authority,
  ':path': path,
  ...more,
});

/** set_headers of a HeaderMutation as a name → value map. */
function sets(mutation: Answer | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const o of mutation?.set_headers ?? []) {
    assert.ok(Buffer.isBuffer(o.header.raw_value), `${o.header.key} is sent as raw_value`);
    assert.ok(!o.header.value, `${o.header.key} has no string value`);
    assert.equal(o.append_action, 2, `${o.header.key} overwrites`);
    out.set(o.header.key, o.header.raw_value.toString('utf8'));
  }
  return out;
}

/** The production transport on a loopback port serving only ExternalProcessor, and a client of it. */
async function start(deps: ExternalProcessorDeps): Promise<{ server: GrpcTransport; client: grpc.Client & Record<string, any> }> {
  const server = new GrpcTransport({ maxReceiveMessageBytes: 4 << 20, maxSendMessageBytes: 4 << 20 });
  new ExternalProcessorService(deps).addToServer(server);
  const port = await server.listen({ host: '127.0.0.1', port: 0 });
  const Client = externalProcessorClient();
  return { server, client: new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, any> };
}

describe('ExternalProcessorService', function () {
  let server: GrpcTransport;
  let client: grpc.Client & Record<string, any>;
  const decisions = captureLogger();

  before(async () => {
    ({ server, client } = await start({
      policies: new StaticPolicySource(snapshot({ vip: POLICY })),
      ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() },
      logger: silentLogger(),
      decisionLog: new DecisionLog(decisions.logger),
    }));
  });

  after(() => {
    client?.close();
    server?.forceShutdown();
  });

  /** Sends the messages, half-closes, and collects every answer and the final status. */
  function exchange(messages: Array<Record<string, unknown>>, via = client, metadata = new grpc.Metadata()): Promise<Exchange> {
    return new Promise((resolve, reject) => {
      const call = via.Process(metadata, { deadline: Date.now() + 5000 }) as grpc.ClientDuplexStream<unknown, Answer>;
      const answers: Answer[] = [];
      let settled = false;
      const done = (code: number, details: string) => {
        if (settled) return;
        settled = true;
        resolve({ answers, code, details });
      };
      call.on('data', (a: Answer) => answers.push(a));
      call.on('error', (e: grpc.ServiceError) => done(e.code, e.details));
      call.on('status', (s: grpc.StatusObject) => {
        // 'status' can come before the last 'data'; let pending reads drain first.
        setImmediate(() => done(s.code, s.details));
      });
      call.on('end', () => undefined);
      try {
        for (const m of messages) call.write(m);
        call.end();
      } catch (e) {
        reject(e);
      }
    });
  }

  /** Sends one message at a time and waits for its answer before the next (as Envoy does). */
  function stepwise(messages: Array<Record<string, unknown>>): Promise<Exchange> {
    return new Promise((resolve) => {
      const call = client.Process({ deadline: Date.now() + 5000 }) as grpc.ClientDuplexStream<unknown, Answer>;
      const answers: Answer[] = [];
      let next = 0;
      let settled = false;
      const done = (code: number, details: string) => {
        if (settled) return;
        settled = true;
        resolve({ answers, code, details });
      };
      const send = () => {
        if (next < messages.length) call.write(messages[next++]);
        else call.end();
      };
      call.on('data', (a: Answer) => {
        answers.push(a);
        send();
      });
      call.on('error', (e: grpc.ServiceError) => done(e.code, e.details));
      call.on('status', (s: grpc.StatusObject) => setImmediate(() => done(s.code, s.details)));
      send();
    });
  }

  describe('request headers', () => {
    it('answers a NAT\'d request with one HeadersResponse that sets the destination', async () => {
      const { answers, code } = await exchange([requestHeaders(GET('vip.local', '/x', { 'x-request-id': 'rid-nat-1' }))]);
      assert.equal(code, grpc.status.OK);
      assert.equal(answers.length, 1);
      const [a] = answers;
      assert.equal(a!.response, 'request_headers');
      assert.equal(a!.immediate_response, undefined);
      assert.equal(a!.mode_override, undefined, 'NAT needs the response headers back');
      const common = a!.request_headers.response;
      const set = sets(common.header_mutation);
      assert.equal(set.get('x-envoy-original-dst-host'), A);
      assert.equal(set.get('x-middlebox-decision'), 'rid-nat-1');
      assert.equal(set.has(':authority'), false);
      assert.ok(!common.clear_route_cache, 'no route change without rewriteHost');
    });

    it('rewrites :authority, clears the route cache and hides the source for a rule that asks', async () => {
      const { answers } = await exchange([requestHeaders(GET('user.local', '/', { 'x-forwarded-for': '203.0.113.9' }))]);
      const common = answers[0]!.request_headers.response;
      const set = sets(common.header_mutation);
      assert.equal(set.get('x-envoy-original-dst-host'), A);
      assert.equal(set.get(':authority'), A);
      assert.equal(set.get('x-forwarded-for'), '192.0.2.10');
      assert.equal(set.get('x-real-ip'), '192.0.2.10');
      assert.equal(common.clear_route_cache, true);
    });

    it('reads source.address from the attributes (sourceIp affinity)', async () => {
      for (const ip of ['203.0.113.1', '203.0.113.2', '203.0.113.3', '198.51.100.4']) {
        const msg = requestHeaders(GET('sticky.local'), { attributes: attributes({ 'source.address': `${ip}:5000` }) });
        const { answers } = await exchange([msg]);
        assert.equal(sets(answers[0]!.request_headers.response.header_mutation).get('x-envoy-original-dst-host'), rendezvous(ip, POOL), ip);
      }
    });

    it('skips the response round trip for an unmatched host with nothing to add', async () => {
      const { answers, code } = await exchange([
        requestHeaders(GET('other.local', '/', { 'x-envoy-original-dst-host': '169.254.169.254:80' })),
      ]);
      assert.equal(code, grpc.status.OK);
      assert.equal(answers.length, 1);
      assert.deepEqual(answers[0]!.mode_override, { response_header_mode: 2 });
      const m = answers[0]!.request_headers.response.header_mutation;
      const set = sets(m);
      assert.equal(set.has('x-envoy-original-dst-host'), false);
      assert.deepEqual(m.remove_headers, ['x-envoy-original-dst-host'], 'a client-chosen destination is dropped');
      assert.ok(set.get('x-middlebox-decision'));
    });

    it('overwrites a client-sent x-middlebox-decision and removes other x-middlebox-* headers', async () => {
      const { answers } = await exchange([
        requestHeaders(GET('other.local', '/', { 'x-middlebox-decision': 'forged', 'x-middlebox-nat': 'vip/web', 'x-middlebox-shadow-deny': 'x' })),
      ]);
      const m = answers[0]!.request_headers.response.header_mutation;
      const decision = sets(m).get('x-middlebox-decision');
      assert.ok(decision && decision !== 'forged', `decision id ${decision}`);
      assert.deepEqual([...(m.remove_headers ?? [])].sort(), ['x-middlebox-nat', 'x-middlebox-shadow-deny']);
      assert.ok(!(m.remove_headers ?? []).includes('x-middlebox-decision'), 'overwritten, so not also removed');
    });

    it('keeps the response round trip when a rate limit adds response headers, and adds them there', async () => {
      const { answers } = await stepwise([requestHeaders(GET('counted.local')), responseHeaders({ ':status': '200' })]);
      assert.equal(answers[0]!.mode_override, undefined);
      assert.equal(answers.length, 2);
      const set = sets(answers[1]!.response_headers.response.header_mutation);
      assert.equal(set.get('ratelimit-limit'), '1000');
      assert.ok(Number(set.get('ratelimit-remaining')) < 1000);
      assert.equal(set.has('x-middlebox-nat'), false, 'no NAT, no NAT header');
    });

    it('refuses a request that arrives without the connection attributes (400 missing_attributes)', async () => {
      // Without source.address a CIDR rule could never match, so the request is refused, not guessed.
      // (protobufjs encodes google.protobuf.Value from stringValue; a snake_case string_value is
      // dropped on the client, which makes this the same as sending no attributes.)
      const snake = requestHeaders(GET('vip.local'), {
        attributes: { [ATTRIBUTES_KEY]: { fields: { 'source.address': { string_value: '127.0.0.1:1' } } } },
      });
      const none = requestHeaders(GET('vip.local'), { attributes: undefined });
      for (const msg of [snake, none]) {
        const logged = decisions.lines.length;
        const { answers } = await exchange([msg]);
        assert.equal(answers[0]!.response, 'immediate_response');
        assert.equal(answers[0]!.immediate_response.status.code, 400);
        const body = JSON.parse(answers[0]!.immediate_response.body.toString());
        assert.equal(body.reason, 'missing_attributes');
        await new Promise((r) => setImmediate(r));
        const lines = decisions.lines.slice(logged);
        assert.deepEqual(lines.map((l) => [l.msg, l.decision, l.status, l.reason]), [['denied', body.decision, 400, 'missing_attributes']], 'one decision log line');
      }
    });
  });

  describe('the rest of the stream', () => {
    it('answers each later message once, in order, with CONTINUE-shaped replies, then closes cleanly', async () => {
      const { answers, code } = await stepwise([
        requestHeaders(GET('vip.local', '/')),
        { request_body: { body: Buffer.from('hello'), end_of_stream: true } },
        { request_trailers: { trailers: { headers: headerList({ 'x-t': '1' }) } } },
        responseHeaders({ ':status': '200' }),
        // Nothing is wanted after the response headers: the server has closed the stream, so
        // Envoy goes on without it and these are not answered.
        { response_body: { body: Buffer.from('world'), end_of_stream: false } },
        { response_trailers: { trailers: { headers: [] } } },
      ]);
      assert.equal(code, grpc.status.OK);
      assert.deepEqual(answers.map((a) => a.response), ['request_headers', 'request_body', 'request_trailers', 'response_headers']);
      const [, body, trailers] = answers;
      // CONTINUE (status 0, the default) with nothing to change
      assert.ok(!body!.request_body.response?.status);
      assert.equal(body!.request_body.response?.header_mutation, undefined);
      assert.equal(body!.request_body.response?.body_mutation, undefined);
      assert.equal(trailers!.request_trailers.header_mutation, undefined);
    });

    it('translates location back to the virtual host and names the NAT rule', async () => {
      const { answers, code } = await stepwise([
        requestHeaders(GET('vip.local', '/old')),
        responseHeaders({
          ':status': '302',
          location: `http://${A}/new?x=1#f`,
          'content-location': 'http://elsewhere.local/doc',
        }),
      ]);
      assert.equal(code, grpc.status.OK);
      assert.equal(answers.length, 2);
      const set = sets(answers[1]!.response_headers.response.header_mutation);
      assert.equal(set.get('location'), 'http://vip.local/new?x=1#f');
      assert.equal(set.has('content-location'), false, 'a URL pointing elsewhere is left alone');
      assert.equal(set.get('x-middlebox-nat'), 'vip/web');
    });

    it('translates to the authority the client asked for, port included', async () => {
      const { answers } = await stepwise([
        requestHeaders(GET('vip.local:8443', '/')),
        responseHeaders({ ':status': '301', location: `https://${A}/x` }),
      ]);
      assert.equal(sets(answers[1]!.response_headers.response.header_mutation).get('location'), 'https://vip.local:8443/x');
    });

    it('with nothing to do on the way back, skips the response headers and closes after the request headers', async () => {
      const { answers, code } = await stepwise([requestHeaders(GET('other.local')), responseHeaders({ ':status': '302', location: `http://${A}/x` })]);
      assert.equal(code, grpc.status.OK);
      assert.equal(answers.length, 1);
      assert.equal(answers[0]!.mode_override?.response_header_mode, 2);
    });
  });

  describe('after ext_authz on the same listener (the bootstrap\'s initial_metadata says so)', () => {
    let own: Awaited<ReturnType<typeof start>>;
    const afterAuthz = () => {
      const md = new grpc.Metadata();
      md.set(AFTER_EXT_AUTHZ_HEADER, 'true');
      return md;
    };

    before(async () => {
      own = await start({
        policies: new StaticPolicySource(snapshot({ vip: POLICY })),
        ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() },
        logger: silentLogger(),
      });
    });

    after(() => {
      own?.client.close();
      own?.server.forceShutdown();
    });

    it('charges no rate limit again: a limit of one still admits one request after three were translated', async () => {
      for (let i = 0; i < 3; i++) {
        const { answers } = await exchange([requestHeaders(GET('vip.local', `/slow/${i}`))], own.client, afterAuthz());
        assert.equal(answers[0]!.response, 'request_headers', `request ${i} goes on`);
        assert.equal(sets(answers[0]!.request_headers.response.header_mutation).get('x-envoy-original-dst-host'), A, 'and is still translated');
      }
      const first = await exchange([requestHeaders(GET('vip.local', '/slow/a'))], own.client);
      assert.equal(first.answers[0]!.response, 'request_headers', 'the limit\'s one token was still there');
      const second = await exchange([requestHeaders(GET('vip.local', '/slow/b'))], own.client);
      assert.equal(second.answers[0]!.immediate_response?.status.code, 429);
    });

    it('does not decide the firewall again, keeps ext_authz\'s decision id and removes none of its headers', async () => {
      const { answers, code } = await exchange(
        [requestHeaders(GET('vip.local', '/admin/x', { 'x-middlebox-decision': 'from-authz', 'x-middlebox-shadow-deny': 'firewall/vip/r' }))],
        own.client,
        afterAuthz(),
      );
      assert.equal(code, grpc.status.OK);
      assert.equal(answers[0]!.response, 'request_headers', 'ext_authz let it through; ext_proc does not refuse it');
      const m = answers[0]!.request_headers.response.header_mutation;
      assert.equal(sets(m).get('x-envoy-original-dst-host'), A);
      assert.equal(sets(m).has('x-middlebox-decision'), false, 'ext_authz\'s id stays');
      assert.deepEqual(m.remove_headers ?? [], []);
    });

    it('with nothing to translate, lets the request through and skips the response round trip', async () => {
      const { answers } = await exchange([requestHeaders(GET('other.local', '/'))], own.client, afterAuthz());
      assert.equal(answers[0]!.response, 'request_headers');
      assert.equal(answers[0]!.mode_override?.response_header_mode, 2);
      assert.deepEqual(sets(answers[0]!.request_headers.response.header_mutation), new Map());
    });
  });

  describe('denials', () => {
    it('answers a firewall deny with an immediate 403 naming policy and rule', async () => {
      const { answers, code } = await exchange([requestHeaders(GET('vip.local', '/admin/x', { 'x-request-id': 'rid-deny' }))]);
      assert.equal(code, grpc.status.OK);
      assert.equal(answers.length, 1);
      const imm = answers[0]!.immediate_response;
      assert.ok(imm, 'an immediate response');
      assert.equal(answers[0]!.response, 'immediate_response');
      assert.equal(imm.status.code, 403);
      assert.equal(imm.details, 'middlebox_firewall_rule_deny');
      const set = sets(imm.headers);
      assert.equal(set.get('content-type'), 'application/json');
      assert.equal(set.get('x-middlebox-decision'), 'rid-deny');
      const body = JSON.parse(Buffer.from(imm.body).toString('utf8'));
      assert.deepEqual(body, {
        error: 'forbidden',
        reason: 'firewall_rule_deny',
        middlebox: 'firewall',
        policy: 'vip',
        rule: 'no-admin',
        decision: 'rid-deny',
      });
    });

    it('ignores what follows a denial and ends the stream cleanly', async () => {
      const { answers, code } = await exchange([
        requestHeaders(GET('vip.local', '/admin/x')),
        { request_body: { body: Buffer.from('x'), end_of_stream: true } },
        responseHeaders({ ':status': '200' }),
      ]);
      assert.equal(code, grpc.status.OK);
      assert.deepEqual(answers.map((a) => a.response), ['immediate_response']);
    });

    it('answers a rate-limit deny with an immediate 429 and retry-after', async () => {
      const first = await exchange([requestHeaders(GET('vip.local', '/slow/a'))]);
      assert.equal(first.answers[0]!.response, 'request_headers');
      const second = await exchange([requestHeaders(GET('vip.local', '/slow/b'))]);
      const imm = second.answers[0]!.immediate_response;
      assert.ok(imm, 'the second request in the hour is refused');
      assert.equal(imm.status.code, 429);
      const set = sets(imm.headers);
      const retry = Number(set.get('retry-after'));
      assert.ok(Number.isInteger(retry) && retry > 0 && retry <= 3600, `retry-after ${set.get('retry-after')}`);
      const body = JSON.parse(Buffer.from(imm.body).toString('utf8'));
      assert.deepEqual([body.error, body.reason, body.middlebox, body.policy, body.rule], ['too_many_requests', 'rate_limited', 'ratelimit', 'vip', 'slow']);
    });

    it('refuses headers over 64 KiB with an immediate 431', async () => {
      const { answers, code } = await exchange([requestHeaders(GET('vip.local', '/', { 'x-big': 'a'.repeat(70 * 1024) }))]);
      assert.equal(code, grpc.status.OK);
      const imm = answers[0]!.immediate_response;
      assert.equal(imm?.status.code, 431);
      assert.equal(JSON.parse(Buffer.from(imm.body).toString('utf8')).reason, 'headers_too_large');
    });

    it('refuses a source.address that is not an IP with an immediate 400', async () => {
      const msg = requestHeaders(GET('vip.local'), { attributes: attributes({ 'source.address': 'not-an-ip:4000' }) });
      const { answers } = await exchange([msg]);
      const imm = answers[0]!.immediate_response;
      assert.equal(imm?.status.code, 400);
      assert.equal(JSON.parse(Buffer.from(imm.body).toString('utf8')).reason, 'invalid_source_address');
    });
  });

  it('sends no answers in observability mode and still ends the stream cleanly', async () => {
    const { answers, code } = await exchange([
      requestHeaders(GET('vip.local', '/'), { observability_mode: true }),
      { request_body: { body: Buffer.from('x') }, observability_mode: true },
      responseHeaders({ ':status': '302', location: `http://${A}/x` }, { observability_mode: true }),
    ]);
    assert.equal(code, grpc.status.OK);
    assert.deepEqual(answers, []);
  });

  // Regression: the cap is on bytes (UTF-8), not characters.
  it('counts header bytes, not characters, against the 64 KiB cap', async () => {
    const { answers } = await exchange([requestHeaders(GET('vip.local', '/', { 'x-big': '\u00e9'.repeat(40_000) }))]);
    assert.equal(answers[0]!.immediate_response?.status.code, 431);
  });

  describe('when shared state does not answer', () => {
    let failing: { server: GrpcTransport; client: grpc.Client & Record<string, any> };

    before(async () => {
      const nat = new MemoryNatTable();
      nat.assign = () => Promise.reject(new Error('etcd unavailable'));
      failing = await start({
        policies: new StaticPolicySource(snapshot({ vip: POLICY })),
        ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat },
        logger: silentLogger(),
      });
    });

    after(() => {
      failing?.client.close();
      failing?.server.forceShutdown();
    });

    it('fails closed with an immediate 503 and keeps the stream healthy', async () => {
      const msg = requestHeaders(GET('sticky.local'), { attributes: attributes({ 'source.address': '203.0.113.50:1' }) });
      const { answers, code } = await exchange([msg], failing.client);
      assert.equal(code, grpc.status.OK);
      const imm = answers[0]!.immediate_response;
      assert.equal(imm?.status.code, 503);
      assert.equal(JSON.parse(Buffer.from(imm.body).toString('utf8')).reason, 'state_unavailable');
      // round robin needs no shared state and still works
      const rr = await exchange([requestHeaders(GET('vip.local'))], failing.client);
      assert.equal(sets(rr.answers[0]!.request_headers.response.header_mutation).get('x-envoy-original-dst-host'), A);
    });
  });

  describe('messages out of order', () => {
    const cases: Array<[string, Array<Record<string, unknown>>, number, RegExp]> = [
      ['request_headers twice', [requestHeaders(GET('vip.local')), requestHeaders(GET('vip.local'))], 1, /request_headers arrived out of order/],
      ['request_body before request_headers', [{ request_body: { body: Buffer.from('x') } }], 0, /request_body arrived out of order/],
      ['response_body before response_headers', [requestHeaders(GET('vip.local')), { response_body: {} }], 1, /response_body arrived out of order/],
      ['an empty message', [{}], 0, /carries none of/],
    ];
    for (const [name, messages, answered, details] of cases) {
      it(`ends the stream with INVALID_ARGUMENT: ${name}`, async () => {
        const { answers, code, details: got } = await exchange(messages);
        assert.equal(code, grpc.status.INVALID_ARGUMENT, `status ${code}: ${got}`);
        assert.match(got, details);
        assert.equal(answers.length, answered, 'messages in order before the bad one are answered');
      });
    }

    // Regression: with ext_authz before ext_proc, a request ext_authz denied reached the client as
    // a 500, because the local reply's response headers ended this stream with an error.
    it('lets a local reply through untouched when response_headers come first', async () => {
      const { answers, code } = await exchange([responseHeaders({ ':status': '403', 'x-middlebox-decision': 'd1' })]);
      assert.equal(code, grpc.status.OK);
      assert.deepEqual(answers.map((a) => a.response), ['response_headers']);
      assert.deepEqual(answers[0]!.response_headers.response ?? {}, {});
    });

    it('leaves other streams alone', async () => {
      const [bad, good] = await Promise.all([exchange([{}]), exchange([requestHeaders(GET('vip.local'))])]);
      assert.equal(bad.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(good.code, grpc.status.OK);
      assert.equal(good.answers[0]!.response, 'request_headers');
    });
  });
});
