// TLS from an injected sidecar to the middlebox (inject --middlebox-tls-secret, --middlebox-mtls),
// with the real Envoy running the injected bootstrap against a real replica that requires client
// certificates. The pod's TLS volume is laid out as the kubelet writes a projected volume: the
// files are links through `..data`, and a renewed Secret arrives as a new directory that `..data`
// is switched to in one rename. Envoy must take the new CA and client certificate without a restart.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ANNOTATIONS, injectConfig, NAMES } from '../../src/inject/config';
import { injectPod } from '../../src/inject/patch';
import type { Pod } from '../../src/inject/types';
import { makeTestPki, type TestPki } from '../../src/lab/certs';
import { EnvoyProcess } from '../../src/lab/envoy';
import { EtcdProcess } from '../../src/lab/etcd';
import { MiddleboxProcess } from '../../src/lab/middlebox';
import { freePort, waitFor } from '../../src/lab/ports';
import { startHttpUpstream, type Upstream } from '../../src/lab/upstream';
import { middlebox } from '../harness/cli';
import { NO_ADMIN_POLICY } from '../harness/policy';

type Doc = Record<string, any>;

const SECRET = 'middlebox-sidecar-tls';

/** The Secret's data, as cert-manager writes it: the CA, and the sidecar's client certificate. */
function secretData(pki: TestPki): Record<string, Buffer> {
  return { 'ca.crt': pki.read(pki.caFile), 'tls.crt': pki.read(pki.client.certFile), 'tls.key': pki.read(pki.client.keyFile) };
}

/**
 * Writes the pod's projected volume into `dir` as the kubelet does: every item into a new
 * timestamped directory, `..data` switched to it by a rename, and each item a link through
 * `..data`. Secret items come from `data`, downward API items from the pod's annotations.
 */
function writeVolume(dir: string, volume: Doc, pod: Pod, data: Record<string, Buffer>, generation: number): void {
  const files = new Map<string, Buffer>();
  for (const source of volume.projected.sources as Doc[]) {
    if (source.secret) {
      assert.equal(source.secret.name, SECRET);
      for (const item of source.secret.items as Doc[]) files.set(item.path, data[item.key]!);
    } else if (source.downwardAPI) {
      for (const item of source.downwardAPI.items as Doc[]) {
        const m = /^metadata\.annotations\['([^']+)'\]$/.exec(item.fieldRef.fieldPath as string);
        assert.ok(m, `a downward API item the kubelet can fill: ${item.fieldRef.fieldPath}`);
        const value = pod.metadata!.annotations![m[1]!];
        assert.ok(value, `the pod carries annotation ${m[1]}`);
        files.set(item.path, Buffer.from(value));
      }
    } else {
      assert.fail(`unexpected volume source ${JSON.stringify(source)}`);
    }
  }
  const version = `..2026_12_06_00_00_0${generation}`;
  fs.mkdirSync(path.join(dir, version));
  for (const [name, content] of files) fs.writeFileSync(path.join(dir, version, name), content);
  fs.symlinkSync(version, path.join(dir, '..data_tmp'));
  fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
  for (const name of files.keys()) {
    if (!fs.existsSync(path.join(dir, name))) fs.symlinkSync(path.join('..data', name), path.join(dir, name));
  }
}

