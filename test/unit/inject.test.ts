// Sidecar injection: the decision, the injected pod, the JSON Patch (applied with an independent
// RFC 6902 implementation, it must give exactly the injected pod), and golden files of whole
// injected objects. UPDATE_GOLDEN=1 rewrites the golden files after an intended change.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { applyPatch, deepClone } from 'fast-json-patch';
import { parse, stringify } from 'yaml';
import { CHAINS, captureScript, normaliseCidr } from '../../src/inject/capture';
import { ANNOTATIONS, INJECT_DEFAULTS, injectConfig, NAMES, NAMESPACE_LABEL, SIDECAR_LABEL, SIDECAR_LABEL_INJECTED } from '../../src/inject/config';
import { injectionRequired } from '../../src/inject/decide';
import { InjectError, injectPod, patch, staleSidecar } from '../../src/inject/patch';
import type { Container, Pod } from '../../src/inject/types';
import { injectObject } from '../../src/inject/workloads';
import { assertGolden, repoRoot } from '../harness/golden';

const config = injectConfig();
const ENABLED = { [NAMESPACE_LABEL]: 'enabled' };

function pod(annotations?: Record<string, string>, extra: Partial<Pod> = {}): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'web', namespace: 'shop', labels: { app: 'web' }, ...(annotations ? { annotations } : {}) },
    spec: { containers: [{ name: 'web', image: 'nginx:1.27', ports: [{ containerPort: 8080, name: 'http' }] }] },
    ...extra,
  };
}

/** A pod with an HTTP liveness probe (numeric port, path with a query) and readiness probe (named port). */
function probed(annotations?: Record<string, string>): Pod {
  const p = pod(annotations);
  Object.assign(p.spec!.containers[0]!, {
    livenessProbe: { httpGet: { port: 8080, path: '/healthz?deep=1', httpHeaders: [{ name: 'x-probe', value: '1' }] }, periodSeconds: 7 },
    readinessProbe: { httpGet: { port: 'http', path: '/ready' } },
  });
  return p;
}

/** A pod capturing every inbound port, with a plain init container and a native sidecar of its own, both with HTTP probes. */
function withOwnSidecar(): Pod {
  const p = probed({ [ANNOTATIONS.includeInboundPorts]: '*' });
  p.spec!.initContainers = [
    { name: 'setup', image: 's', readinessProbe: { httpGet: { port: 9000, path: '/x' } } },
    { name: 'logs', image: 'l', restartPolicy: 'Always', ports: [{ containerPort: 9000, name: 'ui' }], readinessProbe: { httpGet: { port: 'ui', path: '/ready' } } },
  ];
  return p;
}

const deployment = {
  apiVersion: 'apps/v1',
  kind: 'Deployment',
  metadata: { name: 'shop', namespace: 'shop', annotations: { [ANNOTATIONS.inject]: 'false' } },
  spec: {
    replicas: 2,
    selector: { matchLabels: { app: 'shop' } },
    template: {
      metadata: { labels: { app: 'shop' }, annotations: { [ANNOTATIONS.inject]: 'true' } },
      spec: {
        initContainers: [{ name: 'migrate', image: 'shop:1.0', command: ['migrate'] }],
        containers: [{ name: 'shop', image: 'shop:1.0', ports: [{ containerPort: 9090, protocol: 'UDP' }, { containerPort: 3000 }] }],
      },
    },
  },
};

/** The six cases of the issue: an object, its namespace's labels, and its golden file. */
const GOLDEN_CASES: { file: string; object: unknown; namespaceLabels: Record<string, string>; injected: boolean }[] = [
  { file: 'pod-opted-in.yaml', object: pod({ [ANNOTATIONS.inject]: 'true' }), namespaceLabels: {}, injected: true },
  { file: 'pod-namespace-labelled.yaml', object: pod(), namespaceLabels: ENABLED, injected: true },
  { file: 'pod-opted-out.yaml', object: pod({ [ANNOTATIONS.inject]: 'false' }), namespaceLabels: ENABLED, injected: false },
  {
    file: 'pod-already-injected.yaml',
    object: injectPod(pod({ [ANNOTATIONS.inject]: 'true' }), config),
    namespaceLabels: ENABLED,
    injected: false,
  },
  { file: 'deployment.yaml', object: deployment, namespaceLabels: {}, injected: true },
  {
    file: 'pod-excluded-ports.yaml',
    object: pod({
      [ANNOTATIONS.inject]: 'true',
      [ANNOTATIONS.includeInboundPorts]: '*',
      [ANNOTATIONS.excludeInboundPorts]: '9100,8443',
      [ANNOTATIONS.excludeOutboundPorts]: '5432, 6379',
      [ANNOTATIONS.excludeOutboundCidrs]: '10.96.0.0/12,169.254.169.254',
      [ANNOTATIONS.failureMode]: 'open',
      [ANNOTATIONS.appPort]: '8081',
    }),
    namespaceLabels: {},
    injected: true,
  },
];

