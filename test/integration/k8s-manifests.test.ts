// The Kubernetes manifests in k8s/, offline: both kustomizations build, every object they make is
// valid against Kubernetes' own schemas (kubernetes-validate --strict, for pinned Kubernetes
// versions), and what they say agrees with the code they deploy: the server's flags and health
// service names, the webhook's flags, path and TLS, the selectors against the injector's decision,
// the etcd cluster's membership, the sample policy. The server, the webhook and the policy Job run
// for real here with the manifests' own arguments (only addresses and paths made local).
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { applyPatch, type Operation } from 'fast-json-patch';
import { parse as parseYaml, parseAllDocuments, stringify as stringifyYaml } from 'yaml';
import type { Command } from '../../src/cli/command';
import { injectServeCommand, injectSettings } from '../../src/cli/inject';
import { serveCommand } from '../../src/cli/serve';
import { DEFAULTS } from '../../src/settings';
import { ETCD_COMPONENT, POLICY_COMPONENT } from '../../src/grpc/health';
import { AUTHORIZATION_SERVICE, EXTERNAL_PROCESSOR_SERVICE } from '../../src/grpc/protos';
import { ANNOTATIONS, NAMES, NAMESPACE_LABEL, NAMESPACE_LABEL_ENABLED, STATUS_INJECTED } from '../../src/inject/config';
import { admit, DEFAULT_WEBHOOK_DRAIN_MS, DEFAULT_WEBHOOK_SHUTDOWN_DELAY_MS, INJECT_PATH } from '../../src/inject/webhook';
import { injectObject } from '../../src/inject/workloads';
import { EtcdProcess } from '../../src/lab/etcd';
import { TOOLS_VENV } from '../../src/lab/envoy';
import { makeTestPki } from '../../src/lab/certs';
import { adminGet, HealthClient } from '../../src/lab/middlebox';
import { freePort, waitFor } from '../../src/lab/ports';
import { findExecutable, LabChild, makeTempDir, removeTempDir } from '../../src/lab/processes';
import { CLI, middlebox } from '../harness/cli';

type Doc = Record<string, any>;

function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}

const ROOT = repoRoot();
const K8S = path.join(ROOT, 'k8s');
const SYSTEM_NAMESPACE = 'middlebox-system';
const IMAGE = 'middlebox:0.1.0';
/** The oldest Kubernetes release the manifests are written for (native gRPC probes are GA in 1.27), and a newer one. */
const KUBERNETES_VERSIONS = ['1.30.0', '1.33.0'];
const TOOL_TIMEOUT_MS = 60_000;

// ---- tools ----------------------------------------------------------------------------------------

function executable(name: string, fallbacks: string[] = []): string | undefined {
  try {
    return findExecutable(name, fallbacks);
  } catch {
    return undefined;
  }
}

/** kubectl's built-in kustomize, else a kustomize binary (on PATH or where `make deps-k8s` puts it). */
function kustomizeCommand(): string[] {
  const kubectl = executable('kubectl', ['/usr/bin/kubectl']);
  if (kubectl) return [kubectl, 'kustomize'];
  const gopath = process.env.GOPATH ?? path.join(process.env.HOME ?? '/root', 'go');
  const kustomize = executable('kustomize', [path.join(gopath, 'bin', 'kustomize')]);
  if (kustomize) return [kustomize, 'build'];
  throw new Error('neither kubectl nor kustomize found (run `make deps-k8s`)');
}

function kustomize(dir: string): string {
  const [cmd, ...args] = kustomizeCommand();
  const r = spawnSync(cmd!, [...args, dir], { encoding: 'utf8', timeout: TOOL_TIMEOUT_MS });
  if (r.error) throw r.error;
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} ${dir} failed:\n${r.stderr}`);
  return r.stdout;
}

function parseDocs(text: string): Doc[] {
  return parseAllDocuments(text)
    .map((d) => {
      assert.deepEqual(d.errors, [], 'the build output is valid YAML');
      return d.toJS() as Doc;
    })
    .filter((d) => d !== null && d !== undefined);
}

interface Validation {
  code: number | null;
  /** "kind/name@major.minor" of every object that passed. */
  passed: Set<string>;
  errors: string[];
  /** Objects the validator had no schema for: they were not validated at all. */
  warnings: string[];
  output: string;
}

let python: string | undefined;

/**
 * The Python that has kubernetes-validate: the project virtualenv's, where make deps put it
 * because the system Python refuses installs (PEP 668), else python3.
 */
function validatorPython(): string {
  if (python !== undefined) return python;
  const venv = path.join(TOOLS_VENV, 'bin', 'python');
  python = 'python3';
  if (fs.existsSync(venv) && spawnSync(venv, ['-c', 'import kubernetes_validate'], { stdio: 'ignore', timeout: TOOL_TIMEOUT_MS }).status === 0) python = venv;
  return python;
}

/** kubernetes-validate --strict on YAML text, against every pinned Kubernetes version. */
function validate(yamlText: string, opts: { strict?: boolean } = {}): Promise<Validation> {
  const dir = makeTempDir('middlebox-k8s-validate-');
  const file = path.join(dir, 'manifests.yaml');
  fs.writeFileSync(file, yamlText);
  const args = ['-m', 'kubernetes_validate', ...(opts.strict === false ? [] : ['--strict'])];
  for (const v of KUBERNETES_VERSIONS) args.push('-k', v);
  args.push(file);
  return new Promise((resolve, reject) => {
    execFile(validatorPython(), args, { timeout: TOOL_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      removeTempDir(dir);
      if (err && typeof err.code !== 'number') return reject(new Error(`kubernetes-validate did not run (run \`make deps-k8s\`): ${err.message}\n${stderr}`));
      const output = `${stdout}${stderr}`;
      const lines = output.split('\n').filter(Boolean);
      const passed = new Set<string>();
      for (const l of lines) {
        const m = /^INFO .* passed for resource (\S+) against version (\S+)$/.exec(l);
        if (m) passed.add(`${m[1]}@${m[2]}`);
      }
      resolve({
        code: err ? (err.code as number) : 0,
        passed,
        errors: lines.filter((l) => /^(ERROR|FATAL)/.test(l)),
        warnings: lines.filter((l) => l.startsWith('WARN')),
        output,
      });
    });
  });
}

function majorMinor(v: string): string {
  return v.split('.').slice(0, 2).join('.');
}

/** Asserts that the validator checked every document against every pinned version and found nothing wrong. */
function assertAllValid(docs: Doc[], v: Validation, what: string): void {
  assert.deepEqual(v.errors, [], `${what}: kubernetes-validate found errors:\n${v.output}`);
  assert.deepEqual(v.warnings, [], `${what}: objects kubernetes-validate has no schema for (so did not check):\n${v.output}`);
  assert.equal(v.code, 0, v.output);
  for (const d of docs) {
    for (const version of KUBERNETES_VERSIONS) {
      const key = `${String(d.kind).toLowerCase()}/${d.metadata.name}@${majorMinor(version)}`;
      assert.ok(v.passed.has(key), `${what}: ${key} was not reported valid:\n${v.output}`);
    }
  }
}

// ---- reading the manifests ------------------------------------------------------------------------

function find(docs: Doc[], kind: string, name: string): Doc {
  const found = docs.filter((d) => d.kind === kind && d.metadata?.name === name);
  assert.equal(found.length, 1, `exactly one ${kind}/${name} in the build`);
  return found[0]!;
}