describe('inject: TLS from the sidecar to the middlebox, certificates renewed under a running Envoy', function () {
  this.timeout(120_000);
  let pkiA: TestPki;
  let pkiB: TestPki;
  let etcd: EtcdProcess;
  let app: Upstream;
  let volumeDir: string;
  const replicas: MiddleboxProcess[] = [];
  let envoy: EnvoyProcess | undefined;

  before(async () => {
    pkiA = makeTestPki({ caName: 'middlebox CA, first' });
    pkiB = makeTestPki({ caName: 'middlebox CA, renewed' });
    volumeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-tls-volume-'));
    etcd = await EtcdProcess.start();
    app = await startHttpUpstream({ name: 'app' });
    const policyFile = path.join(pkiA.dir, 'policy.yaml');
    fs.writeFileSync(policyFile, NO_ADMIN_POLICY);
    const r = await middlebox(['policy', 'apply', '-f', policyFile, '--etcd', etcd.endpoint]);
    assert.equal(r.code, 0, r.stderr);
  });
  after(async () => {
    await envoy?.stop().catch(() => undefined);
    for (const mb of replicas) await mb.kill().catch(() => undefined);
    await app?.close();
    await etcd?.stop();
    fs.rmSync(volumeDir, { recursive: true, force: true });
    pkiA?.remove();
    pkiB?.remove();
  });

  /** A replica serving TLS with `pki`'s server certificate, requiring client certificates from its CA. */
  async function replica(pki: TestPki, listen: string): Promise<MiddleboxProcess> {
    const mb = await MiddleboxProcess.start({
      etcd: etcd.endpoint,
      listen,
      tls: { ...pki.server, clientCaFile: pki.caFile },
      healthTls: { caFile: pki.caFile, ...pki.client },
    });
    replicas.push(mb);
    return mb;
  }

  it('Envoy reads the CA and its client certificate from the mounted Secret, and takes renewed ones without a restart', async () => {
    const mbPort = await freePort();
    const listen = `127.0.0.1:${mbPort}`;
    const config = injectConfig({
      adminPort: await freePort(),
      inboundPort: await freePort(),
      outboundPort: await freePort(),
      probePort: await freePort(),
      middleboxAddress: listen,
      middleboxTlsSecret: SECRET,
      middleboxMtls: true,
      middleboxTlsDir: volumeDir,
    });
    const pod: Pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'web', namespace: 'shop', annotations: { [ANNOTATIONS.inject]: 'true' } },
      spec: { containers: [{ name: 'web', image: 'web:1', ports: [{ containerPort: app.port }] }] },
    };
    const injected = injectPod(pod, config);
    const volume = injected.spec!.volumes!.find((v) => v.name === NAMES.tlsVolume) as Doc;
    const envoyContainer = injected.spec!.initContainers!.find((c) => c.name === NAMES.envoyContainer) as Doc;
    assert.deepEqual(envoyContainer.volumeMounts, [{ name: NAMES.tlsVolume, mountPath: volumeDir, readOnly: true }]);
    writeVolume(volumeDir, volume, injected, secretData(pkiA), 1);

    await replica(pkiA, listen);
    const bootstrap = (envoyContainer.env as Doc[]).find((e) => e.name === NAMES.bootstrapEnv)!.value as string;
    envoy = await EnvoyProcess.start({ config: bootstrap.split('$(POD_NAME).$(POD_NAMESPACE)').join('web.shop'), adminPort: config.adminPort });
    const get = async (p: string) => {
      const res = await fetch(`http://127.0.0.1:${config.inboundPort}${p}`, { signal: AbortSignal.timeout(5000) });
      return { status: res.status, body: await res.text() };
    };
    /** The middlebox decided both: the denied path names its rule, the allowed one reached the app. */
    const decided = async () => {
      const denied = await get('/admin/users');
      const allowed = await get('/products/1');
      return denied.status === 403 && /"rule":"no-admin"/.test(denied.body) && allowed.status === 200 && /"upstream":"app"/.test(allowed.body);
    };
    await waitFor(decided, { timeoutMs: 15_000, what: 'verdicts over mTLS with the first certificates' });
    const handshakes = async () => (await envoy!.stats('^cluster\\.middlebox\\.ssl\\.handshake$')).get('cluster.middlebox.ssl.handshake') ?? 0;
    assert.ok((await handshakes()) > 0, 'over TLS');

    // The replicas move to certificates from a new CA. The running Envoy, which trusts the first
    // CA and presents the first client certificate, gets no verdict: it fails closed.
    await replicas[0]!.stop();
    await replica(pkiB, listen);
    await waitFor(async () => (await get('/products/1')).status === 403, { timeoutMs: 15_000, what: 'Envoy with the old certificates to fail closed' });
    assert.doesNotMatch((await get('/admin/users')).body, /no-admin/, 'no verdict came through');

    // The Secret is renewed: the kubelet swaps the volume, and Envoy, still the same process, takes it.
    const pid = envoy.pid;
    writeVolume(volumeDir, volume, injected, secretData(pkiB), 2);
    await waitFor(decided, { timeoutMs: 20_000, what: 'verdicts over mTLS with the renewed certificates' });
    assert.equal(envoy.pid, pid, 'no restart');
  });
});
