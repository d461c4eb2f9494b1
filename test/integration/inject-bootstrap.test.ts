// The Envoy bootstrap embedded in an injected pod passes `envoy --mode validate`, both as written
// into the pod and as the kubelet hands it to Envoy (after $(POD_NAME) / $(POD_NAMESPACE)
// expansion, through --config-yaml). Also `middlebox inject` end to end.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { ANNOTATIONS, injectConfig, NAMES } from '../../src/inject/config';
import { injectPod } from '../../src/inject/patch';
import type { Pod } from '../../src/inject/types';
import { EnvoyProcess, validateConfig } from '../../src/lab/envoy';
import { freePort } from '../../src/lab/ports';
import { startHttpUpstream, type Upstream } from '../../src/lab/upstream';
import { findExecutable } from '../../src/lab/processes';

function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}

type Doc = Record<string, any>;

const POD: Pod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name: 'web', namespace: 'shop', annotations: { [ANNOTATIONS.inject]: 'true' } },
  spec: { containers: [{ name: 'web', image: 'nginx', ports: [{ containerPort: 8080 }] }] },
};

function envoyContainer(pod: Pod): Doc {
  return pod.spec!.initContainers!.find((c) => c.name === NAMES.envoyContainer)!;
}

/** What the kubelet does with env values and args: $(VAR) becomes VAR's value, in order. */
function kubeletExpand(text: string, env: Record<string, string>): string {
  return text.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string) => env[name] ?? m);
}

function kubeletArgs(pod: Pod, podName: string, namespace: string): string[] {
  const e = envoyContainer(pod);
  const env: Record<string, string> = {};
  for (const v of e.env as Doc[]) {
    if (v.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[v.name] = podName;
    else if (v.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace') env[v.name] = namespace;
    else env[v.name] = kubeletExpand(v.value as string, env);
  }
  return (e.args as string[]).map((a) => kubeletExpand(a, env));
}

function runEnvoyValidate(args: string[]): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    execFile(findExecutable('envoy'), ['--mode', 'validate', ...args], { timeout: 30_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) =>
      resolve({ ok: err === null, output: `${stdout}${stderr}` }),
    );
  });
}

describe('inject: the injected Envoy bootstrap', function () {
  this.timeout(60_000);
  const config = injectConfig();

  for (const [name, annotations] of [
    ['fail closed, app port from the container', {}],
    ['fail open, annotated app port, exclusions', {
      [ANNOTATIONS.failureMode]: 'open',
      [ANNOTATIONS.appPort]: '9000',
      [ANNOTATIONS.excludeOutboundCidrs]: '10.0.0.0/8',
      [ANNOTATIONS.includeInboundPorts]: '*',
    }],
  ] as const) {
    it(`passes envoy --mode validate (${name})`, async () => {
      const pod = structuredClone(POD);
      Object.assign(pod.metadata!.annotations!, annotations);
      const injected = injectPod(pod, config);
      const env = (envoyContainer(injected).env as Doc[]).find((v) => v.name === NAMES.bootstrapEnv)!;
      // As written into the pod (the node id still reads "$(POD_NAME).$(POD_NAMESPACE)").
      const asWritten = await validateConfig(env.value as string);
      assert.ok(asWritten.ok, asWritten.output);
      // As Envoy receives it from the kubelet: the container's own args, expanded.
      const args = kubeletArgs(injected, 'web-7d9c', 'shop');
      assert.equal(parse(args[1]!).node.id, 'web-7d9c.shop');
      const asRun = await runEnvoyValidate(args);
      assert.ok(asRun.ok, asRun.output);
    });
  }
});

describe('inject: the readiness probe', function () {
  this.timeout(60_000);
  it('fails before Envoy runs and passes once the injected Envoy is ready', async () => {
    const config = injectConfig({ adminPort: await freePort(), inboundPort: await freePort(), outboundPort: await freePort() });
    const injected = injectPod(structuredClone(POD), config);
    const [, configYaml] = kubeletArgs(injected, 'web-0', 'shop');
    const probe = envoyContainer(injected).readinessProbe.exec.command as string[];
    const runProbe = () => spawnSync(probe[0]!, probe.slice(1), { encoding: 'utf8', timeout: 5000 }).status;
    assert.notEqual(runProbe(), 0);
    const envoy = await EnvoyProcess.start({ config: configYaml!, adminPort: config.adminPort });
    try {
      assert.equal(runProbe(), 0);
    } finally {
      await envoy.stop();
    }
  });
});