type Doc = Record<string, any>;

function envoyOf(p: Pod): Doc {
  const c = (p.spec!.initContainers ?? []).find((x) => x.name === NAMES.envoyContainer);
  assert.ok(c, 'envoy container');
  return c;
}

function initOf(p: Pod): Doc {
  const c = (p.spec!.initContainers ?? []).find((x) => x.name === NAMES.initContainer);
  assert.ok(c, 'init container');
  return c;
}

/** The capture script the init container runs. */
function initScript(p: Pod): string {
  return (initOf(p).command as string[]).join('\n');
}

/** The middlebox cluster's transport socket, if any. */
function tlsContextOrNone(b: Doc): Doc | undefined {
  return (b.static_resources.clusters as Doc[]).find((c) => c.name === 'middlebox')!.transport_socket;
}

function bootstrapOf(p: Pod): Doc {
  const env = (envoyOf(p).env as Doc[]).find((e) => e.name === NAMES.bootstrapEnv);
  return parse(env!.value as string);
}

describe('inject', () => {
  describe('golden files', () => {
    for (const { file, object, namespaceLabels, injected } of GOLDEN_CASES) {
      it(`renders ${file}`, () => {
        const result = injectObject(object, namespaceLabels, config);
        assert.equal(result.decision?.inject, injected, result.decision?.reason);
        if (!injected) assert.deepEqual(result.object, object);
        const rendered = stringify(result.object, { aliasDuplicateObjects: false, lineWidth: 0 });
        assertGolden(`inject/${file}`, rendered);
      });
    }
  });

  describe('injectionRequired', () => {
    it('injects a pod that opts in, in any namespace', () => {
      assert.equal(injectionRequired(pod({ [ANNOTATIONS.inject]: 'true' }), {}).inject, true);
    });
    it('injects every pod of a labelled namespace', () => {
      assert.equal(injectionRequired(pod(), ENABLED).inject, true);
      assert.equal(injectionRequired(pod(), { [NAMESPACE_LABEL]: 'disabled' }).inject, false);
      assert.equal(injectionRequired(pod(), {}).inject, false);
    });
    it('never injects a pod that opts out, even in a labelled namespace', () => {
      const d = injectionRequired(pod({ [ANNOTATIONS.inject]: 'false' }), ENABLED);
      assert.equal(d.inject, false);
      assert.match(d.reason, /opts out/);
    });
    it('reads the opt-in and opt-out from a pod label too, and "false" in either wins', () => {
      const labelled = (value: string, annotations: Record<string, string> = {}) =>
        ({ ...pod(annotations), metadata: { ...pod(annotations).metadata, labels: { app: 'web', [ANNOTATIONS.inject]: value } } }) as Pod;
      assert.equal(injectionRequired(labelled('true'), {}).inject, true);
      assert.match(injectionRequired(labelled('true'), {}).reason, /label/);
      assert.equal(injectionRequired(labelled('false'), ENABLED).inject, false);
      assert.equal(injectionRequired(labelled('false', { [ANNOTATIONS.inject]: 'true' }), ENABLED).inject, false);
      assert.equal(injectionRequired(labelled('true', { [ANNOTATIONS.inject]: 'false' }), ENABLED).inject, false);
      assert.match(injectionRequired(labelled('maybe'), ENABLED).reason, /must be "true" or "false"/);
    });
    it('never injects an injected pod', () => {
      const d = injectionRequired(injectPod(pod(), config), ENABLED);
      assert.equal(d.inject, false);
      assert.match(d.reason, /already injected/);
    });
    it('does not inject host-network pods or pods with a malformed annotation', () => {
      assert.equal(injectionRequired(pod({ [ANNOTATIONS.inject]: 'true' }, { spec: { hostNetwork: true, containers: [] } }), {}).inject, false);
      const d = injectionRequired(pod({ [ANNOTATIONS.inject]: 'yes' }), ENABLED);
      assert.equal(d.inject, false);
      assert.match(d.reason, /must be "true" or "false"/);
    });
  });

  describe('the app\'s kubelet probes', () => {
    const bootstrapOf = (p: Pod): Doc => parse(((envoyOf(p).env as Doc[]).find((v) => v.name === NAMES.bootstrapEnv)!.value as string)) as Doc;

    it('sends HTTP probes on a captured port to Envoy\'s probe listener, which routes each to the app without the middlebox', () => {
      const out = injectPod(probed(), config);
      const web = out.spec!.containers[0]! as Doc;
      assert.deepEqual(web.livenessProbe, { httpGet: { port: 15021, path: '/app-health/web/livez', httpHeaders: [{ name: 'x-probe', value: '1' }] }, periodSeconds: 7 });
      assert.deepEqual(web.readinessProbe.httpGet, { port: 15021, path: '/app-health/web/readyz' });
      const b = bootstrapOf(out);
      const listener = (b.static_resources.listeners as Doc[]).find((l) => l.name === 'app_probes')!;
      assert.equal(listener.address.socket_address.port_value, 15021);
      const hcm = listener.filter_chains[0].filters[0].typed_config;
      assert.deepEqual(hcm.http_filters.map((f: Doc) => f.name), ['envoy.filters.http.router'], 'no ext_authz, no ext_proc');
      assert.deepEqual(hcm.route_config.virtual_hosts[0].routes, [
        { match: { path: '/app-health/web/livez' }, route: { cluster: 'app_probe_8080', prefix_rewrite: '/healthz?deep=1' }, response_headers_to_remove: ['location'] },
        // A named port resolves to the container's port of that name.
        { match: { path: '/app-health/web/readyz' }, route: { cluster: 'app_probe_8080', prefix_rewrite: '/ready' }, response_headers_to_remove: ['location'] },
      ]);
      assert.ok((b.static_resources.clusters as Doc[]).some((c) => c.name === 'app_probe_8080'));
    });

    it('leaves alone what does not cross the capture or is not plain HTTP to the pod', () => {
      const p = probed();
      const c = p.spec!.containers[0]! as Doc;
      c.livenessProbe = { httpGet: { port: 8080, path: '/h', scheme: 'HTTPS' } };
      c.readinessProbe = { httpGet: { port: 8080, path: '/h', host: 'example.com' } };
      c.startupProbe = { tcpSocket: { port: 8080 } };
      p.spec!.containers.push({ name: 'admin', image: 'a', ports: [{ containerPort: 9090 }], livenessProbe: { httpGet: { port: 9090, path: '/h' } } });
      const out = injectPod(p, config);
      assert.deepEqual(out.spec!.containers, p.spec!.containers, 'HTTPS, another host, TCP, a port not captured: as written');
      assert.ok(!(bootstrapOf(out).static_resources.listeners as Doc[]).some((l) => l.name === 'app_probes'), 'no probe listener');
    });

    it('injects the Envoy release the tests run (make deps-envoy), pinned', () => {
      const makefile = fs.readFileSync(path.join(repoRoot(), 'Makefile'), 'utf8');
      const version = /^ENVOY_VERSION \?= (\S+)$/m.exec(makefile)?.[1];
      assert.ok(version, 'ENVOY_VERSION in the Makefile');
      assert.equal(INJECT_DEFAULTS.envoyImage, `envoyproxy/envoy:v${version}`);
    });

    it('refuses a pod whose containers use a port the sidecar takes', () => {
      for (const port of [15000, 15001, 15006, 15021]) {
        const p = pod();
        p.spec!.containers.push({ name: 'side', image: 's', ports: [{ containerPort: port }] });
        assert.throws(() => injectPod(p, config), (e: Error) => e instanceof InjectError && new RegExp(`container side uses port ${port}`).test(e.message));
      }
    });

    it('middlebox.io/rewrite-app-probes: "false" keeps them; a malformed value is refused', () => {
      const keep = probed({ [ANNOTATIONS.rewriteAppProbes]: 'false' });
      assert.deepEqual(injectPod(keep, config).spec!.containers, keep.spec!.containers);
      assert.throws(() => injectPod(probed({ [ANNOTATIONS.rewriteAppProbes]: 'no' }), config), (e: Error) => e instanceof InjectError && /rewrite-app-probes must be "true" or "false"/.test(e.message));
    });

    it('rewrites the probes of the pod\'s own native sidecars too, and only theirs among init containers', () => {
      const out = injectPod(withOwnSidecar(), config);
      const inits = out.spec!.initContainers! as Doc[];
      assert.deepEqual(inits.map((c) => c.name), [NAMES.initContainer, NAMES.envoyContainer, 'setup', 'logs']);
      assert.deepEqual(inits[3]!.readinessProbe.httpGet, { port: 15021, path: '/app-health/logs/readyz' });
      assert.deepEqual(inits[2]!.readinessProbe, { httpGet: { port: 9000, path: '/x' } }, 'a plain init container is left as written');
      const routes = (bootstrapOf(out).static_resources.listeners as Doc[]).find((l) => l.name === 'app_probes')!.filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes as Doc[];
      assert.ok(routes.some((r) => r.match.path === '/app-health/logs/readyz' && r.route.cluster === 'app_probe_9000' && r.route.prefix_rewrite === '/ready'));
    });

    it('with every inbound port captured, the probe port is not', () => {
      const out = injectPod(probed({ [ANNOTATIONS.includeInboundPorts]: '*' }), config);
      assert.equal(out.metadata!.annotations![ANNOTATIONS.excludedInboundPorts], '15021');
      assert.match(initOf(out).command[2], /--dport 15021 -j RETURN/);
    });
  });

  describe('patch', () => {
    const cases: [string, Pod][] = [
      ['a pod with annotations', pod({ [ANNOTATIONS.inject]: 'true', [ANNOTATIONS.failureMode]: 'open' })],
      ['a pod without annotations', pod()],
      ['a pod without metadata', { spec: { containers: [{ name: 'a', image: 'a' }] } }],
      ['a pod with init containers', pod(undefined, { spec: { initContainers: [{ name: 'i' }], containers: [{ name: 'a' }] } })],
      ['a pod with "/" and "~" in annotation keys', pod({ 'a~b/c': 'x' })],
      ['a pod whose HTTP probes are rewritten', probed()],
      ['a pod with a native sidecar of its own, probed', withOwnSidecar()],
    ];
    for (const [name, p] of cases) {
      it(`turns ${name} into exactly injectPod's result (applied with fast-json-patch)`, () => {
        const ops = patch(p, config);
        const applied = applyPatch(deepClone(p), deepClone(ops), /* validate */ true).newDocument;
        assert.deepEqual(applied, injectPod(p, config));
      });
    }

    const tls = { ...config, middleboxTlsSecret: 'sidecar-tls', middleboxMtls: true };
    for (const [name, p] of [
      ['a pod without volumes', pod()],
      ['a pod with volumes', pod(undefined, { spec: { containers: [{ name: 'a' }], volumes: [{ name: 'data', emptyDir: {} }] } })],
    ] as const) {
      it(`with TLS to the middlebox, turns ${name} into exactly injectPod's result`, () => {
        const applied = applyPatch(deepClone(p), deepClone(patch(p, tls)), /* validate */ true).newDocument;
        assert.deepEqual(applied, injectPod(p, tls));
        assert.equal(applied.spec!.volumes!.at(-1)!.name, NAMES.tlsVolume);
      });
    }

    it('is empty for an injected pod, and injecting twice changes nothing', () => {
      const once = injectPod(pod(), config);
      assert.deepEqual(patch(once, config), []);
      assert.deepEqual(injectPod(once, config), once);
    });

    it('gives a pod injected before the sidecar label that label, and nothing else (webhook patch and inject -f alike)', () => {
      const older = injectPod(pod(), config);
      delete older.metadata!.labels![SIDECAR_LABEL];
      const again = injectPod(older, tls);
      assert.deepEqual(again, { ...older, metadata: { ...older.metadata, labels: { ...older.metadata!.labels, [SIDECAR_LABEL]: SIDECAR_LABEL_INJECTED } } });
      assert.deepEqual(applyPatch(deepClone(older), deepClone(patch(older, tls)), true).newDocument, again);
      const template = { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'd' }, spec: { template: { metadata: older.metadata, spec: older.spec } } };
      const { object } = injectObject(template, {}, config) as { object: Record<string, any> };
      assert.equal(object.spec.template.metadata.labels[SIDECAR_LABEL], SIDECAR_LABEL_INJECTED);
      assert.deepEqual(object.spec.template.spec, older.spec);
    });

    it('gives no label to a pod that only says it is injected (the annotation, without the sidecar)', () => {
      const claims = pod({ [ANNOTATIONS.status]: 'injected' });
      assert.deepEqual(injectPod(claims, config), claims);
      assert.deepEqual(patch(claims, config), []);
    });

    it('says when an injected pod\'s sidecar is not what the settings would inject now', () => {
      const now = injectPod(pod(), tls);
      assert.equal(staleSidecar(now, tls), undefined);
      assert.match(staleSidecar(now, config)!, /asks the middlebox over mTLS, not plaintext/);
      assert.equal(staleSidecar(pod(), config), undefined, 'not injected: nothing to say');
      // A capture from before the IPv6 rules.
      const old = structuredClone(now);
      const init = old.spec!.initContainers!.find((c) => c.name === NAMES.initContainer)!;
      init.command = (init.command as string[]).map((part) => part.split('\n').filter((l) => !/ipv6|ip6tables|^fi$/.test(l)).join('\n'));
      assert.match(staleSidecar(old, tls)!, /lacks rules this version adds/);
      const older = structuredClone(now);
      const init2 = older.spec!.initContainers!.find((c) => c.name === NAMES.initContainer)!;
      init2.command = (init2.command as string[]).map((part) => part.split(' -m addrtype --dst-type LOCAL').join(''));
      assert.match(staleSidecar(older, tls)!, /only connections addressed to the pod/);
    });

    it('never modifies its input', () => {
      const p = pod({ [ANNOTATIONS.inject]: 'true' });
      const before = structuredClone(p);
      injectPod(p, config);
      patch(p, config);
      assert.deepEqual(p, before);
    });

    it('puts the capture init container, then Envoy as a native sidecar, before the pod\'s own init containers', () => {
      const out = injectPod(pod(undefined, { spec: { initContainers: [{ name: 'i' }], containers: [{ name: 'a' }] } }), config);
      assert.deepEqual(out.spec!.initContainers!.map((c: Container) => c.name), [NAMES.initContainer, NAMES.envoyContainer, 'i']);
      assert.deepEqual(out.spec!.containers.map((c: Container) => c.name), ['a']);
      const envoy = envoyOf(out);
      // restartPolicy Always makes it a sidecar: it keeps running, is stopped after the app, and
      // does not hold a Job's completion; its startup probe holds the app until Envoy is ready.
      assert.equal(envoy.restartPolicy, 'Always');
      assert.deepEqual(envoy.startupProbe.exec, envoy.readinessProbe.exec);
      assert.ok(envoy.startupProbe.periodSeconds * envoy.startupProbe.failureThreshold >= 60, 'a minute to start');
      assert.equal(initOf(out).restartPolicy, undefined, 'the capture script runs once');
    });
  });

  describe('the injected containers', () => {
    const out = injectPod(pod(), config);

    it('gives the init container NET_ADMIN and NET_RAW only', () => {
      const sc = initOf(out).securityContext;
      assert.deepEqual(sc.capabilities, { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] });
      assert.equal(sc.runAsUser, 0);
      assert.equal(sc.runAsNonRoot, false);
      assert.equal(sc.privileged, false);
    });

    it('runs Envoy as its non-root UID, without privileges, with resource requests', () => {
      const e = envoyOf(out);
      assert.equal(e.image, INJECT_DEFAULTS.envoyImage);
      assert.deepEqual(
        { runAsUser: e.securityContext.runAsUser, runAsNonRoot: e.securityContext.runAsNonRoot, ape: e.securityContext.allowPrivilegeEscalation },
        { runAsUser: 1337, runAsNonRoot: true, ape: false },
      );
      assert.deepEqual(e.securityContext.capabilities, { drop: ['ALL'] });
      assert.ok(e.resources.requests.cpu && e.resources.requests.memory);
    });

    it('checks readiness on Envoy\'s /ready from inside the pod', () => {
      const cmd = envoyOf(out).readinessProbe.exec.command.join(' ');
      assert.match(cmd, /\/dev\/tcp\/127\.0\.0\.1\/15000/);
      assert.match(cmd, /GET \/ready/);
    });

    it('passes the bootstrap through $(MIDDLEBOX_BOOTSTRAP), defined after the variables it uses', () => {
      const e = envoyOf(out);
      assert.deepEqual(e.args.slice(0, 2), ['--config-yaml', `$(${NAMES.bootstrapEnv})`]);
      assert.deepEqual((e.env as Doc[]).map((v) => v.name), ['POD_NAME', 'POD_NAMESPACE', NAMES.bootstrapEnv]);
    });

    it('renders the bootstrap for the middlebox Service, the app port and the failure mode', () => {
      const b = bootstrapOf(out);
      const listeners = b.static_resources.listeners as Doc[];
      assert.deepEqual(listeners.map((l) => [l.name, l.address.socket_address.port_value]), [['inbound_http', 15006], ['outbound_http', 15001]]);
      const app = (b.static_resources.clusters as Doc[]).find((c) => c.name === 'app')!;
      assert.equal(app.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value, 8080);
      const mb = (b.static_resources.clusters as Doc[]).find((c) => c.name === 'middlebox')!;
      assert.deepEqual(mb.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, {
        address: 'middlebox.middlebox-system.svc',
        port_value: 9001,
      });
      assert.equal(b.admin.address.socket_address.address, '127.0.0.1');
      assert.equal(listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.failure_mode_allow, false);
      const open = bootstrapOf(injectPod(pod({ [ANNOTATIONS.failureMode]: 'open' }), config));
      const openFilters = open.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters as Doc[];
      assert.equal(openFilters.find((f) => f.name === 'envoy.filters.http.ext_authz')!.typed_config.failure_mode_allow, true);
    });

    it('with middleboxHttpAddress, Envoy asks that port over HTTP (its own connections are not captured; the app\'s to that port are)', () => {
      const http = injectPod(pod({}), { ...config, middleboxHttpAddress: 'middlebox.middlebox-system.svc:9003' });
      const b = bootstrapOf(http);
      const authz = (b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters as Doc[])[0]!.typed_config;
      assert.equal(authz.http_service.server_uri.cluster, 'middlebox_http');
      const cluster = (b.static_resources.clusters as Doc[]).find((c) => c.name === 'middlebox_http')!;
      assert.deepEqual(cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, { address: 'middlebox.middlebox-system.svc', port_value: 9003 });
      assert.equal(http.metadata!.annotations![ANNOTATIONS.excludedOutboundPorts], undefined);
      assert.doesNotMatch(initScript(http), /--dport (9001|9003) -j RETURN/);
    });

    it('with middlebox.io/authz-headers, Envoy sends the middlebox only those headers', () => {
      const b = bootstrapOf(injectPod(pod({ [ANNOTATIONS.authzHeaders]: 'X-Tenant, x-api-key' }), config));
      const authz = (b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters as Doc[])[0]!.typed_config;
      assert.deepEqual(authz.grpc_service.initial_metadata, [{ key: 'x-middlebox-ext-authz-headers', value: ':authority,:method,:path,content-length,x-api-key,x-request-id,x-tenant' }]);
      assert.equal(bootstrapOf(out).static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.allowed_headers, undefined, 'every header by default');
      // Over HTTP ext_authz the list rides in the peer header.
      const http = bootstrapOf(injectPod(pod({ [ANNOTATIONS.authzHeaders]: 'x-tenant' }), { ...config, middleboxHttpAddress: 'middlebox.middlebox-system.svc:9003' }));
      const httpAuthz = (http.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters as Doc[])[0]!.typed_config;
      assert.match(httpAuthz.http_service.authorization_request.headers_to_add[0].value, / hdrs=:authority,:method,:path,content-length,x-request-id,x-tenant len=/);
    });

    it('records what it captured and excluded in annotations', () => {
      const a = out.metadata!.annotations!;
      assert.equal(a[ANNOTATIONS.status], 'injected');
      assert.equal(a[ANNOTATIONS.capturedInboundPorts], '8080');
      // The label the middlebox's NetworkPolicy admits sidecars by.
      assert.equal(out.metadata!.labels![SIDECAR_LABEL], SIDECAR_LABEL_INJECTED);
      // No outbound port is exempt by default: not the middlebox's, not etcd's.
      assert.equal(a[ANNOTATIONS.excludedOutboundPorts], undefined);
      assert.doesNotMatch(initScript(out), /--dport \d+ -j RETURN/);
      assert.equal(a[ANNOTATIONS.failureMode], 'closed');
    });

    it('refuses a pod that already has Istio\'s sidecar, by container or by annotation', () => {
      const withProxy = pod();
      withProxy.spec!.containers.push({ name: 'istio-proxy', image: 'istio/proxyv2' });
      assert.throws(() => injectPod(withProxy, config), (e: Error) => e instanceof InjectError && /Istio's sidecar \(container istio-proxy\)/.test(e.message));
      assert.throws(
        () => injectPod(pod({ 'sidecar.istio.io/status': '{"containers":["istio-proxy"]}' }), config),
        (e: Error) => e instanceof InjectError && /annotation sidecar\.istio\.io\/status/.test(e.message),
      );
      // Istio's opt-out annotation alone is no sidecar.
      assert.doesNotThrow(() => injectPod(pod({ 'sidecar.istio.io/inject': 'false' }), config));
    });

    it('rejects malformed annotations with a clear error', () => {
      for (const [k, v, msg] of [
        [ANNOTATIONS.failureMode, 'maybe', /closed" or "open/],
        [ANNOTATIONS.excludeOutboundPorts, '80,http', /comma-separated ports/],
        [ANNOTATIONS.appPort, '70000', /a port/],
        [ANNOTATIONS.excludeOutboundCidrs, '10.0.0.0/33', /not a CIDR/],
        [ANNOTATIONS.excludeOutboundCidrs, 'fd00::/8', /only IPv4/],
        [ANNOTATIONS.authzHeaders, 'x-ok,not ok', /authz-headers must be comma-separated header names \(HTTP token characters, no %.*\), got "not ok"/],
      ] as const) {
        assert.throws(() => injectPod(pod({ [k]: v }), config), (e: Error) => e instanceof InjectError && msg.test(e.message), `${k}=${v}`);
      }
    });
  });

  describe('TLS to the middlebox (middleboxTlsSecret)', () => {
    const volumeOf = (p: Pod) => p.spec!.volumes!.find((v) => v.name === NAMES.tlsVolume) as Doc;
    const tlsContext = (b: Doc, cluster: string) => (b.static_resources.clusters as Doc[]).find((c) => c.name === cluster)!.transport_socket.typed_config;

    it('mounts the Secret\'s ca.crt into Envoy only, and Envoy reads it through SDS from the mounted directory', () => {
      const out = injectPod(pod(), { ...config, middleboxTlsSecret: 'sidecar-tls', middleboxHttpAddress: 'middlebox.middlebox-system.svc:9003' });
      const [secret, downward] = volumeOf(out).projected.sources as Doc[];
      assert.deepEqual(secret, { secret: { name: 'sidecar-tls', items: [{ key: 'ca.crt', path: 'ca.crt' }] } });
      assert.deepEqual(downward, {
        downwardAPI: { items: [{ path: 'middlebox-ca.sds.yaml', fieldRef: { fieldPath: `metadata.annotations['${ANNOTATIONS.tlsSdsCa}']` } }] },
      });
      assert.deepEqual(envoyOf(out).volumeMounts, [{ name: NAMES.tlsVolume, mountPath: '/etc/middlebox/tls', readOnly: true }]);
      for (const c of [...out.spec!.containers, initOf(out)]) assert.equal((c as Doc).volumeMounts, undefined, `${c.name} does not see it`);
      // The SDS file the annotation becomes names the mounted CA.
      const a = out.metadata!.annotations!;
      assert.deepEqual(parse(a[ANNOTATIONS.tlsSdsCa]!), {
        resources: [{ '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret', name: 'middlebox_ca', validation_context: { trusted_ca: { filename: '/etc/middlebox/tls/ca.crt' } } }],
      });
      assert.equal(a[ANNOTATIONS.tlsSdsClientCert], undefined);
      // Both clusters (gRPC and HTTP ext_authz) verify the replicas by the Service's name, with the CA from SDS.
      for (const cluster of ['middlebox', 'middlebox_http']) {
        const t = tlsContext(bootstrapOf(out), cluster);
        assert.equal(t.sni, 'middlebox.middlebox-system.svc');
        const v = t.common_tls_context.combined_validation_context;
        assert.deepEqual(v.default_validation_context.match_typed_subject_alt_names, [{ san_type: 'DNS', matcher: { exact: 'middlebox.middlebox-system.svc' } }]);
        assert.deepEqual(v.validation_context_sds_secret_config.sds_config.path_config_source, {
          path: '/etc/middlebox/tls/middlebox-ca.sds.yaml',
          watched_directory: { path: '/etc/middlebox/tls' },
        });
        assert.equal(t.common_tls_context.tls_certificate_sds_secret_configs, undefined, 'no client certificate without mTLS');
      }
    });

    it('with mTLS, also the Secret\'s tls.crt and tls.key, presented as Envoy\'s client certificate', () => {
      const out = injectPod(pod(), { ...config, middleboxTlsSecret: 'sidecar-tls', middleboxMtls: true });
      const [secret, downward] = volumeOf(out).projected.sources as Doc[];
      assert.deepEqual((secret.secret.items as Doc[]).map((i) => i.key), ['ca.crt', 'tls.crt', 'tls.key']);
      assert.deepEqual((downward.downwardAPI.items as Doc[]).map((i) => i.path), ['middlebox-ca.sds.yaml', 'middlebox-client-cert.sds.yaml']);
      const sds = parse(out.metadata!.annotations![ANNOTATIONS.tlsSdsClientCert]!);
      assert.deepEqual(sds.resources[0].tls_certificate, { certificate_chain: { filename: '/etc/middlebox/tls/tls.crt' }, private_key: { filename: '/etc/middlebox/tls/tls.key' } });
      const t = tlsContext(bootstrapOf(out), 'middlebox');
      assert.deepEqual(t.common_tls_context.tls_certificate_sds_secret_configs.map((c: Doc) => [c.name, c.sds_config.path_config_source.path]), [
        ['middlebox_client_cert', '/etc/middlebox/tls/middlebox-client-cert.sds.yaml'],
      ]);
    });

    it('without it, no volume, no mount, no TLS annotations: plaintext', () => {
      const out = injectPod(pod(), config);
      assert.equal(out.spec!.volumes, undefined);
      assert.equal(envoyOf(out).volumeMounts, undefined);
      assert.equal(out.metadata!.annotations![ANNOTATIONS.tlsSdsCa], undefined);
      assert.equal(tlsContextOrNone(bootstrapOf(out)), undefined);
    });

    it('refuses a pod, not crashes, when the bootstrap renderer refuses the settings', () => {
      assert.throws(() => injectPod(pod(), { ...config, middleboxAddress: 'no-port' }), (e: Error) => e instanceof InjectError && /sidecar's Envoy bootstrap: middlebox endpoint must be host:port/.test(e.message));
    });

    it('refuses mTLS without the Secret, and a pod that already has a volume of that name', () => {
      assert.throws(() => injectPod(pod(), { ...config, middleboxMtls: true }), (e: Error) => e instanceof InjectError && /needs the Secret/.test(e.message));
      const taken = pod(undefined, { spec: { containers: [{ name: 'a' }], volumes: [{ name: NAMES.tlsVolume, emptyDir: {} }] } });
      assert.throws(() => injectPod(taken, { ...config, middleboxTlsSecret: 's' }), (e: Error) => e instanceof InjectError && /already has a volume named middlebox-tls/.test(e.message));
      // Without TLS the name is free for the pod's own use.
      assert.doesNotThrow(() => injectPod(taken, config));
    });
  });

  describe('captureScript', () => {
    const base = {
      envoyUid: 1337,
      inboundPort: 15006,
      outboundPort: 15001,
      includeInboundPorts: [8080] as number[] | '*',
      excludeInboundPorts: [] as number[],
      excludeOutboundPorts: [5432, 6379],
      excludeOutboundCidrs: ['10.96.0.0/12'],
    };

    it('redirects the app port in, everything else out, except Envoy, loopback, excluded ports and CIDRs', () => {
      const lines = captureScript(base).trim().split('\n');
      assert.equal(lines[0], 'set -eu');
      assert.ok(lines.includes(`iptables -t nat -A ${CHAINS.inbound} -p tcp --dport 8080 -j REDIRECT --to-ports 15006`));
      const out = lines.filter((l) => l.includes(`-A ${CHAINS.outbound} `));
      assert.deepEqual(out, [
        `iptables -t nat -A ${CHAINS.outbound} -m owner --uid-owner 1337 -j RETURN`,
        `iptables -t nat -A ${CHAINS.outbound} -o lo -j RETURN`,
        `iptables -t nat -A ${CHAINS.outbound} -p tcp --dport 5432 -j RETURN`,
        `iptables -t nat -A ${CHAINS.outbound} -p tcp --dport 6379 -j RETURN`,
        `iptables -t nat -A ${CHAINS.outbound} -d 10.96.0.0/12 -j RETURN`,
        `iptables -t nat -A ${CHAINS.outbound} -p tcp -j REDIRECT --to-ports 15001`,
      ]);
      // The jumps into the chains come after the chains are complete.
      const ipv6 = lines.indexOf('ipv6=');
      assert.ok(ipv6 > 0, 'an IPv6 part');
      assert.ok(lines[ipv6 - 1]!.endsWith(`-A OUTPUT -p tcp -j ${CHAINS.outbound}`));
    });

    it('refuses new TCP connections over IPv6 where IPv4 would be captured, where the pod has IPv6', () => {
      const lines = captureScript(base).trim().split('\n');
      const ipv6 = lines.slice(lines.indexOf('ipv6='));
      // Whether the pod has IPv6 beyond loopback, read by the shell alone (no tool that could be missing).
      assert.deepEqual(ipv6.slice(1, 3), [
        'if [ -r /proc/net/if_inet6 ]; then while read -r _ _ _ _ _ dev; do [ "$dev" = lo ] || ipv6=1; done < /proc/net/if_inet6; fi',
        'if [ -n "$ipv6" ]; then',
      ]);
      assert.equal(ipv6.at(-1), 'fi');
      const rules = ipv6.filter((l) => l.includes(' -A ') && !l.includes(' -C ')).map((l) => l.trim());
      assert.deepEqual(rules, [
        `ip6tables -t filter -A ${CHAINS.inbound6} -i lo -j RETURN`,
        `ip6tables -t filter -A ${CHAINS.inbound6} -p tcp --dport 8080 --syn -j REJECT --reject-with tcp-reset`,
        `ip6tables -t filter -A ${CHAINS.outbound6} -m owner --uid-owner 1337 -j RETURN`,
        `ip6tables -t filter -A ${CHAINS.outbound6} -o lo -j RETURN`,
        `ip6tables -t filter -A ${CHAINS.outbound6} -p tcp --dport 5432 -j RETURN`,
        `ip6tables -t filter -A ${CHAINS.outbound6} -p tcp --dport 6379 -j RETURN`,
        `ip6tables -t filter -A ${CHAINS.outbound6} -p tcp --syn -j REJECT --reject-with tcp-reset`,
      ]);
      const all = captureScript({ ...base, includeInboundPorts: '*', excludeInboundPorts: [9100] });
      assert.match(all, new RegExp(`-A ${CHAINS.inbound6} -p tcp --dport 9100 -j RETURN\n  ip6tables -t filter -A ${CHAINS.inbound6} -p tcp --syn -j REJECT`));
    });

    it('captures every inbound port but the excluded ones with "*"', () => {
      const lines = captureScript({ ...base, includeInboundPorts: '*', excludeInboundPorts: [9100] }).split('\n');
      assert.ok(lines.includes(`iptables -t nat -A ${CHAINS.inbound} -p tcp --dport 9100 -j RETURN`));
      assert.ok(lines.includes(`iptables -t nat -A ${CHAINS.inbound} -p tcp -j REDIRECT --to-ports 15006`));
    });

    it('leaves out included ports that are also excluded', () => {
      const script = captureScript({ ...base, includeInboundPorts: [8080, 9100], excludeInboundPorts: [9100] });
      assert.doesNotMatch(script, /9100/);
    });

    it('normalises CIDRs and rejects anything that is not one', () => {
      assert.equal(normaliseCidr('10.1.2.3/8'), '10.0.0.0/8');
      assert.equal(normaliseCidr('169.254.169.254'), '169.254.169.254/32');
      assert.throws(() => normaliseCidr('10.1/8'), /not a CIDR/);
      assert.throws(() => normaliseCidr('10.0.0.0/8; reboot'), /not a CIDR/);
    });
  });

  describe('workloads', () => {
    for (const kind of ['StatefulSet', 'DaemonSet', 'Job', 'ReplicaSet']) {
      it(`injects the pod template of a ${kind}`, () => {
        const obj = { ...structuredClone(deployment), kind };
        const { object } = injectObject(obj, {}, config) as { object: Doc };
        assert.ok(object.spec.template.spec.initContainers.some((c: Container) => c.name === NAMES.envoyContainer));
        assert.equal(object.spec.replicas, 2);
      });
    }

    it('reads the template\'s annotations, not the workload\'s', () => {
      // The Deployment itself says "false", its template says "true".
      assert.equal(injectObject(deployment, {}, config).decision?.inject, true);
    });

    it('passes other objects through unchanged', () => {
      const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web' } };
      assert.deepEqual(injectObject(svc, ENABLED, config), { object: svc });
    });
  });
});