function ofKind(docs: Doc[], kind: string): Doc[] {
  return docs.filter((d) => d.kind === kind);
}

const WORKLOAD_KINDS = ['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job'];

function podTemplates(docs: Doc[]): { owner: string; template: Doc }[] {
  return docs.filter((d) => WORKLOAD_KINDS.includes(d.kind)).map((d) => ({ owner: `${d.kind}/${d.metadata.name}`, template: d.spec.template }));
}

function container(workload: Doc, name: string): Doc {
  const c = (workload.spec.template.spec.containers as Doc[]).find((x) => x.name === name);
  assert.ok(c, `${workload.kind}/${workload.metadata.name} has a container ${name}`);
  return c;
}

/** The kubelet's expansion of $(VAR) in args, from the container's env; $$ escapes. Every reference must resolve. */
function kubeletExpand(args: string[], c: Doc, overrides: Record<string, string> = {}): string[] {
  const env: Record<string, string> = {};
  for (const e of (c.env ?? []) as Doc[]) {
    if (typeof e.value === 'string') env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = 'pod-0';
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.namespace') env[e.name] = SYSTEM_NAMESPACE;
  }
  Object.assign(env, overrides);
  return args.map((a) =>
    a.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string | undefined) => {
      if (m === '$$') return '$';
      assert.ok(name !== undefined && env[name] !== undefined, `argument ${JSON.stringify(a)} refers to $(${name}), which the container's env does not define`);
      return env[name!]!;
    }),
  );
}

/** Parses a command's flags exactly as the middlebox CLI does (node:util parseArgs, strict). */
function parseFlags(cmd: Command, args: string[]): Record<string, unknown> {
  try {
    return parseArgs({ args, options: cmd.options, allowPositionals: cmd.allowPositionals ?? false, strict: true }).values;
  } catch (e) {
    throw new Error(`\`middlebox ${cmd.name}\` does not accept ${JSON.stringify(args)}: ${(e as Error).message}`);
  }
}

/** Replaces the value of --flag (as --flag=value or --flag value); the flag must be there. */
function setFlag(args: string[], flag: string, value: string): string[] {
  const out = [...args];
  const i = out.findIndex((a) => a === `--${flag}` || a.startsWith(`--${flag}=`));
  assert.ok(i >= 0, `the arguments set --${flag}`);
  if (out[i] === `--${flag}`) out[i + 1] = value;
  else out[i] = `--${flag}=${value}`;
  return out;
}

function flagValue(args: string[], flag: string): string | undefined {
  const i = args.findIndex((a) => a === `--${flag}` || a.startsWith(`--${flag}=`));
  if (i < 0) return undefined;
  return args[i] === `--${flag}` ? args[i + 1] : args[i]!.slice(flag.length + 3);
}

interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

/** Kubernetes' label selector semantics; an absent selector matches everything. */
function selects(selector: LabelSelector | undefined, labels: Record<string, string>): boolean {
  if (!selector) return true;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    const ok =
      e.operator === 'In' ? has && (e.values ?? []).includes(labels[e.key]!)
      : e.operator === 'NotIn' ? !has || !(e.values ?? []).includes(labels[e.key]!)
      : e.operator === 'Exists' ? has
      : e.operator === 'DoesNotExist' ? !has
      : assert.fail(`unknown selector operator ${e.operator}`);
    if (!ok) return false;
  }
  return true;
}

/** A pod as a NetworkPolicy sees it: its namespace (name and labels) and its own labels. */
interface PeerPod {
  namespace: string;
  nsLabels: Record<string, string>;
  labels: Record<string, string>;
}

/** Whether NetworkPolicy `np` lets `from` in on the container port named `port` (ipBlock peers never match a pod here). */
function networkPolicyAdmits(np: Doc, from: PeerPod, port: string): boolean {
  return (np.spec.ingress as Doc[]).some(
    (rule) =>
      (rule.ports === undefined || (rule.ports as Doc[]).some((p) => p.port === port)) &&
      (rule.from === undefined ||
        (rule.from as Doc[]).some((peer) => {
          if (peer.ipBlock) return false;
          const inNamespace = peer.namespaceSelector === undefined ? from.namespace === np.metadata.namespace : selects(peer.namespaceSelector, from.nsLabels);
          return inNamespace && (peer.podSelector === undefined || selects(peer.podSelector, from.labels));
        })),
  );
}

/** The port number a probe or Service names, resolving a named container port. */
function portNumber(c: Doc, port: number | string): number {
  if (typeof port === 'number') return port;
  const p = ((c.ports ?? []) as Doc[]).find((x) => x.name === port);
  assert.ok(p, `container ${c.name} has a port named ${port}`);
  return p.containerPort as number;
}

function portOfListen(listen: string): number {
  const m = /:(\d+)$/.exec(listen);
  assert.ok(m, `${listen} is host:port`);
  return Number(m[1]);
}

/** etcd's v3 HTTP gateway: the keys under a prefix. */
async function etcdKeys(endpoint: string, prefix: string): Promise<string[]> {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const end = prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
  const res = await fetch(`${endpoint}/v3/kv/range`, {
    method: 'POST',
    body: JSON.stringify({ key: b64(prefix), range_end: b64(end), keys_only: true }),
    signal: AbortSignal.timeout(2000),
  });
  const body = (await res.json()) as { kvs?: { key: string }[] };
  return (body.kvs ?? []).map((kv) => Buffer.from(kv.key, 'base64').toString('utf8'));
}