describe('inject: the app\'s rewritten kubelet probes, through the injected Envoy', function () {
  this.timeout(60_000);
  let app: Upstream | undefined;
  let envoy: EnvoyProcess | undefined;
  after(async () => {
    await envoy?.stop();
    await app?.close();
  });

  it('reach the app on their own path while the inbound listener refuses (middlebox unreachable, fail closed)', async () => {
    app = await startHttpUpstream({ name: 'app' });
    const config = injectConfig({
      adminPort: await freePort(),
      inboundPort: await freePort(),
      outboundPort: await freePort(),
      probePort: await freePort(),
      // Nothing listens there: every ext_authz call fails, and the inbound listener answers 403.
      middleboxAddress: `127.0.0.1:${await freePort()}`,
    });
    const p = structuredClone(POD);
    p.spec!.containers[0] = {
      name: 'web',
      image: 'nginx',
      ports: [{ containerPort: app.port, name: 'http' }],
      livenessProbe: { httpGet: { port: 'http', path: '/healthz?deep=1' } },
      // The test app answers a path with "redirect" in it with a 302 to itself.
      readinessProbe: { httpGet: { port: app.port, path: '/redirect' } },
    };
    const injected = injectPod(p, config);
    const probe = (injected.spec!.containers[0] as Doc).livenessProbe.httpGet;
    assert.deepEqual(probe, { port: config.probePort, path: '/app-health/web/livez' });
    const [, configYaml] = kubeletArgs(injected, 'web-0', 'shop');
    envoy = await EnvoyProcess.start({ config: configYaml!, adminPort: config.adminPort });
    // As the kubelet asks: GET the probe's path on the pod's address and the probe's port.
    const viaProbe = await fetch(`http://127.0.0.1:${probe.port}${probe.path}`, { signal: AbortSignal.timeout(5000) });
    assert.equal(viaProbe.status, 200);
    assert.equal(((await viaProbe.json()) as { path: string }).path, '/healthz?deep=1', 'the app sees its own probe path');
    // The same request through the inbound listener is decided, and cannot be: refused.
    const inbound = await fetch(`http://127.0.0.1:${config.inboundPort}/healthz?deep=1`, { signal: AbortSignal.timeout(5000) });
    assert.equal(inbound.status, 403);
    // A redirect comes back without its Location: the kubelet, which follows one to the same host
    // (this listener, where its target has no route), takes the 3xx as it is, a success.
    const redirected = await fetch(`http://127.0.0.1:${probe.port}/app-health/web/readyz`, { redirect: 'manual', signal: AbortSignal.timeout(5000) });
    assert.equal(redirected.status, 302);
    assert.equal(redirected.headers.get('location'), null);
    // Only the probe's own path is open on the probe listener.
    assert.equal((await fetch(`http://127.0.0.1:${probe.port}/admin/users`, { signal: AbortSignal.timeout(5000) })).status, 404);
  });
});

describe('middlebox inject (command line)', function () {
  this.timeout(30_000);
  const cli = path.join(repoRoot(), 'bin', 'middlebox');
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-inject-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  function run(args: string[], input?: string) {
    return spawnSync(process.execPath, [cli, 'inject', ...args], { input, encoding: 'utf8' });
  }

  it('injects pods and templates, leaves other objects alone, reads stdin', () => {
    const deployment = { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'd' }, spec: { template: { metadata: {}, spec: { containers: [{ name: 'a' }] } } } };
    const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: 's' } };
    const input = [POD, deployment, svc].map((o) => stringify(o)).join('---\n');
    const r = run(['-f', '-', '--namespace-labels', 'middlebox.io/injection=enabled'], input);
    assert.equal(r.status, 0, r.stderr);
    const docs = parseAllDocuments(r.stdout).map((d) => d.toJS() as Doc);
    assert.equal(docs.length, 3);
    assert.equal(docs[0]!.metadata.annotations[ANNOTATIONS.status], 'injected');
    assert.ok(docs[1]!.spec.template.spec.initContainers.some((c: Doc) => c.name === NAMES.envoyContainer));
    assert.deepEqual(docs[2], svc);
  });

  it('reads JSON files and prints JSON', () => {
    const file = path.join(dir, 'pod.json');
    fs.writeFileSync(file, JSON.stringify(POD));
    const r = run(['-f', file, '-o', 'json']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).metadata.annotations[ANNOTATIONS.status], 'injected');
  });

  it('warns when a manifest injected before would get other TLS settings now, and prints it unchanged', () => {
    const injected = injectPod(structuredClone(POD), injectConfig());
    const r = run(['-f', '-', '--middlebox-tls-secret', 'sidecar-tls', '-o', 'json'], JSON.stringify(injected));
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), injected);
    assert.match(r.stderr, /^middlebox inject: warning: Pod\/web: its sidecar, injected before, asks the middlebox over plaintext, not TLS as the injector is set to/);
    const same = run(['-f', '-', '-o', 'json'], JSON.stringify(injected));
    assert.equal(same.stderr, '', 'no warning when nothing differs');
  });

  it('fails with one clear line, never a stack trace', () => {
    for (const [args, input, status, message] of [
      [['-f', path.join(dir, 'missing.yaml')], undefined, 1, /no such file/],
      [['-f', '-'], 'a: [', 1, /not valid YAML or JSON/],
      [['-f', '-'], stringify({ ...POD, metadata: { annotations: { [ANNOTATIONS.inject]: 'true', [ANNOTATIONS.failureMode]: 'x' } } }), 1, /failure-mode must be/],
      [[], undefined, 2, /-f FILE is required/],
      [['-f', '-', '--namespace-labels', 'nolabel'], '', 2, /key=value/],
      [['--bogus'], undefined, 2, /Unknown option/],
      [['-f', '-', '--middlebox-mtls'], '', 2, /--middlebox-mtls needs --middlebox-tls-secret/],
      [['-f', '-', '--middlebox-tls-secret', 'Not_A_Name'], '', 2, /--middlebox-tls-secret must name a Secret/],
    ] as const) {
      const r = run([...args], input);
      assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });
});
