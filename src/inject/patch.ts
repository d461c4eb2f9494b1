// The injection itself: what a pod looks like with the middlebox sidecar (`injectPod`), and the
// same change as an RFC 6902 JSON Patch (`patch`), which is what an admission webhook answers.
// Pure: no I/O, no clock, no randomness; the input pod is never modified.
import { BootstrapOptionsError, MIDDLEBOX_TLS_SDS_FILES, middleboxTlsSdsFiles, renderBootstrapYaml, type MiddleboxTlsOptions } from '../envoy/bootstrap';
import { HEADER_NAME_RULE, readHeaderList } from '../policy/headers';
import { splitList } from '../settings';
import { captureScript, normaliseCidr, type CaptureSettings } from './capture';
import { ANNOTATIONS, NAMES, SIDECAR_LABEL, SIDECAR_LABEL_INJECTED, STATUS_INJECTED, TLS_SECRET_KEYS, type FailureMode, type InjectConfig } from './config';
import type { Container, JsonPatchOperation, Pod } from './types';

/** A pod the injector cannot inject as asked (e.g. a malformed annotation). */
export class InjectError extends Error {}

/** Everything the injector adds to one pod, computed once and used by both injectPod and patch. */
interface Sidecar {
  annotations: Record<string, string>;
  initContainer: Container;
  envoyContainer: Container;
  /** The app's probes that now go to Envoy's probe listener: container index, probe field, new probe. */
  probes: RewrittenProbe[];
  /** With TLS to the middlebox: the volume Envoy mounts (the Secret's files and the SDS files). */
  volume?: { name: string; [key: string]: unknown };
}

interface RewrittenProbe {
  /** The app's containers, or its own native sidecars (init containers that keep running). */
  list: 'containers' | 'initContainers';
  /** Index in that list, before the injector's init containers are put in front. */
  container: number;
  kind: ProbeKind;
  probe: Record<string, unknown>;
  /** The Envoy route that takes it to the app. */
  route: { path: string; appPort: number; appPath: string };
}

const PROBE_KINDS = ['livenessProbe', 'readinessProbe', 'startupProbe'] as const;
type ProbeKind = (typeof PROBE_KINDS)[number];
/** The path a rewritten probe asks Envoy, per kind (as Istio names them). */
const PROBE_PATH_SUFFIX: Record<ProbeKind, string> = { livenessProbe: 'livez', readinessProbe: 'readyz', startupProbe: 'startupz' };

export function isInjected(pod: Pod): boolean {
  return pod.metadata?.annotations?.[ANNOTATIONS.status] === STATUS_INJECTED;
}

/**
 * The pod with the sidecar. An already injected pod comes back as it is (a copy), with the sidecar
 * label added if it lacks it (injected by a version from before the label, which the middlebox's
 * NetworkPolicy admits sidecars by).
 */
export function injectPod(pod: Pod, config: InjectConfig): Pod {
  const out = structuredClone(pod);
  if (isInjected(pod)) {
    if (needsSidecarLabel(pod)) out.metadata = { ...out.metadata, labels: { ...out.metadata?.labels, [SIDECAR_LABEL]: SIDECAR_LABEL_INJECTED } };
    return out;
  }
  const s = sidecar(pod, config);
  out.metadata = { ...out.metadata, labels: { ...out.metadata?.labels, [SIDECAR_LABEL]: SIDECAR_LABEL_INJECTED }, annotations: { ...out.metadata?.annotations, ...s.annotations } };
  const spec = out.spec!;
  for (const r of s.probes) spec[r.list]![r.container]![r.kind] = r.probe;
  // First, as Istio's: the pod's own init containers and sidecars then start with the capture and
  // Envoy in place (their traffic takes the app's path, none slips past before the rules exist),
  // and Envoy, a sidecar listed before the pod's own, is stopped after them.
  spec.initContainers = [s.initContainer, s.envoyContainer, ...(spec.initContainers ?? [])];
  if (s.volume) spec.volumes = [...(spec.volumes ?? []), s.volume];
  return out;
}

