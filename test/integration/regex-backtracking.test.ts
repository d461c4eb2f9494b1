// A policy regex that backtracks exponentially on a crafted header value must not stall the
// replica: `middlebox` turns on V8's linear-time engine for matches that backtrack too much
// (src/policy/regex-engine.ts), and refuses regexes that engine cannot run. Without it, the Check
// below would not be answered for hours.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EtcdProcess } from '../../src/lab/etcd';
import { MiddleboxProcess } from '../../src/lab/middlebox';
import { CheckClient, httpCheck, statusOf } from '../harness/check';
import { middlebox } from '../harness/cli';

const POLICY = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: ids }
spec:
  firewall:
    default: allow
    rules:
      - { name: odd-ids, action: deny, headers: [{ name: x-id, regex: "^(\\\\w|\\\\d)+$" }] }
`;

describe('a policy regex that backtracks exponentially, against a crafted value', function () {
  this.timeout(60_000);
  let etcd: EtcdProcess;
  let mb: MiddleboxProcess | undefined;
  let dir: string;

  before(async () => {
    etcd = await EtcdProcess.start();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-regex-'));
    fs.writeFileSync(path.join(dir, 'policy.yaml'), POLICY);
    const r = await middlebox(['policy', 'apply', '-f', path.join(dir, 'policy.yaml'), '--etcd', etcd.endpoint]);
    assert.equal(r.code, 0, r.stderr);
    mb = await MiddleboxProcess.start({ etcd: etcd.endpoint });
  });
  after(async () => {
    await mb?.kill();
    await etcd?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a regex the linear-time engine cannot run (a lookahead) is refused where it is applied', async () => {
    const file = path.join(dir, 'lookahead.yaml');
    fs.writeFileSync(file, POLICY.replace('^(\\\\w|\\\\d)+$', '^(?=\\\\d)(\\\\w|\\\\d)+$'));
    assert.match(fs.readFileSync(file, 'utf8'), /\(\?=/);
    const r = await middlebox(['policy', 'apply', '-f', file, '--etcd', etcd.endpoint]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /cannot run in linear time/);
  });

  it('is answered (the replica does not stall), and the rule still decides', async () => {
    const check = new CheckClient(mb!.address);
    try {
      // 40 digits and a character the regex refuses: 2^40 ways to fail for a backtracking engine.
      assert.equal(statusOf(await check.check(httpCheck({ path: '/', headers: { 'x-id': `${'1'.repeat(40)}!` } }))), 200);
      assert.equal(statusOf(await check.check(httpCheck({ path: '/', headers: { 'x-id': 'abc123' } }))), 403);
    } finally {
      check.close();
    }
  });
});
