import assert from 'node:assert/strict';
import type { Verdict } from '../../src/middlebox/types';
import { DecisionLog, decisionLogSettings, REDACTED } from '../../src/observability/decision-log';
import { captureLogger as capture } from '../harness/log';
import { request } from '../harness/request';

const ALLOW: Verdict = { allow: true, reason: 'allowed' };
const DENY: Verdict = { allow: false, status: 403, reason: 'firewall_rule_deny', middlebox: 'firewall', policy: 'shop', rule: 'no-admin' };
const SHADOW: Verdict = { allow: true, reason: 'allowed', shadowDenials: [{ middlebox: 'firewall', policy: 'shop', rule: 'beta' }] } as Verdict;

describe('DecisionLog', () => {
  it('by default logs every denial and shadow denial, and no plain allow', async () => {
    const { logger, lines } = capture();
    const log = new DecisionLog(logger);
    log.record(request({ path: '/a' }), 'd1', ALLOW, 1);
    log.record(request({ path: '/admin' }), 'd2', DENY, 2.5);
    log.record(request({ path: '/beta' }), 'd3', SHADOW, 1);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(lines.map((l) => l.decision), ['d2', 'd3']);
    assert.equal(lines[0]!.rule, 'no-admin');
    assert.equal(lines[0]!.latency_ms, 2.5);
    assert.equal(lines[0]!.msg, 'denied');
    assert.equal(lines[1]!.msg, 'allowed (shadow deny)');
  });

  it('says where a connection went: an outbound one\'s source is only the pod itself', async () => {
    const { logger, lines } = capture();
    const log = new DecisionLog(logger);
    log.record(request({ protocol: 'tcp', to: '203.0.113.9', port: 5432 }), 'd1', DENY, 1);
    log.record(request({ protocol: 'tcp', to: '2001:db8::1', port: 443 }), 'd2', DENY, 1);
    await new Promise((r) => setImmediate(r));
    assert.equal(lines[0]!.destination, '203.0.113.9:5432');
    assert.equal(lines[1]!.destination, '[2001:db8::1]:443');
    assert.equal(lines[0]!.protocol, 'tcp');
  });

  it('"all" logs allows too; "off" logs nothing', async () => {
    const all = capture();
    new DecisionLog(all.logger, decisionLogSettings('all')).record(request(), 'd1', ALLOW, 1);
    const off = capture();
    new DecisionLog(off.logger, decisionLogSettings('off')).record(request(), 'd2', DENY, 1);
    await new Promise((r) => setImmediate(r));
    assert.equal(all.lines.length, 1);
    assert.equal(all.lines[0]!.msg, 'allowed');
    assert.equal(off.lines.length, 0);
  });

  it('logs a request refused unread as a denial with what is known, under the same settings', async () => {
    const { logger, lines } = capture();
    const refused: Verdict = { allow: false, status: 431, reason: 'headers_too_large' };
    new DecisionLog(logger).refused('d1', refused, 'request headers exceed 1024 bytes (--max-header-bytes)', 0.2);
    const off = capture();
    new DecisionLog(off.logger, decisionLogSettings('off')).refused('d2', refused, undefined, 1);
    const sampled = capture();
    const draws = [0.9, 0.1];
    const log = new DecisionLog(sampled.logger, decisionLogSettings('denied', '0.5'), () => draws.shift()!);
    log.refused('d3', refused, undefined, 1);
    log.refused('d4', refused, undefined, 1);
    await new Promise((r) => setImmediate(r));
    assert.equal(lines.length, 1);
    assert.deepEqual(
      [lines[0]!.msg, lines[0]!.decision, lines[0]!.allow, lines[0]!.status, lines[0]!.reason, lines[0]!.detail, lines[0]!.latency_ms],
      ['denied', 'd1', false, 431, 'headers_too_large', 'request headers exceed 1024 bytes (--max-header-bytes)', 0.2],
    );
    assert.equal(off.lines.length, 0);
    assert.deepEqual(sampled.lines.map((l) => [l.decision, l.sample]), [['d4', 0.5]]);
    // The detail may quote what the client sent (an address that is none): it is cut too.
    const long = capture();
    new DecisionLog(long.logger).refused('d5', refused, `source address ${JSON.stringify('x'.repeat(100_000))} is not an IP`, 1);
    await new Promise((r) => setImmediate(r));
    assert.ok(long.lines[0]!.detail.length < 1100 && /characters\)$/.test(long.lines[0]!.detail));
    assert.deepEqual(log.stats, { written: 1, sampledOut: 1 });
  });

  it('keeps the sampled share of lines and says the rate in each', async () => {
    const { logger, lines } = capture();
    const draws = [0.1, 0.3, 0.2, 0.9, 0.24, 0.26];
    const log = new DecisionLog(logger, decisionLogSettings('all', '0.25'), () => draws.shift()!);
    for (let i = 0; i < 6; i++) log.record(request(), `d${i}`, ALLOW, 1);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(lines.map((l) => l.decision), ['d0', 'd2', 'd4']);
    assert.equal(lines[0]!.sample, 0.25);
    assert.deepEqual(log.stats, { written: 3, sampledOut: 3 });
  });

  it('replaces credentials and configured headers, whatever their case in the flag', async () => {
    const { logger, lines } = capture();
    const log = new DecisionLog(logger, decisionLogSettings('denied', '1', ' X-Tenant-Key ,x-other'));
    const req = request({ headers: { authorization: 'Bearer t', cookie: 'a=b', 'proxy-authorization': 'p', 'x-api-key': 'k', 'x-tenant-key': 'tk', 'x-other': 'o', accept: '*/*' } });
    log.record(req, 'd1', DENY, 1);
    await new Promise((r) => setImmediate(r));
    const h = lines[0]!.headers as Record<string, string>;
    for (const name of ['authorization', 'cookie', 'proxy-authorization', 'x-api-key', 'x-tenant-key', 'x-other']) assert.equal(h[name], REDACTED, name);
    assert.equal(h.accept, '*/*');
    assert.ok(!JSON.stringify(lines[0]).includes('Bearer t'));
  });

  it('bounds a line: long values, header names, paths and hosts are cut, and headers past the cap are counted, not written', async () => {
    const { logger, lines } = capture();
    const headers: Record<string, string> = { 'x-long': 'v'.repeat(5000), [`x-${'n'.repeat(5000)}`]: 'long name' };
    for (let i = 0; i < 50; i++) headers[`x-h${i}`] = String(i);
    new DecisionLog(logger).record(request({ headers, path: `/${'p'.repeat(60_000)}`, host: `${'h'.repeat(5000)}.local` }), 'd1', DENY, 1);
    await new Promise((r) => setImmediate(r));
    const h = lines[0]!.headers as Record<string, string>;
    assert.ok(h['x-long']!.length < 300, 'value cut');
    assert.match(h['x-long']!, /5000 characters/);
    const longName = Object.keys(h).find((k) => k.startsWith('x-nnn'))!;
    assert.ok(longName.length < 300 && /5002 characters/.test(longName), 'a header name cut too');
    assert.ok(lines[0]!.path.length < 1100 && /60001 characters/.test(lines[0]!.path), 'the path cut');
    assert.ok(lines[0]!.host.length < 1100 && /5006 characters/.test(lines[0]!.host), 'the host cut');
    assert.ok(JSON.stringify(lines[0]).length < 16_000, 'the whole line bounded');
    assert.ok(Object.keys(h).length <= 33);
    assert.match(h['…']!, /headers in all/);
  });

  it('refuses bad settings with a message', () => {
    assert.throws(() => decisionLogSettings('some'), /denied, all or off/);
    assert.throws(() => decisionLogSettings('all', '1.5'), /0 to 1/);
    assert.throws(() => decisionLogSettings('all', 'x'), /0 to 1/);
    assert.throws(() => decisionLogSettings('all', ''), /0 to 1/);
    for (const bad of ['0x1', '1e-2', ' 0.5', '-0', '2']) assert.throws(() => decisionLogSettings('all', bad), /0 to 1/, bad);
    for (const good of ['0', '1', '0.25', '.5', '1.0']) assert.doesNotThrow(() => decisionLogSettings('all', good), good);
    const names = { mode: '--decision-log', sample: 'MIDDLEBOX_DECISION_LOG_SAMPLE' };
    assert.throws(() => decisionLogSettings('some', '1', '', names), /^Error: --decision-log must be denied, all or off, got "some"$/);
    assert.throws(() => decisionLogSettings('all', '3', '', names), /^Error: MIDDLEBOX_DECISION_LOG_SAMPLE must be a number from 0 to 1/);
  });
});