function httpsGet(url: string, ca: Buffer, servername: string, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method: body === undefined ? 'GET' : 'POST',
        ca,
        servername,
        timeout: 5000,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${url} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

// ---- the tests ------------------------------------------------------------------------------------

describe('k8s/ manifests (kustomize, kubernetes-validate, and the code they deploy)', function () {
  this.timeout(120_000);
  let baseText: string;
  let samplesText: string;
  let base: Doc[];
  let samples: Doc[];

  before(() => {
    baseText = kustomize(K8S);
    samplesText = kustomize(path.join(K8S, 'samples'));
    base = parseDocs(baseText);
    samples = parseDocs(samplesText);
  });

  describe('schema validation', () => {
    it('every object of `kubectl kustomize k8s/` is valid for every pinned Kubernetes version (--strict)', async () => {
      assert.ok(base.length >= 15, `the base builds many objects, got ${base.length}`);
      assertAllValid(base, await validate(baseText), 'k8s/');
    });

    it('every object of `kubectl kustomize k8s/samples` is valid too', async () => {
      assertAllValid(samples, await validate(samplesText), 'k8s/samples');
    });

    it('the validator really rejects broken manifests, so the checks above can fail', async () => {
      const deployment = find(base, 'Deployment', 'middlebox');
      const wrongType = structuredClone(deployment);
      wrongType.spec.replicas = 'three';
      let v = await validate(JSON.stringify(wrongType));
      assert.notEqual(v.code, 0);
      assert.ok(v.errors.some((e) => /spec\.replicas: .*'three'/.test(e)), v.output);

      // A misspelt field (serviceName for service) passes a lax check and fails the strict one.
      const misspelt = structuredClone(deployment);
      const probe = misspelt.spec.template.spec.containers[0].readinessProbe.grpc;
      probe.serviceName = probe.service;
      delete probe.service;
      v = await validate(JSON.stringify(misspelt), { strict: false });
      assert.equal(v.code, 0, v.output);
      v = await validate(JSON.stringify(misspelt));
      assert.notEqual(v.code, 0);
      assert.ok(v.errors.some((e) => /'serviceName' was unexpected/.test(e)), v.output);

      // A kind the validator has no schema for is only a warning to it; assertAllValid refuses it.
      const unknown = { apiVersion: 'middlebox.io/v1alpha1', kind: 'Policy', metadata: { name: 'x' } };
      v = await validate(JSON.stringify(unknown));
      assert.equal(v.code, 0, 'kubernetes-validate itself lets it through');
      assert.throws(() => assertAllValid([unknown], v, 'unknown kind'), /no schema/);
    });
  });

  describe('conventions', () => {
    it('the base puts everything namespaced into middlebox-system, which it creates', () => {
      const ns = find(base, 'Namespace', SYSTEM_NAMESPACE);
      assert.equal(ns.metadata.labels['pod-security.kubernetes.io/enforce'], 'restricted');
      const clusterScoped = ['Namespace', 'MutatingWebhookConfiguration'];
      for (const d of base.filter((x) => !clusterScoped.includes(x.kind))) {
        assert.equal(d.metadata.namespace, SYSTEM_NAMESPACE, `${d.kind}/${d.metadata.name}`);
      }
    });

    it('every object carries the recommended app.kubernetes.io labels', () => {
      for (const d of [...base, ...samples]) {
        const labels = d.metadata.labels ?? {};
        for (const key of ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/part-of', 'app.kubernetes.io/managed-by']) {
          assert.ok(labels[key], `${d.kind}/${d.metadata.name} has ${key}`);
        }
      }
    });

    it('one middlebox image, middlebox:0.1.0, run through the Dockerfile entrypoint (main.js) by every container that uses it', () => {
      const entrypoint = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));
      assert.ok(entrypoint, 'the Dockerfile has an exec-form ENTRYPOINT');
      assert.match((JSON.parse(entrypoint[1]!) as string[]).join(' '), /^node \S*dist\/src\/cli\/main\.js$/);
      const users: string[] = [];
      for (const { owner, template } of [...podTemplates(base), ...podTemplates(samples)]) {
        for (const c of [...(template.spec.initContainers ?? []), ...template.spec.containers] as Doc[]) {
          if (!/(^|\/)middlebox(:|@|$)/.test(c.image)) continue;
          assert.equal(c.image, IMAGE, `${owner} ${c.name}`);
          assert.equal(c.command, undefined, `${owner} ${c.name} keeps the image's entrypoint`);
          users.push(`${owner}/${c.name}`);
        }
      }
      assert.deepEqual(users.sort(), ['Deployment/middlebox-webhook/webhook', 'Deployment/middlebox/middlebox', 'Job/middlebox-policy-apply/apply']);
    });

    it('every pod runs non-root, read-only, without privileges or capabilities, with requests and limits', () => {
      for (const { owner, template } of [...podTemplates(base), ...podTemplates(samples)]) {
        const pod = template.spec;
        assert.equal(pod.securityContext?.runAsNonRoot, true, `${owner} runAsNonRoot`);
        assert.ok(Number.isInteger(pod.securityContext?.runAsUser) && pod.securityContext.runAsUser > 0, `${owner} names a non-zero UID`);
        assert.equal(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault', `${owner} seccomp`);
        for (const c of pod.containers as Doc[]) {
          const where = `${owner} container ${c.name}`;
          assert.equal(c.securityContext?.allowPrivilegeEscalation, false, where);
          assert.equal(c.securityContext?.readOnlyRootFilesystem, true, where);
          assert.deepEqual(c.securityContext?.capabilities?.drop, ['ALL'], where);
          assert.equal(c.securityContext?.capabilities?.add, undefined, where);
          for (const kind of ['requests', 'limits']) {
            assert.ok(c.resources?.[kind]?.cpu && c.resources?.[kind]?.memory, `${where} has ${kind} for cpu and memory`);
          }
        }
      }
    });

    it('least privilege: no RBAC at all, a ServiceAccount of its own per component, no API token mounted', () => {
      const rbac = [...base, ...samples].filter((d) => /^(Cluster)?Role(Binding)?$/.test(d.kind));
      assert.deepEqual(rbac.map((d) => `${d.kind}/${d.metadata.name}`), [], 'nothing is bound: no component calls the Kubernetes API');
      // No Kubernetes client among the dependencies: the code cannot call the API.
      const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
      assert.deepEqual(Object.keys(pkg.dependencies).filter((n) => /kube/i.test(n)), []);
      // Nor by hand: no source file looks for the in-cluster API address or the token.
      const sources = (dir: string): string[] =>
        fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
      for (const file of sources(path.join(ROOT, 'src'))) {
        assert.doesNotMatch(fs.readFileSync(file, 'utf8'), /KUBERNETES_SERVICE_HOST|serviceaccount\/token|\/api\/v1\//, path.relative(ROOT, file));
      }
      const accounts = new Set(ofKind(base, 'ServiceAccount').map((d) => d.metadata.name as string));
      assert.deepEqual([...accounts].sort(), ['etcd', 'middlebox', 'middlebox-webhook']);
      for (const sa of ofKind(base, 'ServiceAccount')) assert.equal(sa.automountServiceAccountToken, false, sa.metadata.name);
      for (const { owner, template } of [...podTemplates(base), ...podTemplates(samples)]) {
        assert.equal(template.spec.automountServiceAccountToken, false, `${owner} mounts no token`);
        if (template.spec.serviceAccountName !== undefined) assert.ok(accounts.has(template.spec.serviceAccountName), `${owner} uses a ServiceAccount of the base`);
      }
      for (const { owner, template } of podTemplates(base)) assert.ok(template.spec.serviceAccountName, `${owner} names its ServiceAccount`);
    });

    it('every Service, PodDisruptionBudget and NetworkPolicy selects pods that exist', () => {
      const all = [...base, ...samples];
      const pods = podTemplates(all).map(({ owner, template }) => ({ owner, namespace: all.find((d) => `${d.kind}/${d.metadata.name}` === owner)!.metadata.namespace, labels: template.metadata.labels }));
      for (const d of all.filter((x) => ['Service', 'PodDisruptionBudget', 'NetworkPolicy'].includes(x.kind))) {
        const selector: LabelSelector = d.kind === 'Service' ? { matchLabels: d.spec.selector } : d.kind === 'NetworkPolicy' ? d.spec.podSelector : d.spec.selector;
        const hit = pods.filter((p) => p.namespace === d.metadata.namespace && selects(selector, p.labels));
        assert.equal(hit.length, 1, `${d.kind}/${d.metadata.name} selects exactly one workload's pods, got ${hit.map((h) => h.owner).join(', ') || 'none'}`);
      }
    });
  });

  describe('etcd', () => {
    it('three members, started together, with an --initial-cluster made of the stable DNS names', () => {
      const sts = find(base, 'StatefulSet', 'etcd');
      const svc = find(base, 'Service', sts.spec.serviceName);
      assert.equal(sts.spec.replicas, 3);
      assert.equal(sts.spec.podManagementPolicy, 'Parallel', 'a member is ready only with a quorum: OrderedReady would never form the cluster');
      assert.equal(svc.spec.clusterIP, 'None', 'headless: one DNS name per member');
      assert.equal(svc.spec.publishNotReadyAddresses, true, 'members resolve each other before they are ready');
      assert.ok(selects({ matchLabels: svc.spec.selector }, sts.spec.template.metadata.labels));
      const c = container(sts, 'etcd');
      const args = kubeletExpand(c.args, c, { POD_NAME: 'etcd-1' });
      const expected = Array.from({ length: sts.spec.replicas }, (_, i) => `etcd-${i}=http://etcd-${i}.${svc.metadata.name}.${SYSTEM_NAMESPACE}.svc:2380`).join(',');
      assert.equal(flagValue(args, 'initial-cluster'), expected);
      assert.equal(flagValue(args, 'name'), 'etcd-1', 'the member name is the pod name');
      assert.ok(expected.split(',').includes(`etcd-1=${flagValue(args, 'initial-advertise-peer-urls')}`), 'each member advertises the peer URL the others expect');
      assert.equal(flagValue(args, 'initial-cluster-state'), 'new');
      const ports = Object.fromEntries((svc.spec.ports as Doc[]).map((p) => [p.name, portNumber(c, p.targetPort)]));
      assert.deepEqual(ports, { client: 2379, peer: 2380 });
      assert.equal(portOfListen(flagValue(args, 'listen-client-urls')!), 2379);
      assert.equal(portOfListen(flagValue(args, 'listen-peer-urls')!), 2380);
    });

    it('data on a volumeClaimTemplate, probes on /livez and /readyz, a budget of one member', () => {
      const sts = find(base, 'StatefulSet', 'etcd');
      const c = container(sts, 'etcd');
      const claim = (sts.spec.volumeClaimTemplates as Doc[])[0]!;
      const mount = (c.volumeMounts as Doc[]).find((m) => m.name === claim.metadata.name);
      assert.ok(mount, 'the claim is mounted');
      assert.ok(flagValue(c.args, 'data-dir')!.startsWith(`${mount.mountPath}/`), '--data-dir is on the claim');
      assert.equal(c.livenessProbe.httpGet.path, '/livez', 'liveness must not need a quorum');
      assert.equal(c.readinessProbe.httpGet.path, '/readyz');
      assert.ok(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold >= 120, 'time for a new cluster to form');
      const pdb = find(base, 'PodDisruptionBudget', 'etcd');
      assert.equal(pdb.spec.maxUnavailable, 1);
      assert.ok(selects(pdb.spec.selector, sts.spec.template.metadata.labels));
    });

    it('every etcd flag it uses exists in the etcd the project tests against', function () {
      const etcd = executable('etcd', ['/usr/bin/etcd']);
      if (!etcd) this.skip();
      const r = spawnSync(etcd!, ['--help'], { encoding: 'utf8', timeout: 10_000 });
      const help = `${r.stdout}${r.stderr}`;
      for (const a of container(find(base, 'StatefulSet', 'etcd'), 'etcd').args as string[]) {
        const flag = /^(--[a-z0-9-]+)/.exec(a)![1]!;
        assert.ok(help.includes(`${flag} `), `etcd --help lists ${flag}`);
      }
    });

    it('only the middlebox and the policy Job may reach etcd (NetworkPolicy)', () => {
      const np = find(base, 'NetworkPolicy', 'etcd');
      const nsLabels = { 'kubernetes.io/metadata.name': SYSTEM_NAMESPACE };
      const allowedClient = (labels: Record<string, string>) => networkPolicyAdmits(np, { namespace: SYSTEM_NAMESPACE, nsLabels, labels }, 'client');
      assert.ok(allowedClient(find(base, 'Deployment', 'middlebox').spec.template.metadata.labels));
      assert.ok(allowedClient(find(samples, 'Job', 'middlebox-policy-apply').spec.template.metadata.labels));
      assert.ok(!allowedClient(find(base, 'Deployment', 'middlebox-webhook').spec.template.metadata.labels), 'the webhook has no business with etcd');
      assert.ok(!networkPolicyAdmits(np, { namespace: 'shop', nsLabels: { 'kubernetes.io/metadata.name': 'shop' }, labels: { 'middlebox.io/etcd-client': 'true' } }, 'client'), 'nor has a pod of another namespace, whatever its labels');
    });
  });

  describe('the middlebox server', () => {
    it('Deployment: 3 replicas, spread over nodes, with a budget and a CPU autoscaler', () => {
      const dep = find(base, 'Deployment', 'middlebox');
      assert.equal(dep.spec.replicas, 3);
      const labels = dep.spec.template.metadata.labels;
      const spread = dep.spec.template.spec.topologySpreadConstraints as Doc[];
      assert.ok(spread.some((s) => s.topologyKey === 'kubernetes.io/hostname' && selects(s.labelSelector, labels)));
      const pdb = find(base, 'PodDisruptionBudget', 'middlebox');
      assert.ok(selects(pdb.spec.selector, labels));
      assert.equal(pdb.spec.maxUnavailable, 1);
      const hpa = find(base, 'HorizontalPodAutoscaler', 'middlebox');
      assert.equal(hpa.apiVersion, 'autoscaling/v2');
      assert.deepEqual(hpa.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: 'middlebox' });
      assert.ok(hpa.spec.minReplicas >= dep.spec.replicas && hpa.spec.maxReplicas > hpa.spec.minReplicas);
      assert.deepEqual(
        (hpa.spec.metrics as Doc[]).map((m) => [m.type, m.resource?.name]),
        [['Resource', 'cpu']],
      );
    });

    it('args are `middlebox serve` flags: etcd at the three members, the state dir on an emptyDir', () => {
      const dep = find(base, 'Deployment', 'middlebox');
      const c = container(dep, 'middlebox');
      assert.equal(c.args[0], 'serve');
      const args = kubeletExpand(c.args.slice(1), c);
      const values = parseFlags(serveCommand, args);
      // The endpoints are exactly the members' advertised client URLs.
      const sts = find(base, 'StatefulSet', 'etcd');
      const etcdC = container(sts, 'etcd');
      const members = Array.from({ length: sts.spec.replicas }, (_, i) => flagValue(kubeletExpand(etcdC.args, etcdC, { POD_NAME: `etcd-${i}` }), 'advertise-client-urls'));
      assert.deepEqual(String(values.etcd).split(','), members);
      const stateDir = String(values['state-dir']);
      const mount = (c.volumeMounts as Doc[]).find((m) => m.mountPath === stateDir);
      assert.ok(mount, '--state-dir is a mounted volume (the root filesystem is read-only)');
      const volume = (dep.spec.template.spec.volumes as Doc[]).find((v) => v.name === mount.name);
      assert.ok(volume?.emptyDir, '--state-dir is on an emptyDir');
      // The Service the injector's sidecars dial.
      const listenPort = portOfListen(String(values.listen));
      const svc = find(base, 'Service', 'middlebox');
      assert.equal(svc.spec.clusterIP, 'None', 'headless: Envoy (STRICT_DNS) sees and health-checks every replica');
      assert.ok(selects({ matchLabels: svc.spec.selector }, dep.spec.template.metadata.labels));
      const port = (svc.spec.ports as Doc[])[0]!;
      assert.equal(portNumber(c, port.targetPort), listenPort);
      assert.equal(`${svc.metadata.name}.${svc.metadata.namespace}.svc:${port.port}`, flagValue(container(find(base, 'Deployment', 'middlebox-webhook'), 'webhook').args, 'middlebox'));
      // The HTTP ext_authz port: served by the replicas, exposed by the Service, given to the injector.
      const httpPort = portOfListen(String(values['http-authz-listen']));
      const httpSvcPort = (svc.spec.ports as Doc[]).find((p) => portNumber(c, p.targetPort) === httpPort);
      assert.ok(httpSvcPort, `the Service exposes --http-authz-listen's port ${httpPort}`);
      assert.equal(`${svc.metadata.name}.${svc.metadata.namespace}.svc:${httpSvcPort.port}`, flagValue(container(find(base, 'Deployment', 'middlebox-webhook'), 'webhook').args, 'middlebox-http'));
      // Shutdown: answering while NOT_SERVING for longer than the sidecars' health checks take to
      // move away (two failed checks a second apart), then the drain, within the grace period.
      const delayMs = Number(values['shutdown-delay-ms']);
      const drainMs = Number(values['drain-ms'] ?? DEFAULTS.drainMs);
      assert.ok(delayMs >= 4000, `--shutdown-delay-ms ${delayMs}`);
      assert.ok(dep.spec.template.spec.terminationGracePeriodSeconds * 1000 >= delayMs + drainMs + 2000);
    });

    it('NetworkPolicy: its ports are the container\'s; a pod injected offline gets in from any namespace; the other workloads do not', () => {
      const np = find(base, 'NetworkPolicy', 'middlebox');
      const ports = container(find(base, 'Deployment', 'middlebox'), 'middlebox').ports as Doc[];
      for (const rule of np.spec.ingress as Doc[]) {
        for (const p of rule.ports as Doc[]) assert.ok(ports.some((c) => c.name === p.port), `the NetworkPolicy's port ${p.port} is a container port`);
      }
      // `middlebox inject -f` on a Deployment opted in by annotation, for a namespace with no label at all.
      const offline = structuredClone(find(samples, 'Deployment', 'shop'));
      offline.spec.template.metadata.annotations = { ...offline.spec.template.metadata.annotations, [ANNOTATIONS.inject]: 'true' };
      const { object } = injectObject(offline, {}, injectSettings({}).config) as { object: Doc };
      const plainNs = { 'kubernetes.io/metadata.name': 'plain' };
      for (const port of ['grpc', 'authz-http']) {
        assert.ok(networkPolicyAdmits(np, { namespace: 'plain', nsLabels: plainNs, labels: object.spec.template.metadata.labels }, port), `an offline-injected pod on ${port}`);
        for (const owner of podTemplates([...base, ...samples])) {
          const d = [...base, ...samples].find((x) => `${x.kind}/${x.metadata.name}` === owner.owner)!;
          if (owner.owner === 'Deployment/shop') continue;
          const from = { namespace: d.metadata.namespace, nsLabels: { 'kubernetes.io/metadata.name': d.metadata.namespace }, labels: owner.template.metadata.labels };
          assert.ok(!networkPolicyAdmits(np, from, port), `${owner.owner} has no sidecar: not on ${port}`);
        }
      }
    });

    it('native gRPC probes on the server port, none on a component that etcd trouble turns NOT_SERVING', () => {
      const c = container(find(base, 'Deployment', 'middlebox'), 'middlebox');
      const listenPort = portOfListen(String(parseFlags(serveCommand, kubeletExpand(c.args.slice(1), c)).listen));
      for (const kind of ['startupProbe', 'livenessProbe', 'readinessProbe']) {
        const probe = c[kind];
        assert.ok(probe?.grpc, `${kind} is a grpc probe`);
        assert.equal(portNumber(c, probe.grpc.port), listenPort, `${kind} port`);
        assert.equal(typeof probe.grpc.service, 'string', `${kind} names its service`);
        // A replica without etcd keeps deciding from local state: restarting or unreadying it would not help.
        assert.ok(![ETCD_COMPONENT, POLICY_COMPONENT].includes(probe.grpc.service), `${kind} does not probe ${probe.grpc.service}`);
      }
      assert.ok([AUTHORIZATION_SERVICE, EXTERNAL_PROCESSOR_SERVICE, ''].includes(c.readinessProbe.grpc.service));
    });
  });

  describe('the webhook', () => {
    let webhookDep: Doc;
    let webhookC: Doc;
    let mwc: Doc;
    let webhookValues: Record<string, unknown>;

    before(() => {
      webhookDep = find(base, 'Deployment', 'middlebox-webhook');
      webhookC = container(webhookDep, 'webhook');
      mwc = find(base, 'MutatingWebhookConfiguration', 'middlebox-sidecar-injector');
      assert.deepEqual(webhookC.args.slice(0, 2), ['inject', 'serve']);
      webhookValues = parseFlags(injectServeCommand, kubeletExpand(webhookC.args.slice(2), webhookC));
    });

    it('args are `middlebox inject serve` flags; the certificate comes from the Secret middlebox-webhook-tls', () => {
      assert.equal(portOfListen(String(webhookValues.listen)), 9443);
      const cert = String(webhookValues['tls-cert']);
      const key = String(webhookValues['tls-key']);
      assert.deepEqual([path.basename(cert), path.basename(key)], ['tls.crt', 'tls.key'], 'the keys of a kubernetes.io/tls Secret');
      const mount = (webhookC.volumeMounts as Doc[]).find((m) => m.mountPath === path.dirname(cert));
      assert.ok(mount && path.dirname(key) === mount.mountPath);
      const volume = (webhookDep.spec.template.spec.volumes as Doc[]).find((v) => v.name === mount.name);
      assert.equal(volume?.secret?.secretName, 'middlebox-webhook-tls');
      // The Secret is the user's (k8s/README.md): the base must never overwrite it.
      assert.equal(base.filter((d) => d.kind === 'Secret').length, 0);
    });

    it('Service 443 → 9443; every webhook entry calls it on the injector path, v1 only, no side effects', () => {
      const svc = find(base, 'Service', 'middlebox-webhook');
      assert.ok(selects({ matchLabels: svc.spec.selector }, webhookDep.spec.template.metadata.labels));
      const [port] = svc.spec.ports as Doc[];
      assert.equal(port!.port, 443);
      assert.equal(portNumber(webhookC, port!.targetPort), portOfListen(String(webhookValues.listen)));
      const hooks = mwc.webhooks as Doc[];
      assert.equal(hooks.length, 2);
      for (const h of hooks) {
        assert.deepEqual(h.clientConfig.service, { name: svc.metadata.name, namespace: SYSTEM_NAMESPACE, path: INJECT_PATH, port: 443 }, h.name);
        assert.equal(h.clientConfig.caBundle, undefined, 'caBundle is patched in by the user, never overwritten by apply');
        assert.deepEqual(h.admissionReviewVersions, ['v1']);
        assert.equal(h.sideEffects, 'None');
        assert.equal(h.failurePolicy, 'Fail', 'a pod that asked for the firewall must not start without it');
        assert.ok(['Never', 'IfNeeded'].includes(h.reinvocationPolicy));
        assert.ok(h.timeoutSeconds >= 1 && h.timeoutSeconds <= 30);
        assert.deepEqual(h.rules, [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }]);
      }
      // The webhook's probes are its own health paths, over HTTPS.
      for (const kind of ['livenessProbe', 'readinessProbe']) {
        assert.equal(webhookC[kind].httpGet.scheme, 'HTTPS');
        assert.equal(portNumber(webhookC, webhookC[kind].httpGet.port), 9443);
      }
      const pdb = find(base, 'PodDisruptionBudget', 'middlebox-webhook');
      assert.ok(selects(pdb.spec.selector, webhookDep.spec.template.metadata.labels));
      assert.ok(webhookDep.spec.replicas >= 2, 'with failurePolicy Fail, one replica is not enough');
    });

    it('the sample app as this webhook injects it is valid for every pinned Kubernetes version, Envoy a native sidecar', async () => {
      const { config, namespaceLabels } = injectSettings(webhookValues);
      const { object } = injectObject(structuredClone(find(samples, 'Deployment', 'shop')), namespaceLabels, config) as { object: Doc };
      const spec = object.spec.template.spec as Doc;
      const envoy = (spec.initContainers as Doc[]).find((c) => c.name === NAMES.envoyContainer)!;
      assert.equal(envoy.restartPolicy, 'Always');
      assert.ok(!(spec.containers as Doc[]).some((c) => c.name === NAMES.envoyContainer));
      assertAllValid([object], await validate(stringifyYaml(object)), 'the injected sample Deployment');
    });

    it('the grace period covers the shutdown delay and the drain', () => {
      const delayMs = Number(webhookValues['shutdown-delay-ms'] ?? DEFAULT_WEBHOOK_SHUTDOWN_DELAY_MS);
      const drainMs = Number(webhookValues['drain-ms'] ?? DEFAULT_WEBHOOK_DRAIN_MS);
      assert.ok(delayMs >= 5000, `${delayMs} ms: long enough for the endpoints to drop the replica`);
      assert.ok(webhookDep.spec.template.spec.terminationGracePeriodSeconds * 1000 >= delayMs + drainMs + 2000);
    });

    it('selectors and the injector agree: namespace enabled or pod labelled "true"; never "false", never the system namespaces, never twice; the middlebox\'s NetworkPolicy lets in exactly the injected pods', () => {
      const { config, namespaceLabels } = injectSettings(webhookValues);
      const middleboxNp = find(base, 'NetworkPolicy', 'middlebox');
      const shopNs = find(samples, 'Namespace', 'shop');
      const nsLabels = (ns: Doc) => ({ ...ns.metadata.labels, 'kubernetes.io/metadata.name': ns.metadata.name });
      const namespaces: Record<string, Record<string, string>> = {
        shop: nsLabels(shopNs),
        plain: { 'kubernetes.io/metadata.name': 'plain' },
        // Even labelled for injection, the system namespaces are left alone.
        [SYSTEM_NAMESPACE]: { ...nsLabels(find(base, 'Namespace', SYSTEM_NAMESPACE)), [NAMESPACE_LABEL]: NAMESPACE_LABEL_ENABLED },
        'kube-system': { 'kubernetes.io/metadata.name': 'kube-system', [NAMESPACE_LABEL]: NAMESPACE_LABEL_ENABLED },
      };
      assert.equal(namespaces.shop![NAMESPACE_LABEL], NAMESPACE_LABEL_ENABLED, 'the sample namespace opts in');
      const template = find(samples, 'Deployment', 'shop').spec.template;
      const pods: Record<string, { labels?: Record<string, string>; annotations?: Record<string, string> }> = {
        plain: {},
        'label true': { labels: { [ANNOTATIONS.inject]: 'true' } },
        'label false': { labels: { [ANNOTATIONS.inject]: 'false' } },
        'annotation false': { annotations: { [ANNOTATIONS.inject]: 'false' } },
        'label true, annotation false': { labels: { [ANNOTATIONS.inject]: 'true' }, annotations: { [ANNOTATIONS.inject]: 'false' } },
      };
      const expected: Record<string, string[]> = {
        shop: ['plain', 'label true'],
        plain: ['label true'],
        [SYSTEM_NAMESPACE]: [],
        'kube-system': [],
      };
      /** Every pod as the API server stores it: with the webhook's patch applied when it injected. */
      const created: Array<{ ns: string; name: string; labels: Record<string, string>; injected: boolean }> = [];
      for (const [ns, labelsOfNs] of Object.entries(namespaces)) {
        const injected: string[] = [];
        for (const [name, extra] of Object.entries(pods)) {
          const pod = {
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { ...template.metadata, namespace: ns, labels: { ...template.metadata.labels, ...extra.labels }, annotations: { ...extra.annotations } },
            spec: template.spec,
          };
          const called = (mwc.webhooks as Doc[]).filter((h) => selects(h.namespaceSelector, labelsOfNs) && selects(h.objectSelector, pod.metadata.labels));
          assert.ok(called.length <= 1, `${ns}/${name}: reviewed by ${called.map((h) => h.name).join(' and ')}`);
          let stored: Doc = pod;
          if (called.length === 1) {
            const review = { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'u1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: ns, object: pod } };
            const { log, review: answer } = admit(review, config, namespaceLabels);
            if (log.injected) {
              injected.push(name);
              const ops = JSON.parse(Buffer.from(answer.response.patch!, 'base64').toString('utf8')) as Operation[];
              stored = applyPatch(structuredClone(pod), ops, /* validate */ true).newDocument;
            }
          }
          created.push({ ns, name, labels: stored.metadata.labels, injected: injected.includes(name) });
        }
        assert.deepEqual(injected, expected[ns], `pods injected in namespace ${ns}`);
      }
      // A sidecar reaches the replicas' decision ports, a pod without one does not; every pod reaches the metrics.
      for (const { ns, name, labels, injected } of created) {
        const from = { namespace: ns, nsLabels: namespaces[ns]!, labels };
        for (const port of ['grpc', 'authz-http']) {
          assert.equal(networkPolicyAdmits(middleboxNp, from, port), injected, `${ns}/${name} (${injected ? 'injected' : 'not injected'}) on the middlebox's ${port} port`);
        }
        assert.ok(networkPolicyAdmits(middleboxNp, from, 'metrics'), `${ns}/${name} reaches the metrics port`);
      }
    });
  });

  describe('the sample', () => {
    it('the policy in the ConfigMap is k8s/samples/policy.yaml and passes `middlebox policy validate`', async () => {
      const file = path.join(K8S, 'samples', 'policy.yaml');
      const cms = ofKind(samples, 'ConfigMap').filter((d) => d.metadata.name.startsWith('middlebox-sample-policy'));
      assert.equal(cms.length, 1);
      assert.equal(cms[0]!.metadata.namespace, SYSTEM_NAMESPACE);
      assert.equal(cms[0]!.data['policy.yaml'], fs.readFileSync(file, 'utf8'));
      const r = await middlebox(['policy', 'validate', '-f', file]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'policy/shop valid\n');
      // The policy selects the sample Service by the names it has in the cluster.
      const svc = find(samples, 'Service', 'shop');
      const hosts = (parseYaml(fs.readFileSync(file, 'utf8')) as Doc).spec.selector.hosts as string[];
      assert.ok(hosts.includes(`${svc.metadata.name}.${svc.metadata.namespace}.svc`), `${hosts}`);
      // The sample app's sidecar sends exactly the headers the policy's rules read.
      const read = await middlebox(['policy', 'headers', '-f', file]);
      assert.equal(read.code, 0, read.stderr);
      assert.equal(find(samples, 'Deployment', 'shop').spec.template.metadata.annotations[ANNOTATIONS.authzHeaders], read.stdout.trim());
    });

    it('the Job mounts that ConfigMap where `policy apply --filename` reads it', () => {
      const job = find(samples, 'Job', 'middlebox-policy-apply');
      const c = container(job, 'apply');
      assert.deepEqual(c.args.slice(0, 2), ['policy', 'apply']);
      const filename = flagValue(c.args, 'filename')!;
      const mount = (c.volumeMounts as Doc[]).find((m) => m.mountPath === path.dirname(filename));
      assert.ok(mount);
      const volume = (job.spec.template.spec.volumes as Doc[]).find((v) => v.name === mount.name);
      const cm = find(samples, 'ConfigMap', volume?.configMap?.name);
      assert.ok(cm.data[path.basename(filename)]);
      assert.equal(flagValue(c.args, 'etcd'), flagValue(kubeletExpand(container(find(base, 'Deployment', 'middlebox'), 'middlebox').args, container(find(base, 'Deployment', 'middlebox'), 'middlebox')), 'etcd'));
    });

    it('the sample app is a Deployment and a Service in an injected namespace, on the app port the sidecar forwards to', () => {
      const dep = find(samples, 'Deployment', 'shop');
      const svc = find(samples, 'Service', 'shop');
      assert.equal(dep.metadata.namespace, 'shop');
      assert.equal(find(samples, 'Namespace', 'shop').metadata.labels[NAMESPACE_LABEL], NAMESPACE_LABEL_ENABLED);
      const web = container(dep, 'web');
      assert.equal(portNumber(web, (svc.spec.ports as Doc[])[0]!.targetPort), web.ports[0].containerPort);
    });
  });

  describe('run for real with the manifests\' arguments', () => {
    let etcd: EtcdProcess;
    let dir: string;
    const children: LabChild[] = [];

    /** Ports the manifests leave at a fixed default (fine in a pod, shared on this machine) made free ones. */
    const localOnly = async (httpPort?: number): Promise<string[]> => [
      `--admin-listen=127.0.0.1:${await freePort()}`,
      `--http-authz-listen=127.0.0.1:${httpPort ?? (await freePort())}`,
    ];

    before(async () => {
      etcd = await EtcdProcess.start();
      dir = makeTempDir('middlebox-k8s-run-');
    });

    after(async () => {
      for (const c of children) await c.stop(5000);
      await etcd?.stop();
      if (dir) removeTempDir(dir);
    });

    it('the server: every probed service is SERVING, the replica is named by its pod, the state dir is written', async () => {
      const c = container(find(base, 'Deployment', 'middlebox'), 'middlebox');
      const port = await freePort();
      const stateDir = path.join(dir, 'state');
      let args = kubeletExpand(c.args.slice(1), c, { MIDDLEBOX_ETCD: etcd.endpoint, POD_NAME: 'middlebox-7d9f-abcde' });
      args = setFlag(setFlag(args, 'listen', `127.0.0.1:${port}`), 'state-dir', stateDir);
      const httpPort = await freePort();
      const child = LabChild.spawn({ name: 'middlebox serve', command: process.execPath, args: [CLI, 'serve', ...args, ...(await localOnly(httpPort))] });
      children.push(child);
      const health = new HealthClient(`127.0.0.1:${port}`);
      try {
        await child.waitReady(async () => (await health.check(c.readinessProbe.grpc.service)) === 'SERVING', 15_000, 'the readiness probe\'s service SERVING');
        // The HTTP ext_authz listener answers Envoy's HTTP health check.
        assert.equal((await adminGet(`127.0.0.1:${httpPort}`, '/healthz')).status, 200);
        for (const kind of ['startupProbe', 'livenessProbe', 'readinessProbe']) {
          assert.equal(await health.check(c[kind].grpc.service), 'SERVING', `${kind} service ${JSON.stringify(c[kind].grpc.service)}`);
        }
        // The health service tells unknown names apart, so SERVING above means registered.
        assert.equal(await health.check('no.such.service'), 'SERVICE_UNKNOWN');
        await waitFor(async () => (await etcdKeys(etcd.endpoint, '/middlebox/replicas/')).some((k) => k.endsWith('/middlebox-7d9f-abcde')), { timeoutMs: 10_000, what: 'the replica in etcd membership under its pod name' });
        await waitFor(() => fs.existsSync(path.join(stateDir, 'policies.json')), { timeoutMs: 10_000, what: 'policies.json in --state-dir' });
      } finally {
        health.close();
        await child.stop(5000);
      }
    });

    it('a replica that has no policy yet is not ready (etcd unreachable, nothing in its state dir)', async () => {
      const c = container(find(base, 'Deployment', 'middlebox'), 'middlebox');
      const port = await freePort();
      const nowhere = `http://127.0.0.1:${await freePort()}`;
      let args = kubeletExpand(c.args.slice(1), c, { MIDDLEBOX_ETCD: nowhere });
      args = setFlag(setFlag(args, 'listen', `127.0.0.1:${port}`), 'state-dir', path.join(dir, 'empty-state'));
      const child = LabChild.spawn({ name: 'middlebox serve (no etcd)', command: process.execPath, args: [CLI, 'serve', ...args, ...(await localOnly())] });
      children.push(child);
      const health = new HealthClient(`127.0.0.1:${port}`);
      try {
        await child.waitReady(async () => (await health.check(c.readinessProbe.grpc.service)) === 'NOT_SERVING', 15_000, 'an answer from the health service');
        assert.equal(await health.check(c.startupProbe.grpc.service), 'NOT_SERVING');
      } finally {
        health.close();
        await child.stop(5000);
      }
    });

    it('the policy Job\'s command stores the sample policy', async () => {
      const c = container(find(samples, 'Job', 'middlebox-policy-apply'), 'apply');
      let args = kubeletExpand(c.args, c);
      args = setFlag(setFlag(args, 'filename', path.join(K8S, 'samples', 'policy.yaml')), 'etcd', etcd.endpoint);
      const r = await middlebox(args, { timeoutMs: 20_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'policy/shop created\n');
      assert.deepEqual(await etcdKeys(etcd.endpoint, '/middlebox/policies/'), ['/middlebox/policies/shop']);
    });

    it('the webhook, with a certificate from k8s/webhook/make-tls.sh: probes answer over verified TLS, the sample app gets its sidecar', async () => {
      const dep = find(base, 'Deployment', 'middlebox-webhook');
      const c = container(dep, 'webhook');
      const mwc = find(base, 'MutatingWebhookConfiguration', 'middlebox-sidecar-injector');
      const tls = path.join(dir, 'tls');
      const made = spawnSync('sh', [path.join(K8S, 'webhook', 'make-tls.sh'), tls], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(made.status, 0, made.stderr);
      const port = await freePort();
      let args = kubeletExpand(c.args.slice(2), c);
      args = setFlag(args, 'listen', `127.0.0.1:${port}`);
      args = setFlag(args, 'tls-cert', path.join(tls, path.basename(flagValue(args, 'tls-cert')!)));
      args = setFlag(args, 'tls-key', path.join(tls, path.basename(flagValue(args, 'tls-key')!)));
      const child = LabChild.spawn({ name: 'middlebox inject serve', command: process.execPath, args: [CLI, 'inject', 'serve', ...args] });
      children.push(child);
      // Verified as the API server does: against the CA that becomes the caBundle, by the Service's name.
      const ca = fs.readFileSync(path.join(tls, 'ca.crt'));
      const service = mwc.webhooks[0].clientConfig.service;
      const servername = `${service.name}.${service.namespace}.svc`;
      const url = (p: string) => `https://127.0.0.1:${port}${p}`;
      await child.waitReady(async () => (await httpsGet(url(c.readinessProbe.httpGet.path), ca, servername)).status === 200, 15_000, 'the readiness path answering 200');
      assert.equal((await httpsGet(url(c.livenessProbe.httpGet.path), ca, servername)).status, 200);

      const template = find(samples, 'Deployment', 'shop').spec.template;
      const review = {
        apiVersion: 'admission.k8s.io/v1',
        kind: 'AdmissionReview',
        request: { uid: 'k8s-test', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'shop', object: { apiVersion: 'v1', kind: 'Pod', metadata: template.metadata, spec: template.spec } },
      };
      const r = await httpsGet(url(service.path), ca, servername, JSON.stringify(review));
      assert.equal(r.status, 200, r.body);
      const response = (JSON.parse(r.body) as Doc).response;
      assert.equal(response.uid, 'k8s-test');
      assert.equal(response.allowed, true);
      const ops = JSON.parse(Buffer.from(response.patch, 'base64').toString('utf8')) as Doc[];
      const added = ops.flatMap((o) => (o.op === 'add' ? [o.value].flat() : [])) as Doc[];
      const byName = (n: string) => added.find((v) => v && typeof v === 'object' && v.name === n);
      assert.equal(byName(NAMES.envoyContainer)?.image, flagValue(args, 'envoy-image'));
      assert.equal(byName(NAMES.initContainer)?.image, flagValue(args, 'init-image'));
      assert.ok(ops.some((o) => o.path.endsWith(`/${ANNOTATIONS.status.replace('/', '~1')}`) && o.value === STATUS_INJECTED) || ops.some((o) => o.path === '/metadata/annotations' && o.value[ANNOTATIONS.status] === STATUS_INJECTED));
    });
  });
  describe('the mTLS component (k8s/components/mtls), in an overlay of the base', () => {
    let overlay: Doc[];
    let overlayText: string;
    let dir: string;
    const children: LabChild[] = [];

    before(() => {
      dir = makeTempDir('middlebox-k8s-overlay-');
      const rel = path.relative(dir, K8S);
      fs.writeFileSync(path.join(dir, 'kustomization.yaml'), `resources: [${rel}]\ncomponents: [${rel}/components/mtls]\n`);
      overlayText = kustomize(dir);
      overlay = parseDocs(overlayText);
    });
    after(async () => {
      for (const c of children) await c.stop(5000);
      if (dir) removeTempDir(dir);
    });

    it('builds, every object is valid (--strict), and only the two Deployments differ from the base', async () => {
      assertAllValid(overlay, await validate(overlayText), 'the base with k8s/components/mtls');
      const key = (d: Doc) => `${d.kind}/${d.metadata.name}`;
      assert.deepEqual(overlay.map(key), base.map(key));
      const changed = overlay.filter((d, i) => JSON.stringify(d) !== JSON.stringify(base[i])).map(key);
      assert.deepEqual(changed, ['Deployment/middlebox', 'Deployment/middlebox-webhook']);
    });

    it('the replicas: TLS files from the Secret middlebox-tls, client certificates required, probes on the admin port', () => {
      const dep = find(overlay, 'Deployment', 'middlebox');
      const c = container(dep, 'middlebox');
      const values = parseFlags(serveCommand, kubeletExpand(c.args.slice(1), c));
      const files = ['tls-cert', 'tls-key', 'tls-client-ca'].map((f) => String(values[f]));
      assert.deepEqual(files.map((f) => path.basename(f)), ['tls.crt', 'tls.key', 'ca.crt']);
      const mount = (c.volumeMounts as Doc[]).find((m) => m.mountPath === path.dirname(files[0]!));
      assert.ok(mount && files.every((f) => path.dirname(f) === mount.mountPath), 'every file in one mounted volume');
      const volume = (dep.spec.template.spec.volumes as Doc[]).find((v) => v.name === mount.name);
      assert.equal(volume?.secret.secretName, 'middlebox-tls');
      // The kubelet's gRPC probes do not speak TLS: every probe is plain HTTP on the admin port.
      const admin = portOfListen(String(values['admin-listen']));
      for (const kind of ['startupProbe', 'livenessProbe', 'readinessProbe']) {
        assert.equal(c[kind].grpc, undefined, kind);
        assert.equal(portNumber(c, c[kind].httpGet.port), admin, `${kind} on the admin port`);
      }
    });

    it('the webhook: every injected sidecar mounts its namespace\'s middlebox-sidecar-tls and presents its certificate', async () => {
      const c = container(find(overlay, 'Deployment', 'middlebox-webhook'), 'webhook');
      const { config, namespaceLabels } = injectSettings(parseFlags(injectServeCommand, kubeletExpand(c.args.slice(2), c)));
      assert.equal(config.middleboxTlsSecret, 'middlebox-sidecar-tls');
      assert.equal(config.middleboxMtls, true);
      const { object } = injectObject(structuredClone(find(samples, 'Deployment', 'shop')), namespaceLabels, config) as { object: Doc };
      const volume = (object.spec.template.spec.volumes as Doc[]).find((v) => v.name === NAMES.tlsVolume);
      assert.equal(volume?.projected.sources[0].secret.name, 'middlebox-sidecar-tls');
      assertAllValid([object], await validate(stringifyYaml(object)), 'the sample Deployment injected with mTLS');
    });

    it('run for real with those arguments: probes answer 200 on the admin port, gRPC takes only clients with a certificate', async () => {
      const c = container(find(overlay, 'Deployment', 'middlebox'), 'middlebox');
      const pki = makeTestPki({ dir: path.join(dir, 'pki') });
      const etcd = await EtcdProcess.start();
      try {
        const port = await freePort();
        const adminPort = await freePort();
        let args = kubeletExpand(c.args.slice(1), c, { MIDDLEBOX_ETCD: etcd.endpoint, POD_NAME: 'middlebox-7d9f-abcde' });
        args = setFlag(setFlag(args, 'listen', `127.0.0.1:${port}`), 'state-dir', path.join(dir, 'state'));
        args = setFlag(setFlag(args, 'admin-listen', `127.0.0.1:${adminPort}`), 'http-authz-listen', `127.0.0.1:${await freePort()}`);
        // What the Secret's volume holds, from the test's CA.
        args = setFlag(setFlag(setFlag(args, 'tls-cert', pki.server.certFile), 'tls-key', pki.server.keyFile), 'tls-client-ca', pki.caFile);
        const child = LabChild.spawn({ name: 'middlebox serve (mTLS)', command: process.execPath, args: [CLI, 'serve', ...args] });
        children.push(child);
        const probe = (kind: string) => adminGet(`127.0.0.1:${adminPort}`, c[kind].httpGet.path as string);
        await child.waitReady(async () => (await probe('readinessProbe').catch(() => ({ status: 0 }))).status === 200, 15_000, 'the readiness probe answering 200');
        for (const kind of ['startupProbe', 'livenessProbe']) assert.equal((await probe(kind)).status, 200, kind);
        const withCert = new HealthClient(`127.0.0.1:${port}`, { caFile: pki.caFile, ...pki.client });
        const withoutCert = new HealthClient(`127.0.0.1:${port}`, { caFile: pki.caFile });
        const plain = new HealthClient(`127.0.0.1:${port}`);
        try {
          assert.equal(await withCert.check(AUTHORIZATION_SERVICE), 'SERVING');
          await assert.rejects(withoutCert.check('', 2000), 'no client certificate, no answer');
          await assert.rejects(plain.check('', 2000), 'no plaintext');
        } finally {
          for (const h of [withCert, withoutCert, plain]) h.close();
          await child.stop(5000);
        }
      } finally {
        await etcd.stop();
        pki.remove();
      }
    });
  });
});
