// `middlebox inject serve` as a real process over real HTTPS: AdmissionReviews in, JSON Patches out
// (applied with an independent RFC 6902 implementation, they must give exactly injectPod's pod),
// the HTTP errors, the certificate reload, and the draining shutdown. Certificates are made for
// each run with the openssl command line, in a temp dir.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { applyPatch, deepClone, type Operation } from 'fast-json-patch';
import { ANNOTATIONS, SIDECAR_LABEL, SIDECAR_LABEL_INJECTED, injectConfig, NAMES } from '../../src/inject/config';
import { injectPod } from '../../src/inject/patch';
import type { Pod } from '../../src/inject/types';
import { freePort, waitFor } from '../../src/lab/ports';
import { findExecutable, LabChild, makeTempDir, removeTempDir } from '../../src/lab/processes';
import { CLI, middlebox } from '../harness/cli';

type Doc = Record<string, any>;

const HOST = '127.0.0.1';
// Flags given to every webhook, so that the expected pod is not just the defaults by accident.
const MIDDLEBOX = 'middlebox.test-system.svc:9101';
const ENVOY_IMAGE = 'example.test/envoy:webhook-test';
const config = injectConfig({ middleboxAddress: MIDDLEBOX, envoyImage: ENVOY_IMAGE, middleboxTlsSecret: 'sidecar-tls', middleboxMtls: true });

interface CertFiles {
  cert: string;
  key: string;
  pem: string;
  fingerprint256: string;
}

/** A fresh self-signed EC certificate for 127.0.0.1, with a random serial. */
function makeCert(dir: string, cn: string): CertFiles {
  const cert = path.join(dir, `${cn}.crt`);
  const key = path.join(dir, `${cn}.key`);
  execFileSync(
    findExecutable('openssl'),
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert,
      '-days', '1', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=IP:${HOST}`, '-set_serial', `0x${crypto.randomBytes(8).toString('hex')}`],
    { stdio: 'pipe', timeout: 15_000 },
  );
  const pem = fs.readFileSync(cert, 'utf8');
  return { cert, key, pem, fingerprint256: new crypto.X509Certificate(pem).fingerprint256 };
}

/** Replaces `target` atomically with `source`'s content (as a Secret volume update does). */
function installFile(source: string, target: string): void {
  const tmp = `${target}.tmp-${process.pid}`;
  fs.copyFileSync(source, tmp);
  fs.renameSync(tmp, target);
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  /** SHA-256 fingerprint of the certificate the server presented. */
  fingerprint256: string;
}

function pod(annotations?: Record<string, string>): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { generateName: 'web-7d9c-', namespace: 'shop', labels: { app: 'web' }, ...(annotations ? { annotations } : {}) },
    spec: { containers: [{ name: 'web', image: 'nginx:1.27', ports: [{ containerPort: 8080, name: 'http' }] }] },
  };
}

/** An AdmissionReview as kube-apiserver sends it for the creation of `object`. */
function admissionReview(uid: string, object: unknown, over: Doc = {}): Doc {
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid,
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      requestKind: { group: '', version: 'v1', kind: 'Pod' },
      requestResource: { group: '', version: 'v1', resource: 'pods' },
      namespace: 'shop',
      operation: 'CREATE',
      userInfo: { username: 'system:serviceaccount:kube-system:replicaset-controller' },
      object,
      oldObject: null,
      dryRun: false,
      options: { kind: 'CreateOptions', apiVersion: 'meta.k8s.io/v1' },
      ...over,
    },
  };
}

/** A running `middlebox inject serve`. */
class Webhook {
  private constructor(
    readonly child: LabChild,
    readonly port: number,
    private readonly trusted: () => string[],
  ) {}

  static async start(certs: { cert: string; key: string }, trusted: () => string[], extra: string[] = []): Promise<Webhook> {
    const port = await freePort(HOST);
    const child = LabChild.spawn({
      name: `middlebox inject serve :${port}`,
      command: process.execPath,
      args: [CLI, 'inject', 'serve', '--listen', `${HOST}:${port}`, '--tls-cert', certs.cert, '--tls-key', certs.key,
        '--middlebox', MIDDLEBOX, '--envoy-image', ENVOY_IMAGE, '--middlebox-tls-secret', 'sidecar-tls', '--middlebox-mtls', '--log-level', 'debug', ...extra],
    });
    const hook = new Webhook(child, port, trusted);
    await child.waitReady(async () => (await hook.request('GET', '/healthz')).status === 200, 15_000, `GET /healthz on :${port}`);
    return hook;
  }

  /** One request on its own connection (no keep-alive, no TLS session reuse), verified against the trusted certificates. */
  request(method: string, urlPath: string, opts: { body?: string | Buffer; contentType?: string | null; headers?: Doc } = {}): Promise<Reply> {
    return new Promise((resolve, reject) => {
      const headers: Doc = { ...opts.headers };
      if (opts.contentType !== null) headers['content-type'] = opts.contentType ?? 'application/json';
      const req = https.request(
        { host: HOST, port: this.port, method, path: urlPath, headers, ca: this.trusted(), agent: false, timeout: 5000 },
        (res) => {
          const fingerprint256 = (res.socket as tls.TLSSocket).getPeerCertificate().fingerprint256;
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), fingerprint256 }));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath}: no answer within 5 s`)));
      req.on('error', reject);
      req.end(opts.body);
    });
  }

  async review(body: Doc): Promise<{ reply: Reply; response: Doc }> {
    const reply = await this.request('POST', '/inject?timeout=10s', { body: JSON.stringify(body) });
    assert.equal(reply.status, 200, reply.body);
    assert.match(String(reply.headers['content-type']), /^application\/json/);
    const out = JSON.parse(reply.body) as Doc;
    assert.equal(out.apiVersion, 'admission.k8s.io/v1');
    assert.equal(out.kind, 'AdmissionReview');
    return { reply, response: out.response };
  }

  /** The certificate the server presents now (fresh handshake, no verification). */
  presented(): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: HOST, port: this.port, rejectUnauthorized: false }, () => {
        const fp = socket.getPeerCertificate().fingerprint256;
        socket.destroy();
        resolve(fp);
      });
      socket.setTimeout(3000, () => socket.destroy(new Error('TLS handshake timed out')));
      socket.on('error', reject);
    });
  }

  async stop(): Promise<void> {
    await this.child.stop(3000);
  }
}