/** The JSON Patch that turns `pod` into `injectPod(pod, config)`; for an injected pod, at most the label. */
export function patch(pod: Pod, config: InjectConfig): JsonPatchOperation[] {
  if (isInjected(pod)) return needsSidecarLabel(pod) ? labelOps(pod) : [];
  const s = sidecar(pod, config);
  const ops: JsonPatchOperation[] = [];
  if (pod.metadata === undefined) ops.push({ op: 'add', path: '/metadata', value: {} });
  ops.push(...labelOps(pod));
  if (pod.metadata?.annotations === undefined) {
    ops.push({ op: 'add', path: '/metadata/annotations', value: s.annotations });
  } else {
    // "add" on an existing member replaces it (RFC 6902 4.1), so this also works for a pod that
    // already says e.g. middlebox.io/failure-mode.
    for (const [k, v] of Object.entries(s.annotations)) ops.push({ op: 'add', path: `/metadata/annotations/${escapePointer(k)}`, value: v });
  }
  // Before the init containers go in front: the indices are the pod's own.
  for (const r of s.probes) ops.push({ op: 'replace', path: `/spec/${r.list}/${r.container}/${r.kind}`, value: r.probe });
  if (pod.spec!.initContainers === undefined) ops.push({ op: 'add', path: '/spec/initContainers', value: [s.initContainer, s.envoyContainer] });
  else [s.initContainer, s.envoyContainer].forEach((c, i) => ops.push({ op: 'add', path: `/spec/initContainers/${i}`, value: c }));
  if (s.volume) ops.push(pod.spec!.volumes === undefined ? { op: 'add', path: '/spec/volumes', value: [s.volume] } : { op: 'add', path: '/spec/volumes/-', value: s.volume });
  return ops;
}

/**
 * For a pod injected before: how its sidecar differs from what `config` would inject now, in the
 * settings that matter to reaching the middlebox (TLS), or undefined. Injection does not redo a
 * sidecar, so such a pod keeps its old one until it is injected afresh from its original manifest.
 */
export function staleSidecar(pod: Pod, config: InjectConfig): string | undefined {
  if (!isInjected(pod)) return undefined;
  const init = (pod.spec?.initContainers ?? []).find((c) => c.name === NAMES.initContainer);
  const script = Array.isArray(init?.command) ? init.command.join(' ') : '';
  // The rules a capture from before this version lacks: TCP over IPv6 refused, and only
  // connections addressed to the pod taken in.
  if (init && !(script.includes('ip6tables') && script.includes('--dst-type LOCAL'))) {
    return 'its capture, injected before, lacks rules this version adds (TCP over IPv6 refused; only connections addressed to the pod taken in): inject its original manifest (without the middlebox.io/status annotation) and re-create it';
  }
  const a = pod.metadata?.annotations ?? {};
  const had = a[ANNOTATIONS.tlsSdsCa] === undefined ? 'plaintext' : a[ANNOTATIONS.tlsSdsClientCert] === undefined ? 'TLS' : 'mTLS';
  const now = config.middleboxTlsSecret === undefined ? 'plaintext' : config.middleboxMtls ? 'mTLS' : 'TLS';
  if (had === now) return undefined;
  return `its sidecar, injected before, asks the middlebox over ${had}, not ${now} as the injector is set to: inject its original manifest (without the ${ANNOTATIONS.status} annotation) to change that`;
}

/**
 * An injected pod without the sidecar label (injected before the label existed). Only one that has
 * the sidecar's containers: the status annotation alone, which anyone can write, must not earn the
 * label the middlebox's NetworkPolicy admits sidecars by.
 */
function needsSidecarLabel(pod: Pod): boolean {
  if (pod.metadata?.labels?.[SIDECAR_LABEL] === SIDECAR_LABEL_INJECTED) return false;
  const names = (pod.spec?.initContainers ?? []).map((c) => c.name);
  return names.includes(NAMES.initContainer) && names.includes(NAMES.envoyContainer);
}

/** Adds the sidecar label (metadata exists). */
function labelOps(pod: Pod): JsonPatchOperation[] {
  if (pod.metadata?.labels === undefined) return [{ op: 'add', path: '/metadata/labels', value: { [SIDECAR_LABEL]: SIDECAR_LABEL_INJECTED } }];
  return [{ op: 'add', path: `/metadata/labels/${escapePointer(SIDECAR_LABEL)}`, value: SIDECAR_LABEL_INJECTED }];
}

