// `middlebox policy ...` against a real etcd, and the offline commands.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EtcdProcess } from '../../src/lab/etcd';
import { middlebox } from '../harness/cli';

const GOOD = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  firewall:
    default: allow
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"] }
---
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: edge }
spec:
  firewall: { default: deny, rules: [ { name: office, action: allow, from: ["203.0.113.0/24"] } ] }
`;

const BAD = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  firewall:
    rules:
      - { name: a, action: deny, from: ["10.0.0.0/33"] }
      - { name: a, action: deny }
`;

describe('middlebox policy (real etcd)', function () {
  this.timeout(60_000);
  let etcd: EtcdProcess;
  let dir: string;
  const file = (name: string, text: string) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text);
    return p;
  };

  before(async () => {
    etcd = await EtcdProcess.start();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-cli-'));
  });
  after(async () => {
    await etcd?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const withEtcd = (...args: string[]) => [...args, '--etcd', etcd.endpoint];

  it('validate accepts a good file and names each policy', async () => {
    const r = await middlebox(['policy', 'validate', '-f', file('good.yaml', GOOD)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'policy/shop valid\npolicy/edge valid\n');
  });

  it('validate refuses a bad file with file:line: messages and exit 1, no stack trace', async () => {
    const p = file('bad.yaml', BAD);
    const r = await middlebox(['policy', 'validate', '-f', p]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:7:`));
    assert.match(r.stderr, /:8:.*duplicate/i);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  it('validate reads standard input with -f -', async () => {
    const r = await middlebox(['policy', 'validate', '-f', '-'], { input: GOOD });
    assert.equal(r.code, 0, r.stderr);
  });

  it('apply stores every policy, get shows them, delete removes one', async () => {
    const p = file('good.yaml', GOOD);
    let r = await middlebox(withEtcd('policy', 'apply', '-f', p));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'policy/shop created\npolicy/edge created\n');
    r = await middlebox(withEtcd('policy', 'apply', '-f', p));
    assert.equal(r.stdout, 'policy/shop unchanged\npolicy/edge unchanged\n');

    r = await middlebox(withEtcd('policy', 'get'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^NAME\s+SHADOW\s+FIREWALL/);
    assert.match(r.stdout, /\nedge\s+false\s+1 rules, default deny/);

    r = await middlebox(withEtcd('policy', 'get', 'shop', '-o', 'json'));
    assert.equal(JSON.parse(r.stdout).spec.firewall.rules[0].name, 'no-admin');

    r = await middlebox(withEtcd('policy', 'delete', 'edge'));
    assert.equal(r.code, 0, r.stderr);
    r = await middlebox(withEtcd('policy', 'get', 'edge'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /policy "edge" not found/);
  });

  it('apply of a bad file stores nothing', async () => {
    const r = await middlebox(withEtcd('policy', 'apply', '-f', file('bad2.yaml', BAD.replace('name: shop', 'name: other'))));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /nothing was applied/);
    const get = await middlebox(withEtcd('policy', 'get', 'other'));
    assert.equal(get.code, 1);
  });

  it('says clearly when etcd cannot be reached', async () => {
    const r = await middlebox(['policy', 'get', '--etcd', 'http://127.0.0.1:1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /etcd/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  it('every command has --help, and unknown flags are usage errors', async () => {
    for (const args of [['--help'], ['serve', '--help'], ['policy', '--help'], ['policy', 'apply', '--help'], ['envoy', 'bootstrap', '--help'], ['demo', '--help']]) {
      const r = await middlebox(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /Usage: middlebox/);
    }
    const r = await middlebox(['policy', 'validate', '--frobnicate']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /frobnicate/);
  });
});
