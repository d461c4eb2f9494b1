// `middlebox policy ...` against a real etcd, and the offline commands.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EtcdProcess } from '../../src/lab/etcd';
import { connectEtcd } from '../../src/state/etcd/client';
import { policyKey } from '../../src/state/etcd/policies';
import { middlebox } from '../harness/cli';
import { NO_ADMIN_POLICY } from '../harness/policy';

const GOOD = `${NO_ADMIN_POLICY}---
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

  it('apply of a bad file stores nothing, not even its valid policies', async () => {
    const valid = GOOD.split('---\n')[1]!.replace('name: edge', 'name: fine');
    const r = await middlebox(withEtcd('policy', 'apply', '-f', file('bad2.yaml', `${valid}---\n${BAD.replace('name: shop', 'name: other')}`)));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /nothing was applied/);
    for (const name of ['fine', 'other']) {
      const get = await middlebox(withEtcd('policy', 'get', name));
      assert.equal(get.code, 1, `${name}: ${get.stdout}`);
      assert.match(get.stderr, new RegExp(`policy "${name}" not found`));
    }
  });

  describe('bounds: policy size and rules per policy', () => {
    /** `n` firewall rules, one a line from line 8 on. */
    const rules = (name: string, n: number) =>
      `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: ${name} }\nspec:\n  firewall:\n    default: allow\n    rules:\n${Array.from({ length: n }, (_, i) => `      - { name: r${i}, action: deny, paths: ["/p${i}"] }\n`).join('')}`;
    const escape = (p: string) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

    it('validate refuses a file over --max-policy-bytes at file:1:1, naming the limit and the setting', async () => {
      const text = rules('big', 60);
      const p = file('big.yaml', text);
      const r = await middlebox(['policy', 'validate', '-f', p, '--max-policy-bytes', '2048']);
      assert.equal(r.code, 1);
      assert.equal(
        r.stderr,
        `middlebox policy validate: 1 problem found\n${p}:1:1: too large: ${Buffer.byteLength(text)} bytes, more than 2048 (--max-policy-bytes, env MIDDLEBOX_MAX_POLICY_BYTES); split it into smaller policies\n`,
      );
      // The same from the environment; the flag wins over it.
      const env = { MIDDLEBOX_MAX_POLICY_BYTES: '2048' };
      assert.match((await middlebox(['policy', 'validate', '-f', p], { env })).stderr, /:1:1: too large: \d+ bytes, more than 2048 /);
      assert.equal((await middlebox(['policy', 'validate', '-f', p, '--max-policy-bytes', '65536'], { env })).code, 0);
      assert.equal((await middlebox(['policy', 'validate', '-f', p])).code, 0, 'within the default (1 MiB)');
      // Standard input too.
      const stdin = await middlebox(['policy', 'validate', '-f', '-', '--max-policy-bytes', '2048'], { input: text });
      assert.match(stdin.stderr, /^<stdin>:1:1: too large: /m);
    });

    it('validate refuses the first rule past --max-rules-per-policy, where it is written', async () => {
      const p = file('rules.yaml', rules('many', 4));
      const r = await middlebox(['policy', 'validate', '-f', p, '--max-rules-per-policy', '3']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`^${escape(p)}:11:9: spec\\.firewall\\.rules\\[3\\]: more than 3 firewall rules in one policy \\(4 given; --max-rules-per-policy, env MIDDLEBOX_MAX_RULES_PER_POLICY\\)`, 'm'));
      const env = { MIDDLEBOX_MAX_RULES_PER_POLICY: '3' };
      assert.equal((await middlebox(['policy', 'validate', '-f', p], { env })).code, 1);
      assert.equal((await middlebox(['policy', 'validate', '-f', p, '--max-rules-per-policy', '4'], { env })).code, 0);
    });

    it('explain takes the same bounds as validate and serve', async () => {
      const p = file('explain-rules.yaml', rules('many', 4));
      const args = ['explain', '-f', p, '--path', '/x', '--source', '10.0.0.1'];
      let r = await middlebox([...args, '--max-rules-per-policy', '3']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /more than 3 firewall rules in one policy/);
      r = await middlebox(args, { env: { MIDDLEBOX_MAX_RULES_PER_POLICY: '3' } });
      assert.equal(r.code, 2, 'the variable too');
      r = await middlebox([...args, '--max-rules-per-policy', '4'], { env: { MIDDLEBOX_MAX_RULES_PER_POLICY: '3' } });
      assert.equal(r.code, 0, `the flag first (and /x allowed): ${r.stderr}`);
      assert.match((await middlebox(['explain', '--help'])).stdout, /--max-rules-per-policy N/);
    });

    it('reads a file that is not a regular one (a device, a pipe) no further than --max-policy-bytes', async () => {
      const r = await middlebox(['policy', 'validate', '-f', '/dev/zero', '--max-policy-bytes', '4096'], { timeoutMs: 10_000 });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^\/dev\/zero:1:1: too large: more than 4096 bytes/m);
    });

    it('policy headers takes -f or etcd flags, not both', async () => {
      const r = await middlebox(['policy', 'headers', '-f', file('h.yaml', GOOD), '--etcd', 'http://127.0.0.1:1']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /give -f FILE or --etcd, not both/);
    });

    it('a file given twice is a usage error, not its policies defined twice', async () => {
      const g = file('twice.yaml', GOOD);
      for (const cmd of [['policy', 'validate'], ['explain']]) {
        const r = await middlebox([...cmd, '-f', g, '-f', g]);
        assert.equal(r.code, 2, `${cmd.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, /-f .*twice\.yaml is given twice/);
      }
      const r = await middlebox(['policy', 'validate', '-f', '-', '-f', '-'], { input: GOOD });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /-f - \(standard input\) is given twice/);
    });

    it('apply refuses a policy over either bound and stores nothing', async () => {
      const p = file('apply-big.yaml', `${rules('small', 1)}---\n${rules('toobig', 60)}`);
      let r = await middlebox(withEtcd('policy', 'apply', '-f', p, '--max-policy-bytes', '2048'));
      assert.equal(r.code, 1);
      assert.match(r.stderr, /nothing was applied/);
      assert.match(r.stderr, /:1:1: too large: /);
      r = await middlebox(withEtcd('policy', 'apply', '-f', p, '--max-rules-per-policy', '10'));
      assert.equal(r.code, 1);
      assert.match(r.stderr, /nothing was applied\n.*:\d+:9: spec\.firewall\.rules\[10\]: more than 10 firewall rules/);
      for (const name of ['small', 'toobig']) assert.equal((await middlebox(withEtcd('policy', 'get', name))).code, 1, `${name} is not stored`);
    });

    it('a bound out of range, by flag or environment, is a usage error (exit 2)', async () => {
      let r = await middlebox(['policy', 'validate', '-f', file('g.yaml', GOOD), '--max-rules-per-policy', '0']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--max-rules-per-policy must be a whole number from 1 to 1000000, got "0"/);
      r = await middlebox(['policy', 'validate', '-f', file('g.yaml', GOOD)], { env: { MIDDLEBOX_MAX_POLICY_BYTES: 'big' } });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /MIDDLEBOX_MAX_POLICY_BYTES must be a whole number from 1024 to \d+, got "big"/);
      r = await middlebox(['serve', '--etcd', 'http://127.0.0.1:1'], { env: { MIDDLEBOX_MAX_HEADER_BYTES: '-1' } });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /MIDDLEBOX_MAX_HEADER_BYTES must be a whole number/);
    });

    it('policy and serve --help name every bound', async () => {
      const policyHelp = (await middlebox(['policy', 'apply', '--help'])).stdout;
      for (const flag of ['--max-policy-bytes', '--max-rules-per-policy']) assert.match(policyHelp, new RegExp(flag));
      const serveHelp = (await middlebox(['serve', '--help'])).stdout;
      for (const flag of ['--max-policy-bytes', '--max-rules-per-policy', '--max-keys-per-rate-limit', '--max-header-bytes', '--max-message-bytes']) {
        assert.match(serveHelp, new RegExp(`${flag} N`));
      }
      assert.match(serveHelp, /MIDDLEBOX_MAX_MESSAGE_BYTES, default 4194304/);
    });
  });

  it('says clearly when etcd cannot be reached', async () => {
    const r = await middlebox(['policy', 'get', '--etcd', 'http://127.0.0.1:1']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /etcd/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  it('headers lists what the rules read, from files or from etcd, as --authz-headers takes it', async () => {
    const withHeaders = GOOD.replace(
      '      - { name: no-admin, action: deny, paths: ["/admin/*"] }',
      '      - { name: no-admin, action: deny, paths: ["/admin/*"] }\n      - { name: no-debug, action: deny, headers: [{ name: X-Debug }] }\n  rateLimits:\n    - { name: per-key, limit: 5, per: 1s, by: ["header:x-api-key"], algorithm: fixed-window, consistency: local }',
    );
    const p = file('headers.yaml', withHeaders);
    let r = await middlebox(['policy', 'headers', '-f', p]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'x-api-key,x-debug\n');
    r = await middlebox(['policy', 'headers', '-f', p, '-o', 'table']);
    assert.equal(r.stdout, 'HEADER      READ-BY\nx-api-key   shop/per-key\nx-debug     shop/no-debug\n');
    // Stored policies: the same list.
    assert.equal((await middlebox(withEtcd('policy', 'apply', '-f', p))).code, 0);
    r = await middlebox(withEtcd('policy', 'headers'));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'x-api-key,x-debug\n');
    // A stored policy no replica accepts: its last good version may still be in force, reading who
    // knows what, so the list is printed but the command fails, saying why.
    const client = connectEtcd({ endpoints: [etcd.endpoint] });
    try {
      await client.put(policyKey('/middlebox', 'broken')).value('{"apiVersion": "middlebox.io/v1alpha1", "kind": "Policy", "spec": ');
      r = await middlebox(withEtcd('policy', 'headers'));
      assert.equal(r.code, 1);
      assert.equal(r.stdout, 'x-api-key,x-debug\n');
      assert.match(r.stderr, /in stored policies: the list above leaves out the headers that the version of them still in force/);
      assert.match(r.stderr, /etcd policy broken/);
    } finally {
      await client.delete().key(policyKey('/middlebox', 'broken'));
      client.close();
    }
    // The list feeds envoy bootstrap; a name Envoy could not match is a usage error.
    r = await middlebox(['envoy', 'bootstrap', '--authz-headers', 'x-api-key,x-debug']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /value: :authority,:method,:path,content-length,x-api-key,x-debug,x-request-id\n/);
    r = await middlebox(['envoy', 'bootstrap', '--authz-headers', '']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /value: :authority,:method,:path,content-length,x-request-id\n/, 'none: only the ones always sent');
    r = await middlebox(['envoy', 'bootstrap', '--authz-headers', 'x-api-key,bad name']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--authz-headers: not a header name: "bad name"/);
    r = await middlebox(['envoy', 'bootstrap', '--authz-headers', 'x-a', '--inbound-filter', 'ext_proc']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /ext_proc always sends every header/);
    assert.equal((await middlebox(['policy', 'headers', '-f', p, '-o', 'yaml'])).code, 2);
  });

  it('every command has --help, and unknown flags are usage errors', async () => {
    for (const args of [['--help'], ['serve', '--help'], ['policy', '--help'], ['policy', 'apply', '--help'], ['policy', 'headers', '--help'], ['envoy', 'bootstrap', '--help'], ['demo', '--help']]) {
      const r = await middlebox(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /Usage: middlebox/);
    }
    const r = await middlebox(['policy', 'validate', '--frobnicate']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /frobnicate/);
    // One line and where to look, not the whole usage burying the mistake.
    assert.deepEqual(r.stderr.trim().split('\n'), ["middlebox policy validate: Unknown option '--frobnicate'", "Run 'middlebox policy validate --help' for usage."]);
    for (const args of [['version', '--help'], ['policy', 'help'], ['envoy', 'help'], ['nat', 'undrain', '--help']]) {
      const h = await middlebox(args);
      assert.equal(h.code, 0, `${args.join(' ')}: ${h.stderr}`);
      assert.match(h.stdout, /Usage: middlebox/);
    }
    assert.match((await middlebox(['nat', 'undrain', '--help'])).stdout, /BACKEND +ip:port/);
    assert.match((await middlebox(['--help'])).stdout, /delete \| headers/);
    assert.equal((await middlebox(['version', 'extra'])).code, 2);
  });

  it('a bad value is a usage error (exit 2) that names its flag or variable; a file with no policy is refused (exit 1)', async () => {
    const pod = path.join(dir, 'pod.yaml');
    fs.writeFileSync(pod, 'apiVersion: v1\nkind: Pod\nmetadata: { name: web }\nspec: { containers: [ { name: app, image: nginx } ] }\n');
    const scalar = path.join(dir, 'scalar.yaml');
    fs.writeFileSync(scalar, 'hello\n');
    const cases: Array<{ args: string[]; env?: Record<string, string>; says: RegExp }> = [
      { args: ['serve', '--admin-listen', 'off', '--listen', 'abc'], says: /--listen: listen address "abc" is not host:port/ },
      { args: ['serve', '--admin-listen', 'off', '--http-authz-listen', 'abc'], says: /--http-authz-listen: listen address "abc"/ },
      { args: ['serve', '--admin-listen', 'off', '--log-level', 'loud'], says: /--log-level must be one of trace, debug, info, warn, error, fatal, silent, got "loud"/ },
      { args: ['serve', '--admin-listen', 'off'], env: { MIDDLEBOX_DRAIN_MS: 'abc' }, says: /MIDDLEBOX_DRAIN_MS must be a whole number/ },
      { args: ['serve', '--admin-listen', 'off'], env: { MIDDLEBOX_ETCD_TIMEOUT_MS: '0' }, says: /MIDDLEBOX_ETCD_TIMEOUT_MS must be a whole number from 1/ },
      { args: ['serve', '--admin-listen', 'off'], env: { MIDDLEBOX_MAX_RATE_LIMIT_KEYS: 'many' }, says: /MIDDLEBOX_MAX_RATE_LIMIT_KEYS must be a whole number/ },
      { args: ['serve', '--admin-listen', 'off'], env: { MIDDLEBOX_SHUTDOWN_DELAY_MS: '-1' }, says: /MIDDLEBOX_SHUTDOWN_DELAY_MS must be a whole number/ },
      { args: ['serve', '--admin-listen', 'off', '--decision-log', 'some'], says: /--decision-log must be denied, all or off, got "some"/ },
      { args: ['serve', '--listen', '127.0.0.1:9301', '--admin-listen', '127.0.0.1:9301'], says: /--admin-listen must differ from --listen/ },
      { args: ['serve', '--admin-listen', 'off'], env: { MIDDLEBOX_ON_NO_STATE: 'maybe' }, says: /MIDDLEBOX_ON_NO_STATE must be fail-closed or fail-open/ },
      { args: ['serve'], env: { MIDDLEBOX_ADMIN_LISTEN: 'nowhere' }, says: /MIDDLEBOX_ADMIN_LISTEN must be host:port/ },
      { args: ['serve', '--admin-listen', 'off'], env: { MIDDLEBOX_TLS_CERT: '/nonexistent.pem' }, says: /MIDDLEBOX_TLS_CERT needs --tls-key too/ },
      { args: ['policy', 'get', '--etcd', 'http://127.0.0.1:1'], env: { MIDDLEBOX_ETCD_USER: 'bob' }, says: /MIDDLEBOX_ETCD_USER bob needs a password/ },
      { args: ['serve', '--admin-listen', 'off'], env: { MIDDLEBOX_DECISION_LOG_SAMPLE: 'half' }, says: /MIDDLEBOX_DECISION_LOG_SAMPLE must be a number from 0 to 1/ },
      { args: ['policy', 'get', '--etcd', 'notaurl'], says: /--etcd: etcd endpoint "notaurl" is not an http:\/\/ or https:\/\/ URL/ },
      { args: ['policy', 'get'], env: { MIDDLEBOX_ETCD: 'ftp://127.0.0.1:1' }, says: /MIDDLEBOX_ETCD: etcd endpoint "ftp:\/\/127.0.0.1:1"/ },
      { args: ['policy', 'get'], env: { MIDDLEBOX_ETCD: ',' }, says: /MIDDLEBOX_ETCD needs at least one URL/ },
      { args: ['policy', 'get', '--etcd', 'http://127.0.0.1:1,https://127.0.0.1:2'], says: /--etcd: etcd endpoints must all be http:\/\/ or all https:\/\/, not a mix/ },
      { args: ['policy', 'get', '--etcd', 'http://127.0.0.1:1', '--etcd-user', ''], says: /--etcd-user must name a user/ },
      // An empty flag is a mistake, not a reason to fall back to the environment.
      { args: ['policy', 'get', '--etcd', ''], env: { MIDDLEBOX_ETCD: etcd.endpoint }, says: /--etcd needs at least one URL/ },
      { args: ['policy', 'get', '--etcd', etcd.endpoint, '--prefix', ''], says: /--prefix must not be empty/ },
      { args: ['envoy', 'bootstrap', '--middlebox', ''], says: /--middlebox needs at least one/ },
      { args: ['envoy', 'bootstrap', '--middlebox', 'notahost'], says: /middlebox endpoint must be host:port/ },
      { args: ['envoy', 'bootstrap', '--inbound-address', 'notanip'], says: /--inbound-address must be an IP address/ },
      { args: ['envoy', 'bootstrap', '--no-http'], says: /--no-http leaves the sidecar no listener/ },
      { args: ['envoy', 'bootstrap', '--no-http', '--tcp-port', '15006', '--tcp-app-port', '5432', '--middlebox-http', '127.0.0.1:9'], says: /--middlebox-http is for the inbound HTTP listener/ },
      { args: ['envoy', 'bootstrap', '--tcp-port', '15007', '--tcp-app-port', '5432', '--tcp-connect', 'later'], says: /--tcp-connect must be immediate or on-data, got "later"/ },
      { args: ['envoy', 'bootstrap', '--tcp-connect', 'on-data'], says: /--tcp-connect is for the TCP listener: add --tcp-port and --tcp-app-port/ },
      { args: ['envoy', 'bootstrap', '--upstream-idle-timeout-ms', '0'], says: /--upstream-idle-timeout-ms must be a whole number from 1 to 3600000, got "0"/ },
      { args: ['envoy', 'bootstrap', '--no-http', '--tcp-port', '15007', '--tcp-app-port', '5432', '--upstream-idle-timeout-ms', '500'], says: /--upstream-idle-timeout-ms is for HTTP connections to the app or from it/ },
      { args: ['inject', '-f', pod, '--envoy-image', ''], says: /--envoy-image must name an image/ },
      { args: ['inject', 'serve', '--tls-cert', 'x', '--tls-key', 'y', '--log-level', 'loud'], says: /--log-level must be one of/ },
      { args: ['inject', 'serve', '--tls-cert', 'x', '--tls-key', 'y', '--listen', '127.0.0.1:abc'], says: /--listen: listen address "127.0.0.1:abc"/ },
    ];
    for (const c of cases) {
      const r = await middlebox(c.args, { env: { MIDDLEBOX_LOG_LEVEL: '', ...c.env }, timeoutMs: 10_000 });
      const what = `${c.args.join(' ')} ${JSON.stringify(c.env ?? {})}`;
      assert.equal(r.code, 2, `${what}: ${r.stderr}`);
      assert.match(r.stderr, c.says, what);
      assert.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line: ${r.stderr}`);
      assert.equal(r.stdout, '', what);
    }

    for (const text of ['', '# nothing\n', 'null\n']) {
      const empty = path.join(dir, 'empty.yaml');
      fs.writeFileSync(empty, text);
      // explain's own codes: 1 is "denied", 2 bad input.
      for (const [args, code] of [[['policy', 'validate', '-f', empty], 1], [['policy', 'apply', '-f', empty, '--etcd', etcd.endpoint], 1], [['explain', '-f', empty, '--path', '/'], 2]] as const) {
        const r = await middlebox([...args]);
        assert.equal(r.code, code, `${args.join(' ')} with ${JSON.stringify(text)}: ${r.stderr}`);
        assert.match(r.stderr, /empty\.yaml:1:1: no policy in it/);
      }
    }

    // inject: -f repeats, and what is not a Kubernetes object is refused rather than echoed.
    const twice = await middlebox(['inject', '-f', pod, '-f', pod, '-o', 'json']);
    assert.equal(twice.code, 0, twice.stderr);
    assert.equal((JSON.parse(twice.stdout) as { items: unknown[] }).items.length, 2);
    // A typo of an opt-in: the pod comes out as it went in, with a warning that says why.
    const maybe = path.join(dir, 'maybe.yaml');
    fs.writeFileSync(maybe, 'apiVersion: v1\nkind: Pod\nmetadata: { name: web, annotations: { middlebox.io/inject: "maybe" } }\nspec: { containers: [{ name: app, image: app }] }\n');
    const typo = await middlebox(['inject', '-f', maybe]);
    assert.equal(typo.code, 0, typo.stderr);
    assert.match(typo.stderr, /warning: Pod\/web: not injected: middlebox\.io\/inject \(annotation\) must be "true" or "false", got "maybe"/);
    assert.doesNotMatch(typo.stdout, /middlebox-sidecar|envoy/);
    const kindOnly = path.join(dir, 'kind-only.yaml');
    fs.writeFileSync(kindOnly, 'kind: Pod\nmetadata: { name: web }\n');
    for (const file of [scalar, kindOnly]) {
      const notObject = await middlebox(['inject', '-f', file]);
      assert.equal(notObject.code, 1, file);
      assert.match(notObject.stderr, /\.yaml document 1: not a Kubernetes object/);
      assert.equal(notObject.stdout, '');
    }
  });
});