/** RFC 6901: "~" -> "~0", "/" -> "~1". */
export function escapePointer(token: string): string {
  return token.replace(/~/g, '~0').replace(/\//g, '~1');
}

// ---- what is added ------------------------------------------------------------------------------

/** Runs the bootstrap renderer; options it refuses come from the pod or the flags: the pod is refused with them. */
function refuseOnBadOptions<T>(render: () => T): T {
  try {
    return render();
  } catch (e) {
    if (e instanceof BootstrapOptionsError) throw new InjectError(`the sidecar's Envoy bootstrap: ${e.message}`);
    throw e;
  }
}

const ISTIO_PROXY = 'istio-proxy';
const ISTIO_STATUS = 'sidecar.istio.io/status';

function sidecar(pod: Pod, config: InjectConfig): Sidecar {
  if (!pod.spec || !Array.isArray(pod.spec.containers) || pod.spec.containers.length === 0) {
    throw new InjectError('pod has no spec.containers');
  }
  const names = [...pod.spec.containers, ...(pod.spec.initContainers ?? [])].map((c) => c.name);
  for (const n of [NAMES.initContainer, NAMES.envoyContainer]) {
    if (names.includes(n)) throw new InjectError(`pod already has a container named ${n} but no ${ANNOTATIONS.status} annotation`);
  }
  if (config.middleboxTlsSecret !== undefined && (pod.spec.volumes ?? []).some((v) => v.name === NAMES.tlsVolume)) {
    throw new InjectError(`pod already has a volume named ${NAMES.tlsVolume}, which the sidecar's TLS to the middlebox takes`);
  }
  const a = pod.metadata?.annotations ?? {};
  const taken = new Set([config.inboundPort, config.outboundPort, config.adminPort, config.probePort]);
  for (const c of [...pod.spec.containers, ...(pod.spec.initContainers ?? [])]) {
    const clash = (c.ports ?? []).find((p) => taken.has(p.containerPort));
    if (clash) throw new InjectError(`container ${c.name} uses port ${clash.containerPort}, which the sidecar's Envoy takes (${[...taken].join(', ')})`);
  }
  // Istio's sidecar takes the same UID (1337) and ports (15001, 15006, 15000): two proxies would
  // fight over them, and each one's UID exemption would let the other's traffic through.
  if (names.includes(ISTIO_PROXY) || a[ISTIO_STATUS] !== undefined) {
    throw new InjectError(`pod already has Istio's sidecar (${names.includes(ISTIO_PROXY) ? `container ${ISTIO_PROXY}` : `annotation ${ISTIO_STATUS}`}): the middlebox sidecar uses the same UID and ports; turn one injection off for this pod or namespace`);
  }
  const appPort = appPortOf(pod, config);
  const failureMode = failureModeOf(a[ANNOTATIONS.failureMode], config.defaultFailureMode);
  const include = a[ANNOTATIONS.includeInboundPorts];
  const includeInboundPorts: number[] | '*' = include === undefined ? [appPort] : include.trim() === '*' ? '*' : ports(ANNOTATIONS.includeInboundPorts, include);
  const excludeInboundPorts = ports(ANNOTATIONS.excludeInboundPorts, a[ANNOTATIONS.excludeInboundPorts]);
  const probes = rewrittenProbes(pod, config, includeInboundPorts, excludeInboundPorts, a[ANNOTATIONS.rewriteAppProbes]);
  // With every inbound port captured, the probe listener's must not be: the kubelet asks it directly.
  if (probes.length > 0 && includeInboundPorts === '*' && !excludeInboundPorts.includes(config.probePort)) excludeInboundPorts.push(config.probePort);
  // Not the middlebox's ports: Envoy calls it under its own UID, which is never captured, and an
  // app connection to those ports is checked like any other.
  const excludeOutboundPorts = unique([
    ...config.excludeOutboundPorts,
    ...ports(ANNOTATIONS.excludeOutboundPorts, a[ANNOTATIONS.excludeOutboundPorts]),
  ]);
  const excludeOutboundCidrs = cidrs(a[ANNOTATIONS.excludeOutboundCidrs]);
  const capture: CaptureSettings = {
    envoyUid: config.envoyUid,
    inboundPort: config.inboundPort,
    outboundPort: config.outboundPort,
    includeInboundPorts,
    excludeInboundPorts,
    excludeOutboundPorts,
    excludeOutboundCidrs,
  };
  const tls = middleboxTls(config);
  const excludedSet = new Set(excludeInboundPorts);
  const captured = includeInboundPorts === '*' ? '*' : includeInboundPorts.filter((p) => !excludedSet.has(p)).join(',');
  return {
    annotations: {
      [ANNOTATIONS.status]: STATUS_INJECTED,
      [ANNOTATIONS.capturedInboundPorts]: captured,
      // What the rules really do, next to the annotations that asked for it (left as written).
      ...(excludeInboundPorts.length > 0 ? { [ANNOTATIONS.excludedInboundPorts]: excludeInboundPorts.join(',') } : {}),
      ...(excludeOutboundPorts.length > 0 ? { [ANNOTATIONS.excludedOutboundPorts]: excludeOutboundPorts.join(',') } : {}),
      ...(excludeOutboundCidrs.length > 0 ? { [ANNOTATIONS.excludedOutboundCidrs]: excludeOutboundCidrs.join(',') } : {}),
      [ANNOTATIONS.failureMode]: failureMode,
      [ANNOTATIONS.appPort]: String(appPort),
      ...tls?.annotations,
    },
    initContainer: initContainer(config, capture),
    envoyContainer: envoyContainer(pod, config, appPort, failureMode, authzHeadersOf(a[ANNOTATIONS.authzHeaders]), probes, tls?.options),
    probes,
    volume: tls?.volume,
  };
}

/**
 * TLS to the middlebox (config.middleboxTlsSecret): the bootstrap's options, and a projected volume
 * with the Secret's files and, from the pod's own annotations (downward API), the SDS resource
 * files that name them. The kubelet replaces the whole volume at once when the Secret changes (its
 * files are links through `..data`); Envoy watches the directory for that and reloads.
 */
function middleboxTls(config: InjectConfig): { options: MiddleboxTlsOptions; annotations: Record<string, string>; volume: { name: string; [key: string]: unknown } } | undefined {
  if (config.middleboxTlsSecret === undefined) {
    if (config.middleboxMtls) throw new InjectError('mTLS to the middlebox needs the Secret with the client certificate (middleboxTlsSecret)');
    return undefined;
  }
  const dir = config.middleboxTlsDir.replace(/\/+$/, '');
  const file = (key: string) => `${dir}/${key}`;
  const options: MiddleboxTlsOptions = {
    caFile: file(TLS_SECRET_KEYS.ca),
    ...(config.middleboxMtls ? { certFile: file(TLS_SECRET_KEYS.cert), keyFile: file(TLS_SECRET_KEYS.key) } : {}),
    watchedDirectory: dir,
  };
  const sds = refuseOnBadOptions(() => middleboxTlsSdsFiles(options));
  const fromAnnotation: Array<[string, string]> = [[MIDDLEBOX_TLS_SDS_FILES.ca, ANNOTATIONS.tlsSdsCa]];
  if (config.middleboxMtls) fromAnnotation.push([MIDDLEBOX_TLS_SDS_FILES.clientCert, ANNOTATIONS.tlsSdsClientCert]);
  const keys = config.middleboxMtls ? [TLS_SECRET_KEYS.ca, TLS_SECRET_KEYS.cert, TLS_SECRET_KEYS.key] : [TLS_SECRET_KEYS.ca];
  return {
    options,
    annotations: Object.fromEntries(fromAnnotation.map(([f, annotation]) => [annotation, sds[f]!])),
    volume: {
      name: NAMES.tlsVolume,
      projected: {
        sources: [
          { secret: { name: config.middleboxTlsSecret, items: keys.map((key) => ({ key, path: key })) } },
          { downwardAPI: { items: fromAnnotation.map(([f, annotation]) => ({ path: f, fieldRef: { fieldPath: `metadata.annotations['${annotation}']` } })) } },
        ],
      },
    },
  };
}

/**
 * The app's HTTP probes (httpGet, scheme HTTP, no other host) on a captured port, pointed at
 * Envoy's probe listener: through the inbound listener they would be decided by the policy, and a
 * default-deny policy or a middlebox that cannot be asked would fail them (a liveness probe then
 * restarts the app). Other probes stay as written: exec probes never cross the capture; HTTPS,
 * TCP and gRPC probes on a captured port still reach the inbound listener (a TCP probe then only
 * shows that Envoy is up).
 */
function rewrittenProbes(pod: Pod, config: InjectConfig, include: number[] | '*', exclude: number[], annotation: string | undefined): RewrittenProbe[] {
  if (annotation !== undefined && annotation !== 'true' && annotation !== 'false') {
    throw new InjectError(`${ANNOTATIONS.rewriteAppProbes} must be "true" or "false", got ${JSON.stringify(annotation)}`);
  }
  if (annotation === 'false') return [];
  const captured = (port: number) => !exclude.includes(port) && (include === '*' || include.includes(port));
  const out: RewrittenProbe[] = [];
  // The app's containers and its own native sidecars (probed like them); plain init containers have no probes.
  const probed = [
    ...pod.spec!.containers.map((c, container) => ({ c, container, list: 'containers' as const })),
    ...(pod.spec!.initContainers ?? []).map((c, container) => ({ c, container, list: 'initContainers' as const })).filter(({ c }) => c.restartPolicy === 'Always'),
  ];
  for (const { c, container, list } of probed) {
    for (const kind of PROBE_KINDS) {
      const probe = c[kind] as { httpGet?: { port?: unknown; path?: unknown; host?: unknown; scheme?: unknown } } | undefined;
      const get = probe?.httpGet;
      if (!get || get.host !== undefined || (get.scheme !== undefined && get.scheme !== 'HTTP')) continue;
      const port = typeof get.port === 'number' ? get.port : c.ports?.find((p) => p.name === get.port)?.containerPort;
      if (port === undefined || !captured(port)) continue;
      const path = `/app-health/${c.name}/${PROBE_PATH_SUFFIX[kind]}`;
      const appPath = typeof get.path === 'string' && get.path.startsWith('/') ? get.path : `/${typeof get.path === 'string' ? get.path : ''}`;
      out.push({ list, container, kind, probe: { ...structuredClone(probe), httpGet: { ...structuredClone(get), port: config.probePort, path } }, route: { path, appPort: port, appPath } });
    }
  }
  return out;
}

function initContainer(config: InjectConfig, capture: CaptureSettings): Container {
  return {
    name: NAMES.initContainer,
    image: config.initImage,
    command: ['sh', '-c', captureScript(capture)],
    resources: structuredClone(config.initResources),
    // Root with exactly the two capabilities iptables needs, nothing else.
    securityContext: {
      runAsUser: 0,
      runAsNonRoot: false,
      privileged: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] },
    },
  };
}

