// What the sidecar injector puts into a pod, with its defaults in one place, and the annotations
// and labels that steer it. Pure data: `middlebox inject` and the webhook read the same config.

/** Annotations and labels the injector reads (on the pod) or writes. */
export const ANNOTATIONS = {
  /** "true" opts a pod in, "false" opts it out (the opt-out wins over the namespace label). */
  inject: 'middlebox.io/inject',
  /** Written by the injector; a pod that carries it is never injected twice. */
  status: 'middlebox.io/status',
  /** Comma-separated inbound ports that are not sent through Envoy. */
  excludeInboundPorts: 'middlebox.io/exclude-inbound-ports',
  /** Comma-separated outbound ports the app reaches directly, not through Envoy. */
  excludeOutboundPorts: 'middlebox.io/exclude-outbound-ports',
  /** Comma-separated CIDRs the app reaches directly, not through Envoy. */
  excludeOutboundCidrs: 'middlebox.io/exclude-outbound-cidrs',
  /** Comma-separated inbound ports sent through Envoy, or "*" for all; default: the app port. */
  includeInboundPorts: 'middlebox.io/include-inbound-ports',
  /** "closed" (default: refuse traffic when the middlebox cannot be asked) or "open". */
  failureMode: 'middlebox.io/failure-mode',
  /**
   * Comma-separated request headers the sidecar's ext_authz filter sends the middlebox
   * (`envoy bootstrap --authz-headers`; `middlebox policy headers` lists what the rules read).
   * Default: every header.
   */
  authzHeaders: 'middlebox.io/authz-headers',
  /** The app's HTTP port Envoy forwards inbound traffic to; default: the first container port. */
  appPort: 'middlebox.io/app-port',
  /**
   * "true" (default) or "false": the kubelet's HTTP probes on captured ports go to Envoy's probe
   * listener, which forwards them to the app without asking the middlebox.
   */
  rewriteAppProbes: 'middlebox.io/rewrite-app-probes',
  /** Written by the injector: the inbound ports actually captured ("*" or a list). */
  capturedInboundPorts: 'middlebox.io/captured-inbound-ports',
  /** Written by the injector: the inbound ports excluded from capture (when any). */
  excludedInboundPorts: 'middlebox.io/excluded-inbound-ports',
  /** Written by the injector: the outbound ports actually excluded from capture. */
  excludedOutboundPorts: 'middlebox.io/excluded-outbound-ports',
  /** Written by the injector: the outbound CIDRs excluded from capture, normalised (when any). */
  excludedOutboundCidrs: 'middlebox.io/excluded-outbound-cidrs',
  /**
   * Written by the injector with TLS to the middlebox: the file-based SDS resources Envoy reads its
   * CA (and client certificate) through, projected into the TLS volume beside the Secret's files.
   */
  tlsSdsCa: 'middlebox.io/tls-sds-ca',
  tlsSdsClientCert: 'middlebox.io/tls-sds-client-cert',
} as const;

/** The namespace label that turns injection on for every pod in the namespace. */
export const NAMESPACE_LABEL = 'middlebox.io/injection';
export const NAMESPACE_LABEL_ENABLED = 'enabled';
/** The value of the status annotation on an injected pod. */
export const STATUS_INJECTED = 'injected';

/**
 * The label the injector puts on every pod it injects (webhook and `inject -f` alike): what the
 * middlebox's NetworkPolicy selects the sidecars by, and `kubectl get pods -l` finds them by.
 */
export const SIDECAR_LABEL = 'middlebox.io/sidecar';
export const SIDECAR_LABEL_INJECTED = 'injected';

/** Names of what the injector adds, so that it (and tests) can find them again. */
export const NAMES = {
  initContainer: 'middlebox-init',
  envoyContainer: 'middlebox-envoy',
  bootstrapEnv: 'MIDDLEBOX_BOOTSTRAP',
  /** The Envoy container's volume with the TLS Secret's files (middleboxTlsSecret). */
  tlsVolume: 'middlebox-tls',
} as const;

/** The keys of a TLS Secret the sidecar reads: those cert-manager writes (and `kubectl create secret tls`, but ca.crt). */
export const TLS_SECRET_KEYS = { ca: 'ca.crt', cert: 'tls.crt', key: 'tls.key' } as const;

export type FailureMode = 'closed' | 'open';

export interface ResourceRequests {
  requests: { cpu: string; memory: string };
  limits?: { cpu?: string; memory?: string };
}

export interface InjectConfig {
  envoyImage: string;
  initImage: string;
  /** The middlebox Service as Envoy dials it, "host:port". */
  middleboxAddress: string;
  /**
   * The middlebox Service's HTTP ext_authz port, "host:port" (replicas run with
   * `serve --http-authz-listen`): given, injected Envoys ask it over HTTP/1.1 instead of gRPC.
   */
  middleboxHttpAddress?: string;
  /** Envoy runs as this UID; its own traffic is never captured (no loops). */
  envoyUid: number;
  /** Envoy's inbound listener: captured inbound traffic is redirected here. */
  inboundPort: number;
  /** Envoy's outbound listener: captured outbound traffic is redirected here. */
  outboundPort: number;
  /** Envoy's admin, on 127.0.0.1 only. */
  adminPort: number;
  /** Envoy's listener for the app's rewritten kubelet probes (never captured). */
  probePort: number;
  /** Used when the pod names no app port (annotation or container port). */
  defaultAppPort: number;
  /**
   * Outbound ports never captured, for every pod (default none). Envoy's own connections, to the
   * middlebox among them, are never captured anyway (its UID): a port listed here is a way around
   * the firewall for the app, to any address.
   */
  excludeOutboundPorts: number[];
  defaultFailureMode: FailureMode;
  /**
   * TLS from the sidecar to the middlebox: a Secret in each injected pod's namespace, with `ca.crt`
   * (the CA that signed the replicas' certificates) and, with middleboxMtls, `tls.crt` and
   * `tls.key` (the sidecar's client certificate). Mounted into Envoy only; Envoy takes renewed
   * files without a restart. Default: plaintext.
   */
  middleboxTlsSecret?: string;
  /** Present the Secret's client certificate (for replicas run with --tls-client-ca). */
  middleboxMtls?: boolean;
  /** Where the Envoy container mounts the TLS volume. */
  middleboxTlsDir: string;
  envoyResources: ResourceRequests;
  initResources: ResourceRequests;
}

export const INJECT_DEFAULTS: InjectConfig = {
  envoyImage: 'envoyproxy/envoy:v1.40.0',
  // Any image with a POSIX shell, iptables and ip6tables.
  initImage: 'middlebox/init:latest',
  middleboxAddress: 'middlebox.middlebox-system.svc:9001',
  envoyUid: 1337,
  inboundPort: 15006,
  outboundPort: 15001,
  adminPort: 15000,
  probePort: 15021,
  defaultAppPort: 8080,
  excludeOutboundPorts: [],
  defaultFailureMode: 'closed',
  middleboxTlsDir: '/etc/middlebox/tls',
  envoyResources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
  initResources: { requests: { cpu: '10m', memory: '16Mi' }, limits: { cpu: '100m', memory: '64Mi' } },
};

export function injectConfig(overrides: Partial<InjectConfig> = {}): InjectConfig {
  return { ...INJECT_DEFAULTS, ...overrides };
}