/** Raw HTTP/1.1 over TLS, for requests https.request will not send as written. */
function rawTls(port: number, ca: string[]): Promise<{ socket: tls.TLSSocket; reply: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: HOST, port, ca }, () => {
      const chunks: Buffer[] = [];
      const reply = new Promise<string>((res) => {
        socket.on('data', (c: Buffer) => chunks.push(c));
        const done = () => res(Buffer.concat(chunks).toString('utf8'));
        socket.on('end', done);
        socket.on('close', done);
        socket.on('error', done);
      });
      resolve({ socket, reply });
    });
    socket.setTimeout(10_000, () => socket.destroy(new Error('raw request timed out')));
    socket.once('error', reject);
  });
}

function decodePatch(response: Doc): Operation[] {
  assert.equal(response.patchType, 'JSONPatch');
  assert.equal(typeof response.patch, 'string');
  const ops = JSON.parse(Buffer.from(response.patch as string, 'base64').toString('utf8')) as Operation[];
  assert.ok(Array.isArray(ops) && ops.length > 0, 'a non-empty JSON Patch array');
  return ops;
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

describe('middlebox inject serve (admission webhook, real HTTPS)', function () {
  this.timeout(60_000);
  let dir: string;
  const trusted: string[] = [];
  const hooks: Webhook[] = [];
  let live: { cert: string; key: string };
  let first: CertFiles;

  async function start(certs: { cert: string; key: string } = live, extra: string[] = []): Promise<Webhook> {
    const hook = await Webhook.start(certs, () => trusted, extra);
    hooks.push(hook);
    return hook;
  }

  before(() => {
    dir = makeTempDir('middlebox-webhook-');
    first = makeCert(dir, 'first');
    trusted.push(first.pem);
    // The files the webhook reads; tests replace their content.
    live = { cert: path.join(dir, 'tls.crt'), key: path.join(dir, 'tls.key') };
    installFile(first.cert, live.cert);
    installFile(first.key, live.key);
  });

  after(async () => {
    for (const h of hooks) await h.child.kill().catch(() => undefined);
    if (dir) removeTempDir(dir);
  });

  describe('the command line', () => {
    it('prints its flags with --help', async () => {
      const r = await middlebox(['inject', 'serve', '--help']);
      assert.equal(r.code, 0, r.stderr);
      for (const flag of ['--listen', '--tls-cert', '--tls-key', '--namespace-labels', '--middlebox', '--envoy-image', '--init-image', '--max-request-bytes', '--middlebox-tls-secret', '--middlebox-mtls']) {
        assert.ok(r.stdout.includes(flag), `--help names ${flag}`);
      }
      const inject = await middlebox(['inject', '--help']);
      assert.equal(inject.code, 0);
      assert.match(inject.stdout, /inject serve/);
    });

    it('refuses missing or unusable certificates with one line, never a stack trace', async () => {
      const other = makeCert(dir, 'other');
      for (const [args, code, message] of [
        [[], 2, /--tls-cert FILE and --tls-key FILE are required/],
        [['--tls-cert', first.cert], 2, /are required/],
        [['--tls-cert', path.join(dir, 'missing.crt'), '--tls-key', first.key], 1, /no such TLS certificate file/],
        [['--tls-cert', first.cert, '--tls-key', other.key], 1, /not a usable certificate and key/],
        [['--tls-cert', first.cert, '--tls-key', first.key, '--listen', 'nowhere'], 2, /--listen: listen address "nowhere" is not host:port/],
        [['--tls-cert', first.cert, '--tls-key', first.key, '--middlebox', 'no-port'], 2, /--middlebox must be host:port/],
        // Accepted before, then every pod refused: Envoy's bootstrap cannot dial these.
        [['--tls-cert', first.cert, '--tls-key', first.key, '--middlebox', 'http://middlebox.middlebox-system.svc:9001'], 2, /--middlebox must be host:port/],
        [['--tls-cert', first.cert, '--tls-key', first.key, '--middlebox-http', 'foo bar:9003'], 2, /--middlebox-http must be host:port/],
        [['--tls-cert', first.cert, '--tls-key', first.key, '--middlebox', 'unix:/run/middlebox.sock'], 2, /--middlebox must be host:port/],
        [['--bogus'], 2, /Unknown option/],
      ] as const) {
        const r = await middlebox(['inject', 'serve', ...args], { timeoutMs: 10_000 });
        assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
        assert.match(r.stderr, message);
        assert.doesNotMatch(r.stderr, /\n\s+at /);
      }
    });
  });

  describe('AdmissionReviews', () => {
    let hook: Webhook;
    before(async () => {
      hook = await start();
    });

    it('answers an opted-in pod with a patch that gives exactly the injected pod, echoing the uid', async () => {
      const p = pod({ [ANNOTATIONS.inject]: 'true' });
      const { reply, response } = await hook.review(admissionReview('6f1c4a7e-0d7b-4c39-9a57-1f0e1b2d3c4d', p));
      assert.equal(reply.fingerprint256, first.fingerprint256);
      assert.equal(response.uid, '6f1c4a7e-0d7b-4c39-9a57-1f0e1b2d3c4d');
      assert.equal(response.allowed, true);
      const applied = applyPatch(deepClone(p), deepClone(decodePatch(response)), /* validate */ true).newDocument;
      assert.deepEqual(applied, injectPod(p, config));
      // The flags reached the injection: the sidecar uses the given image and middlebox address.
      const envoy = (applied as Pod).spec!.initContainers!.find((c) => c.name === NAMES.envoyContainer)!;
      assert.equal(envoy.image, ENVOY_IMAGE);
      const bootstrap = (envoy.env as Array<{ name: string; value?: string }>).find((e) => e.name === NAMES.bootstrapEnv)!.value!;
      assert.match(bootstrap, /address: middlebox\.test-system\.svc\s+port_value: 9101/);
      // So did the TLS flags: the Secret is mounted into Envoy, which presents its client certificate.
      assert.deepEqual((applied as Pod).spec!.volumes!.map((v) => v.name), [NAMES.tlsVolume]);
      assert.match(bootstrap, /tls_certificate_sds_secret_configs/);
    });

    it('injects a pod that says nothing: the namespace selector sent it, so its namespace counts as enabled', async () => {
      const p = pod();
      const { response } = await hook.review(admissionReview('uid-plain', p));
      assert.equal(response.uid, 'uid-plain');
      const applied = applyPatch(deepClone(p), deepClone(decodePatch(response)), true).newDocument;
      assert.deepEqual(applied, injectPod(p, config));
    });

    it('allows an opted-out pod without a patch', async () => {
      const { response } = await hook.review(admissionReview('uid-out', pod({ [ANNOTATIONS.inject]: 'false' })));
      assert.deepEqual(response, { uid: 'uid-out', allowed: true });
    });

    it('allows an already injected pod without a patch (idempotent)', async () => {
      const injected = injectPod(pod({ [ANNOTATIONS.inject]: 'true' }), config);
      const { response } = await hook.review(admissionReview('uid-again', injected));
      assert.deepEqual(response, { uid: 'uid-again', allowed: true });
    });

    it('gives a pod injected before the sidecar label only that label (what the NetworkPolicy admits sidecars by)', async () => {
      const older = injectPod(pod({ [ANNOTATIONS.inject]: 'true' }), config);
      delete older.metadata!.labels![SIDECAR_LABEL];
      const { response } = await hook.review(admissionReview('uid-older', older));
      assert.equal(response.allowed, true);
      assert.deepEqual(decodePatch(response), [{ op: 'add', path: '/metadata/labels/middlebox.io~1sidecar', value: SIDECAR_LABEL_INJECTED }]);
    });

    it('warns about a pod injected before with other TLS settings, and leaves its sidecar as it is', async () => {
      const plaintext = injectPod(pod({ [ANNOTATIONS.inject]: 'true' }), injectConfig({ middleboxAddress: MIDDLEBOX, envoyImage: ENVOY_IMAGE }));
      const { response } = await hook.review(admissionReview('uid-stale', plaintext));
      assert.equal(response.allowed, true);
      assert.equal(response.patch, undefined);
      assert.deepEqual(response.warnings, [
        `middlebox: its sidecar, injected before, asks the middlebox over plaintext, not mTLS as the injector is set to: inject its original manifest (without the ${ANNOTATIONS.status} annotation) to change that`,
      ]);
    });

    it('echoes each request\'s own uid', async () => {
      const uids = ['a', 'b', 'c'].map((x) => `${x}-${crypto.randomUUID()}`);
      const answers = await Promise.all(uids.map((u) => hook.review(admissionReview(u, pod({ [ANNOTATIONS.inject]: 'true' })))));
      assert.deepEqual(answers.map((a) => a.response.uid), uids);
    });

    it('allows what is not the creation of a Pod unchanged', async () => {
      const p = pod({ [ANNOTATIONS.inject]: 'true' });
      for (const over of [
        { operation: 'UPDATE', oldObject: p },
        { subResource: 'status' },
        { kind: { group: 'apps', version: 'v1', kind: 'Deployment' }, resource: { group: 'apps', version: 'v1', resource: 'deployments' } },
      ]) {
        const { response } = await hook.review(admissionReview('uid-other', p, over));
        assert.deepEqual(response, { uid: 'uid-other', allowed: true }, JSON.stringify(over));
      }
    });

    it('refuses a pod it should inject but cannot, with the reason; warns on a malformed opt-in', async () => {
      const bad = await hook.review(admissionReview('uid-bad', pod({ [ANNOTATIONS.inject]: 'true', [ANNOTATIONS.failureMode]: 'maybe' })));
      assert.equal(bad.response.uid, 'uid-bad');
      assert.equal(bad.response.allowed, false);
      assert.equal(bad.response.patch, undefined);
      assert.equal(bad.response.status.code, 400);
      assert.match(bad.response.status.message, /failure-mode must be "closed" or "open"/);

      const odd = await hook.review(admissionReview('uid-odd', pod({ [ANNOTATIONS.inject]: 'yes' })));
      assert.equal(odd.response.allowed, true);
      assert.equal(odd.response.patch, undefined);
      assert.match(odd.response.warnings[0], /must be "true" or "false"/);
      // The same typo as a label (what the objectSelector reads) warns alike.
      const labelled = pod();
      labelled.metadata = { ...labelled.metadata, labels: { [ANNOTATIONS.inject]: 'True' } };
      const oddLabel = await hook.review(admissionReview('uid-odd-label', labelled));
      assert.equal(oddLabel.response.allowed, true);
      assert.equal(oddLabel.response.patch, undefined);
      assert.match(oddLabel.response.warnings[0], /\(label\) must be "true" or "false", got "True"/);
    });
  });

  describe('HTTP errors', () => {
    let hook: Webhook;
    before(async () => {
      hook = await start(live, ['--max-request-bytes', '4096']);
    });

    const noStack = (r: Reply) => {
      assert.ok(r.body.trim().length > 0, 'a message body');
      assert.doesNotMatch(r.body, /\n\s+at |Error:|node:internal/);
    };

    it('an empty body → 400', async () => {
      const r = await hook.request('POST', '/inject', { body: '' });
      assert.equal(r.status, 400);
      assert.match(r.body, /body is empty/);
      noStack(r);
    });

    it('a content type other than JSON → 415', async () => {
      const body = JSON.stringify(admissionReview('u', pod()));
      for (const contentType of ['text/plain', 'application/x-www-form-urlencoded', null]) {
        const r = await hook.request('POST', '/inject', { body, contentType });
        assert.equal(r.status, 415, String(contentType));
        assert.match(r.body, /content-type must be application\/json/);
        noStack(r);
      }
      // Parameters are fine.
      const ok = await hook.request('POST', '/inject', { body, contentType: 'application/json; charset=utf-8' });
      assert.equal(ok.status, 200, ok.body);
    });

    it('malformed JSON → 400', async () => {
      const r = await hook.request('POST', '/inject', { body: '{"apiVersion": "admission.k8s.io/v1", "kind": ' });
      assert.equal(r.status, 400);
      assert.match(r.body, /not valid JSON/);
      noStack(r);
    });

    it('JSON that is not an AdmissionReview v1 with a request uid → 400', async () => {
      const review = admissionReview('u', pod());
      for (const [body, message] of [
        [[1, 2], /not a JSON object/],
        [{ ...review, apiVersion: 'admission.k8s.io/v1beta1' }, /expected kind AdmissionReview, apiVersion admission.k8s.io\/v1/],
        [{ ...review, kind: 'Pod' }, /expected kind AdmissionReview/],
        [{ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' }, /has no request/],
        [{ ...review, request: { ...review.request, uid: '' } }, /has no uid/],
        [{ ...review, request: { ...review.request, object: 'x' } }, /has no object/],
      ] as const) {
        const r = await hook.request('POST', '/inject', { body: JSON.stringify(body) });
        assert.equal(r.status, 400, JSON.stringify(body).slice(0, 80));
        assert.match(r.body, message);
        noStack(r);
      }
    });

    it('a wrong path → 404, a wrong method → 405', async () => {
      const notFound = await hook.request('POST', '/mutate', { body: '{}' });
      assert.equal(notFound.status, 404);
      noStack(notFound);
      const wrongMethod = await hook.request('GET', '/inject');
      assert.equal(wrongMethod.status, 405);
      assert.equal(wrongMethod.headers.allow, 'POST');
      noStack(wrongMethod);
      assert.equal((await hook.request('POST', '/healthz', { body: 'x' })).status, 405);
    });

    it('a body over --max-request-bytes → 413, declared or streamed', async () => {
      const big = JSON.stringify(admissionReview('u', pod({ pad: 'x'.repeat(5000) })));
      const streamed = await hook.request('POST', '/inject', { body: big, headers: { 'transfer-encoding': 'chunked' } });
      assert.equal(streamed.status, 413);
      assert.match(streamed.body, /larger than 4096 bytes/);
      // Declared larger than the limit: refused before the body is read.
      const { socket, reply } = await rawTls(hook.port, trusted);
      socket.write(`POST /inject HTTP/1.1\r\nHost: ${HOST}\r\nContent-Type: application/json\r\nContent-Length: ${50 * 1024 * 1024}\r\n\r\n{`);
      const raw = await within(reply, 10_000, '413 for a declared body size');
      assert.match(raw, /^HTTP\/1\.1 413 /);
      // The webhook still serves.
      assert.equal((await hook.request('GET', '/healthz')).status, 200);
    });

    it('answers /healthz and /readyz', async () => {
      for (const p of ['/healthz', '/readyz']) {
        const r = await hook.request('GET', p);
        assert.equal(r.status, 200, p);
      }
    });
  });

  describe('--namespace-labels ""', () => {
    it('injects only pods that opt in', async () => {
      const hook = await start(live, ['--namespace-labels', '']);
      const plain = await hook.review(admissionReview('uid-plain', pod()));
      assert.deepEqual(plain.response, { uid: 'uid-plain', allowed: true });
      const p = pod({ [ANNOTATIONS.inject]: 'true' });
      const opted = await hook.review(admissionReview('uid-in', p));
      assert.deepEqual(applyPatch(deepClone(p), deepClone(decodePatch(opted.response)), true).newDocument, injectPod(p, config));
    });
  });

  describe('certificate reload', () => {
    it('presents a new certificate once the files change, and keeps the current one when the new pair is bad', async () => {
      // Its own copies of the files, so that other webhooks keep theirs.
      const files = { cert: path.join(dir, 'reload.crt'), key: path.join(dir, 'reload.key') };
      installFile(first.cert, files.cert);
      installFile(first.key, files.key);
      const hook = await start(files);
      assert.equal(await hook.presented(), first.fingerprint256);

      const second = makeCert(dir, 'second');
      trusted.push(second.pem);
      installFile(second.key, files.key);
      installFile(second.cert, files.cert);
      await waitFor(async () => (await hook.presented()) === second.fingerprint256, { timeoutMs: 10_000, what: 'the second certificate' });
      // Verified against the new certificate, and injection still works.
      const { reply, response } = await hook.review(admissionReview('uid-after-reload', pod({ [ANNOTATIONS.inject]: 'true' })));
      assert.equal(reply.fingerprint256, second.fingerprint256);
      assert.equal(response.allowed, true);

      // A certificate whose key is not there (yet): logged, the second one stays.
      const third = makeCert(dir, 'third');
      trusted.push(third.pem);
      installFile(third.cert, files.cert);
      await waitFor(() => /TLS certificate reload failed/.test(hook.child.output()), { timeoutMs: 10_000, what: 'the failed reload in the log' });
      assert.equal(await hook.presented(), second.fingerprint256);
      assert.equal((await hook.request('GET', '/healthz')).status, 200);

      // Its key arrives: the third one is served.
      installFile(third.key, files.key);
      await waitFor(async () => (await hook.presented()) === third.fingerprint256, { timeoutMs: 10_000, what: 'the third certificate' });
      assert.equal(hook.child.running, true);
    });
  });

  describe('shutdown', () => {
    it('on SIGTERM, within its shutdown delay, answers reviews on new connections while /readyz says 503', async () => {
      const hook = await start(live, ['--shutdown-delay-ms', '3000']);
      const signalled = Date.now();
      hook.child.signal('SIGTERM');
      await waitFor(() => /shutting down/.test(hook.child.output()), { timeoutMs: 5000, what: 'the shutdown log line' });
      assert.equal((await hook.request('GET', '/readyz')).status, 503);
      const review = await hook.request('POST', '/inject', { body: JSON.stringify(admissionReview('uid-during-delay', pod({ [ANNOTATIONS.inject]: 'true' }))) });
      assert.equal(review.status, 200);
      assert.equal((JSON.parse(review.body) as Doc).response.patchType, 'JSONPatch');
      assert.ok(Date.now() - signalled < 3000, 'both answered within the delay (else the test proves nothing)');
      assert.deepEqual(await within(hook.child.exited, 15_000, 'exit after SIGTERM'), { code: 0, signal: null });
      assert.ok(Date.now() - signalled >= 3000, `it closed ${Date.now() - signalled} ms after SIGTERM, before its 3000 ms delay`);
    });

    it('on SIGTERM stops accepting, finishes the request in flight, and exits 0', async () => {
      const hook = await start(live, ['--shutdown-delay-ms', '0']);
      const body = JSON.stringify(admissionReview('uid-in-flight', pod({ [ANNOTATIONS.inject]: 'true' })));
      const { socket, reply } = await rawTls(hook.port, trusted);
      const half = Math.floor(body.length / 2);
      socket.write(
        `POST /inject HTTP/1.1\r\nHost: ${HOST}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body.slice(0, half)}`,
      );
      // Give the headers and half the body a moment to arrive: the request is then in flight.
      await new Promise((r) => setTimeout(r, 300));
      hook.child.signal('SIGTERM');
      await waitFor(() => /shutting down/.test(hook.child.output()), { timeoutMs: 5000, what: 'the shutdown log line' });
      // No new connections.
      await waitFor(
        () =>
          new Promise<boolean>((resolve) => {
            const s = net.connect({ host: HOST, port: hook.port });
            s.once('connect', () => {
              s.destroy();
              resolve(false);
            });
            s.once('error', () => resolve(true));
          }),
        { timeoutMs: 5000, what: 'the listener to close' },
      );
      assert.equal(hook.child.running, true, 'still running while a request is in flight');
      socket.write(body.slice(half));
      const raw = await within(reply, 10_000, 'the in-flight answer');
      assert.match(raw, /^HTTP\/1\.1 200 /);
      const json = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as Doc;
      assert.equal(json.response.uid, 'uid-in-flight');
      assert.equal(json.response.patchType, 'JSONPatch');
      assert.deepEqual(await within(hook.child.exited, 10_000, 'exit after SIGTERM'), { code: 0, signal: null });
    });
  });
});