/**
 * The bootstrap travels in an environment variable and reaches Envoy through the kubelet's
 * `$(VAR)` expansion of args (`--config-yaml`): no ConfigMap, no volume, no shell, and the root
 * filesystem stays read-only. The kubelet also expands `$(POD_NAME)` and `$(POD_NAMESPACE)` inside
 * the variable (they are defined before it), which gives every Envoy its own node id.
 */
function envoyContainer(
  pod: Pod,
  config: InjectConfig,
  appPort: number,
  failureMode: FailureMode,
  authzHeaders: string[] | undefined,
  probes: RewrittenProbe[],
  middleboxTls: MiddleboxTlsOptions | undefined,
): Container {
  const nodeId = '$(POD_NAME).$(POD_NAMESPACE)';
  const bootstrap = refuseOnBadOptions(() => renderBootstrapYaml({
    nodeId,
    cluster: clusterName(pod),
    adminAddress: '127.0.0.1',
    adminPort: config.adminPort,
    inboundHttp: { address: '0.0.0.0', port: config.inboundPort, appAddress: '127.0.0.1', appPort },
    // REDIRECT from OUTPUT lands on 127.0.0.1, so the outbound listener need not face the network.
    outbound: { address: '127.0.0.1', port: config.outboundPort },
    middlebox: [config.middleboxAddress],
    middleboxHttp: config.middleboxHttpAddress ? [config.middleboxHttpAddress] : undefined,
    failureModeAllow: failureMode === 'open',
    authzHeaders,
    appProbes: probes.length > 0 ? { address: '0.0.0.0', port: config.probePort, routes: probes.map((p) => p.route) } : undefined,
    middleboxTls,
  }));
  // The kubelet turns "$$" into "$" and "$(X)" into X's value: only our own references may appear.
  if (bootstrap.split(nodeId).join('').includes('$')) throw new InjectError('the rendered bootstrap contains "$", which the kubelet would expand');
  // Envoy's /ready is on the admin listener, which is bound to 127.0.0.1 (the admin API must not
  // face the network) and so out of the kubelet's reach for an httpGet probe. An exec probe runs
  // inside the pod's network namespace and can ask it: bash's /dev/tcp, no curl needed in the
  // image (the official Envoy images have bash). /ready answers 200 only once Envoy is LIVE.
  // HTTP/1.1 with a Host header: Envoy refuses HTTP/1.0 unless told otherwise (426).
  const ready = {
    exec: {
      command: [
        'bash',
        '-c',
        `exec 3<>/dev/tcp/127.0.0.1/${config.adminPort} && printf 'GET /ready HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '`,
      ],
    },
    timeoutSeconds: 2,
  };
  return {
    name: NAMES.envoyContainer,
    image: config.envoyImage,
    // A native sidecar (Kubernetes 1.29+): an init container that keeps running. The app's
    // containers start only once its startup probe passes (Envoy listens before the app's first
    // connection is redirected to it), it is stopped after them (no request cut by an Envoy gone
    // first), and it does not keep a Job's pod from completing.
    restartPolicy: 'Always',
    startupProbe: { ...structuredClone(ready), periodSeconds: 1, failureThreshold: 120 },
    command: ['envoy'],
    args: ['--config-yaml', `$(${NAMES.bootstrapEnv})`, '--disable-hot-restart', '--log-level', 'warn'],
    env: [
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      { name: NAMES.bootstrapEnv, value: bootstrap },
    ],
    readinessProbe: { ...structuredClone(ready), periodSeconds: 2, failureThreshold: 3 },
    ...(middleboxTls ? { volumeMounts: [{ name: NAMES.tlsVolume, mountPath: middleboxTls.watchedDirectory, readOnly: true }] } : {}),
    resources: structuredClone(config.envoyResources),
    securityContext: {
      runAsUser: config.envoyUid,
      runAsGroup: config.envoyUid,
      runAsNonRoot: true,
      privileged: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    },
  };
}

// ---- reading the pod ----------------------------------------------------------------------------

function authzHeadersOf(value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const { names, bad } = readHeaderList(value);
  if (bad.length) throw new InjectError(`${ANNOTATIONS.authzHeaders} must be comma-separated header names (${HEADER_NAME_RULE}), got ${bad.map((n) => JSON.stringify(n)).join(', ')}`);
  return names;
}

/** The annotation, else the first TCP container port of the app's containers, else the default. */
function appPortOf(pod: Pod, config: InjectConfig): number {
  const annotated = pod.metadata?.annotations?.[ANNOTATIONS.appPort];
  if (annotated !== undefined) return ports(ANNOTATIONS.appPort, annotated, true)[0]!;
  for (const c of pod.spec!.containers) {
    for (const p of c.ports ?? []) {
      if ((p.protocol ?? 'TCP') === 'TCP' && Number.isInteger(p.containerPort)) return p.containerPort;
    }
  }
  return config.defaultAppPort;
}

function failureModeOf(value: string | undefined, fallback: FailureMode): FailureMode {
  if (value === undefined) return fallback;
  if (value === 'closed' || value === 'open') return value;
  throw new InjectError(`${ANNOTATIONS.failureMode} must be "closed" or "open", got ${JSON.stringify(value)}`);
}

function ports(annotation: string, value: string | undefined, single = false): number[] {
  if (value === undefined) return [];
  const items = splitList(value);
  const out = items.map(Number);
  if (items.length === 0 || out.some((p) => !Number.isInteger(p) || p < 1 || p > 65535) || (single && out.length !== 1)) {
    throw new InjectError(`${annotation} must be ${single ? 'a port' : 'comma-separated ports'} (1-65535), got ${JSON.stringify(value)}`);
  }
  return unique(out);
}

function cidrs(value: string | undefined): string[] {
  if (value === undefined) return [];
  try {
    return unique(splitList(value).map(normaliseCidr));
  } catch (e) {
    throw new InjectError(`${ANNOTATIONS.excludeOutboundCidrs}: ${(e as Error).message}`);
  }
}

/** Envoy's service cluster: the app label if there is one. */
function clusterName(pod: Pod): string {
  const labels = pod.metadata?.labels ?? {};
  return labels['app.kubernetes.io/name'] ?? labels.app ?? 'app';
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}
