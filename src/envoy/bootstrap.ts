// Renders the Envoy bootstrap of a sidecar: admin, the inbound listeners that ask the middlebox
// (ext_authz) before traffic reaches the app, and the clusters they use. Pure: the same options
// always give the same document, so the CLI, the injection webhook and the tests share it and the
// golden files catch every change.
import { dirname, isAbsolute } from 'node:path';
import ipaddr from 'ipaddr.js';
import { stringify } from 'yaml';
// What the middlebox reads, so the rendered Envoy always sends it.
import {
  HTTP_AUTHZ_CLIENT_HEADER_PREFIXES,
  HTTP_AUTHZ_DENIAL_HEADERS,
  HTTP_AUTHZ_HEALTH_PATH,
  HTTP_AUTHZ_KEEP_ALIVE_MS,
  HTTP_AUTHZ_PATH_PREFIX,
  HTTP_AUTHZ_PEER_HEADER,
  HTTP_AUTHZ_UPSTREAM_HEADER_PREFIX,
  httpAuthzPeerValue,
} from '../grpc/authz/http';
import { DECISION_HEADER, SHADOW_DENY_HEADER } from '../grpc/authz/response';
import { AFTER_EXT_AUTHZ_HEADER, INBOUND_LISTENER_HEADER, REQUEST_ATTRIBUTES } from '../grpc/extproc/request';
import { DESTINATION_HEADER } from '../middlebox/nat/engine';
import { ALWAYS_SENT, ALWAYS_SENT_PREFIX, HEADER_NAME_RULE, isHeaderName, SENT_HEADERS_HEADER, sentListFor } from '../policy/headers';

/** Where a listener accepts traffic and where it forwards what the middlebox allows. */
export interface ListenerTarget {
  address: string;
  port: number;
  appAddress: string;
  appPort: number;
}

export interface BootstrapOptions {
  /** Envoy node id (shows in admin and in the middlebox's view of the caller). */
  nodeId?: string;
  /** Service cluster name of the node. */
  cluster?: string;
  adminAddress?: string;
  adminPort?: number;
  /** HTTP inbound listener; omitted fields take the defaults, `false` renders no HTTP listener. */
  inboundHttp?: Partial<ListenerTarget> | false;
  /** TCP inbound listener (network ext_authz, then tcp_proxy); rendered only when given. */
  inboundTcp?: ListenerTarget;
  /**
   * When the inbound TCP listener connects to the app. `immediate` (default, Envoy's own): as the
   * client connects, so that a protocol where the server speaks first (MySQL, SMTP) works; the app
   * then sees a denied client's connection open and close, and such a server has sent its
   * greeting. `on-data`: only once the client's first bytes pass ext_authz (up to 64 KiB held
   * meanwhile), so a denied client never reaches the app; a server-first protocol waits forever.
   */
  inboundTcpConnect?: TcpConnect;
  /** Middlebox replicas, each "host:port", "[v6]:port" or "unix:/path/to.sock". */
  middlebox?: string[];
  /**
   * The replicas' HTTP ext_authz listeners (`serve --http-authz-listen`), in the same forms. Given,
   * the inbound HTTP listener's ext_authz filter asks them over HTTP/1.1 (http_service, cluster
   * `middlebox_http`) instead of gRPC: the same decisions for a quarter to a third less CPU per request.
   * The network ext_authz filter and ext_proc still use `middlebox`. Default: gRPC only.
   */
  middleboxHttp?: string[];
  /**
   * Request headers the inbound HTTP ext_authz filter sends to the middlebox (lower-case names, as
   * `middlebox policy headers` lists them), over gRPC or HTTP alike; :authority, :method, :path,
   * content-length, x-request-id and every x-middlebox-* header are always added. Envoy copies
   * fewer headers per call and passes more requests; a request that reaches an enforced rule reading a header left out is
   * refused (403 headers_not_sent). Default: every header.
   */
  authzHeaders?: string[];
  /** Deadline of one ext_authz call. */
  timeoutMs?: number;
  /**
   * Envoy closes a kept-alive HTTP connection to the app, to its probed ports and (outbound
   * listener) to where the app's requests go after this long idle, so that it, not the server,
   * closes it: a server with a shorter keep-alive timeout than Envoy's would close one just as
   * Envoy sends a request on it, which fails with a 503. Default 1000 ms, below the common
   * servers' (Node and Apache 5 s, gunicorn 2 s).
   */
  upstreamIdleTimeoutMs?: number;
  /** Let traffic through when the middlebox cannot be asked. */
  failureModeAllow?: boolean;
  /** HTTP status returned when the middlebox cannot be asked and failureModeAllow is false. */
  statusOnError?: number;
  /** Cap on downstream connections across all listeners (Envoy's overload manager). */
  maxDownstreamConnections?: number;
  /**
   * Ask the middlebox (HTTP and network ext_authz) before traffic reaches the app; default true.
   * `false` renders no ext_authz filter and no middlebox cluster (e.g. a plain Envoy with only
   * `localRateLimit`, as benchmarks compare against).
   */
  extAuthz?: boolean;
  /**
   * Envoy's own per-instance token bucket (`envoy.filters.http.local_ratelimit`) on the inbound
   * HTTP listener; requests it refuses get 429 without asking the middlebox. Not rendered by default.
   */
  localRateLimit?: LocalRateLimitOptions;
  /**
   * Which filter asks the middlebox on the inbound HTTP listener: ext_authz (default; firewall and
   * rate limits on a unary call), ext_proc (the same, plus NAT, in one stream per request), or
   * both, ext_authz first (ext_proc then sees only what ext_authz let through).
   */
  inboundFilter?: InboundFilter;
  /**
   * Outbound listener for the app's own requests: ext_proc (NAT picks the destination) then an
   * ORIGINAL_DST cluster that connects where the middlebox said. Rendered only when given.
   */
  outbound?: { address: string; port: number };
  /**
   * Write one JSON access-log line per request on the inbound HTTP listener to this file
   * (`/dev/stdout` in a pod), with the middlebox's decision id and verdict from the ext_authz
   * filter's dynamic metadata. Not rendered by default.
   */
  accessLog?: string;
  /**
   * TLS from Envoy to the middlebox replicas (the `middlebox` cluster's transport socket, health
   * checks included), for replicas run with `serve --tls-cert`; with a client certificate, for
   * `serve --tls-client-ca` (mTLS). Default: plaintext.
   */
  middleboxTls?: MiddleboxTlsOptions;
  /**
   * The kubelet's HTTP probes of the app, rewritten by the injector to this listener (Istio does
   * the same through its agent): each of `routes` forwards one exact path to the app's port and
   * path, without asking the middlebox, so that a policy (or a middlebox that cannot be asked)
   * never fails a liveness or readiness probe. Every other path gets 404. Rendered only when given.
   */
  appProbes?: AppProbesOptions;
}

export interface AppProbesOptions {
  address: string;
  port: number;
  routes: Array<{ path: string; appPort: number; appPath: string }>;
}

/** Paths are files in Envoy's filesystem (a mounted Secret in a pod), read by Envoy, never inlined. */
export interface MiddleboxTlsOptions {
  /** CA bundle that signed the replicas' certificates; required: TLS without verification is no protection. */
  caFile: string;
  /**
   * Names the replica's certificate must carry (DNS or IP subject alternative names); any one
   * matches. Default: the hosts of the middlebox endpoints, as a browser checks the host it dials;
   * `[]` checks only that the CA signed it (unix socket endpoints name no host).
   */
  subjectAltNames?: string[];
  /** TLS server name (SNI) sent; default the first endpoint host name (never an IP address). */
  sni?: string;
  /** Client certificate (chain) and key Envoy presents, for mTLS; together or not at all. */
  certFile?: string;
  keyFile?: string;
  /**
   * The directory that holds the files above, replaced as a whole when they change (a Kubernetes
   * Secret or projected volume: its files are links through `..data`, which the kubelet swaps).
   * Envoy then reads them through file-based SDS, from the resource files middleboxTlsSdsFiles()
   * renders, which must be in that directory too (MIDDLEBOX_TLS_SDS_FILES), and takes new
   * certificates without a restart. Without it, Envoy reads the files once, at start.
   */
  watchedDirectory?: string;
}

/** The SDS resource files a watchedDirectory holds besides the certificates: what each is for. */
export const MIDDLEBOX_TLS_SDS_FILES = { ca: 'middlebox-ca.sds.yaml', clientCert: 'middlebox-client-cert.sds.yaml' } as const;
/** The SDS secrets' names, as the cluster's TLS context asks for them. */
const SDS_SECRETS = { ca: 'middlebox_ca', clientCert: 'middlebox_client_cert' } as const;

export type InboundFilter = 'ext_authz' | 'ext_proc' | 'ext_authz+ext_proc';
export const INBOUND_FILTERS: readonly InboundFilter[] = ['ext_authz', 'ext_proc', 'ext_authz+ext_proc'];
export type TcpConnect = 'immediate' | 'on-data';
export const TCP_CONNECT_MODES: readonly TcpConnect[] = ['immediate', 'on-data'];

/** Envoy's local_ratelimit token bucket: starts with maxTokens, gains tokensPerFill every fillIntervalMs. */
export interface LocalRateLimitOptions {
  maxTokens: number;
  tokensPerFill: number;
  /** At least 50 (Envoy's minimum fill interval). */
  fillIntervalMs: number;
}

export const BOOTSTRAP_DEFAULTS = {
  nodeId: 'middlebox-sidecar',
  cluster: 'app',
  adminAddress: '127.0.0.1',
  adminPort: 15000,
  inboundHttp: { address: '0.0.0.0', port: 15006, appAddress: '127.0.0.1', appPort: 8080 },
  middlebox: ['127.0.0.1:9001'],
  // A decision normally takes a few milliseconds; a slow middlebox must not hold requests long.
  timeoutMs: 250,
  // Fail closed: a firewall that opens whenever its decision point is unreachable (or made
  // unreachable by an attacker) is no firewall. The middlebox itself degrades gracefully when
  // etcd is down, so an unreachable middlebox really is an outage worth seeing.
  failureModeAllow: false,
  // Envoy's own default, made explicit: a sidecar behaves the way Envoy's documentation says, and
  // a 403 (unlike a 503) does not invite clients and meshes to retry against a failing middlebox.
  statusOnError: 403,
  // A sidecar fronts one app; the cap keeps a connection flood from exhausting the pod's file
  // descriptors and memory (and Envoy warns at every start when there is none).
  maxDownstreamConnections: 10_000,
  // Envoy closes a kept-alive HTTP connection to the app, or to where the app's own requests go,
  // after this long idle, before the server would: one that closes a connection as Envoy sends a
  // request on it (Node's 5 s keep-alive, gunicorn's 2 s) fails that request with a 503 (UC,
  // connection termination). Envoy's own default is an hour.
  upstreamIdleTimeoutMs: 1000,
} as const;

/** Cluster names, shared with code that reads Envoy's stats and /clusters. */
export const CLUSTERS = {
  middlebox: 'middlebox',
  middleboxHttp: 'middlebox_http',
  app: 'app',
  appTcp: 'app_tcp',
  outbound: 'outbound_original_dst',
  /** Followed by the app port: where a rewritten probe goes (`app_probe_8080`). */
  appProbePrefix: 'app_probe_',
} as const;

const MAX_REQUESTS_PER_MIDDLEBOX_CONNECTION = 900;

const TYPES = {
  httpConnectionManager:
    'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
  httpExtAuthz: 'type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz',
  httpExtProc: 'type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor',
  originalDstListener: 'type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst',
  httpInspector: 'type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector',
  httpLocalRateLimit: 'type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit',
  networkExtAuthz: 'type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz',
  router: 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
  tcpProxy: 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
  httpProtocolOptions: 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
  downstreamConnections:
    'type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig',
  fileAccessLog: 'type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog',
  previousHosts: 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate',
  upstreamTlsContext: 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
  tlsSecret: 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret',
  headerMutation: 'type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation',
} as const;

const AUTHORIZATION_SERVICE = 'envoy.service.auth.v3.Authorization';


type Config = Record<string, unknown>;

/** Options the renderer refuses: what a caller (a command line, an annotation) asked for, not a bug. */
export class BootstrapOptionsError extends Error {}

interface ResolvedOptions {
  accessLog: string | undefined;
  nodeId: string;
  cluster: string;
  adminAddress: string;
  adminPort: number;
  inboundHttp: ListenerTarget | undefined;
  inboundTcp: ListenerTarget | undefined;
  inboundTcpConnect: TcpConnect;
  middlebox: Endpoint[];
  middleboxHttp: Endpoint[] | undefined;
  /** The whole list sent (ALWAYS_SENT included), sorted; undefined: every header. */
  authzHeaders: string[] | undefined;
  timeoutMs: number;
  upstreamIdleTimeoutMs: number;
  failureModeAllow: boolean;
  statusOnError: number;
  maxDownstreamConnections: number;
  extAuthz: boolean;
  localRateLimit: LocalRateLimitOptions | undefined;
  inboundFilter: InboundFilter;
  outbound: { address: string; port: number } | undefined;
  middleboxTls: ResolvedMiddleboxTls | undefined;
  appProbes: AppProbesOptions | undefined;
}

interface ResolvedMiddleboxTls {
  caFile: string;
  subjectAltNames: Array<{ type: 'DNS' | 'IP_ADDRESS'; value: string }>;
  sni: string | undefined;
  certFile: string | undefined;
  keyFile: string | undefined;
  watchedDirectory: string | undefined;
}

type Endpoint =
  | { kind: 'ip'; address: string; port: number }
  | { kind: 'dns'; address: string; port: number }
  | { kind: 'unix'; path: string };

export function renderBootstrap(opts: BootstrapOptions = {}): object {
  const o = resolve(opts);
  return {
    node: { id: o.nodeId, cluster: o.cluster },
    admin: { address: socketAddress(o.adminAddress, o.adminPort) },
    static_resources: {
      listeners: listeners(o),
      clusters: clusters(o),
    },
    overload_manager: overloadManager(o),
  };
}

export function renderBootstrapYaml(opts: BootstrapOptions = {}): string {
  // No anchors or aliases and no line folding: every block reads on its own and diffs cleanly.
  return stringify(renderBootstrap(opts), { aliasDuplicateObjects: false, lineWidth: 0 });
}

function resolveTcpConnect(mode: TcpConnect | undefined, hasTcpListener: boolean): TcpConnect {
  if (mode === undefined) return 'immediate';
  if (!(TCP_CONNECT_MODES as readonly string[]).includes(mode)) {
    throw new BootstrapOptionsError(`inboundTcpConnect must be ${TCP_CONNECT_MODES.join(' or ')}, got ${JSON.stringify(mode)}`);
  }
  if (!hasTcpListener) throw new BootstrapOptionsError('inboundTcpConnect is for the inbound TCP listener, which this bootstrap does not have (no inboundTcp)');
  return mode;
}

function resolve(opts: BootstrapOptions): ResolvedOptions {
  const d = BOOTSTRAP_DEFAULTS;
  const timeoutMs = positiveInteger('timeoutMs', opts.timeoutMs ?? d.timeoutMs);
  const statusOnError = opts.statusOnError ?? d.statusOnError;
  if (!Number.isInteger(statusOnError) || statusOnError < 200 || statusOnError > 599) {
    throw new BootstrapOptionsError(`statusOnError must be an HTTP status code, got ${statusOnError}`);
  }
  const extAuthz = opts.extAuthz ?? true;
  // The outbound listener's NAT asks the middlebox too, whatever the inbound side does.
  const asksMiddlebox = extAuthz || opts.outbound !== undefined;
  const middlebox = (opts.middlebox ?? (asksMiddlebox ? d.middlebox : [])).map(parseEndpoint);
  if (asksMiddlebox && middlebox.length === 0) throw new BootstrapOptionsError('middlebox needs at least one endpoint');
  if (opts.accessLog !== undefined && opts.accessLog.trim() === '') throw new BootstrapOptionsError('accessLog must be a file path');
  const middleboxHttp = opts.middleboxHttp?.map(parseEndpoint);
  if (middleboxHttp && middleboxHttp.length === 0) throw new BootstrapOptionsError('middleboxHttp needs at least one endpoint');
  if (middleboxHttp && (!extAuthz || opts.inboundHttp === false || opts.inboundFilter === 'ext_proc')) {
    throw new BootstrapOptionsError('middleboxHttp is for the inbound HTTP listener\'s ext_authz filter, which this bootstrap does not have (no HTTP listener, extAuthz false, or inboundFilter ext_proc)');
  }
  const resolved: ResolvedOptions = {
    accessLog: opts.accessLog,
    authzHeaders: opts.authzHeaders && resolveAuthzHeaders(opts.authzHeaders, extAuthz && opts.inboundHttp !== false && opts.inboundFilter !== 'ext_proc'),
    nodeId: opts.nodeId ?? d.nodeId,
    cluster: opts.cluster ?? d.cluster,
    adminAddress: opts.adminAddress ?? d.adminAddress,
    adminPort: opts.adminPort ?? d.adminPort,
    inboundHttp: opts.inboundHttp === false ? undefined : { ...d.inboundHttp, ...opts.inboundHttp },
    inboundTcp: opts.inboundTcp,
    inboundTcpConnect: resolveTcpConnect(opts.inboundTcpConnect, opts.inboundTcp !== undefined),
    middlebox,
    middleboxHttp,
    timeoutMs,
    upstreamIdleTimeoutMs: positiveInteger('upstreamIdleTimeoutMs', opts.upstreamIdleTimeoutMs ?? d.upstreamIdleTimeoutMs),
    failureModeAllow: opts.failureModeAllow ?? d.failureModeAllow,
    statusOnError,
    maxDownstreamConnections: positiveInteger(
      'maxDownstreamConnections',
      opts.maxDownstreamConnections ?? d.maxDownstreamConnections,
    ),
    extAuthz,
    localRateLimit: opts.localRateLimit && resolveLocalRateLimit(opts.localRateLimit),
    inboundFilter: opts.inboundFilter ?? 'ext_authz',
    outbound: opts.outbound,
    middleboxTls: opts.middleboxTls && resolveMiddleboxTls(opts.middleboxTls, [...middlebox, ...(middleboxHttp ?? [])]),
    appProbes: opts.appProbes && resolveAppProbes(opts.appProbes),
  };
  checkListenerPorts(resolved);
  return resolved;
}

/**
 * Envoy refuses two listeners on one address, and an app target that is one of Envoy's own
 * listeners would send each request back into Envoy: both are refused here, naming the two.
 */
function checkListenerPorts(o: ResolvedOptions): void {
  const own: Array<{ name: string; address: string; port: number }> = [{ name: 'admin', address: o.adminAddress, port: o.adminPort }];
  if (o.inboundHttp) own.push({ name: 'inbound HTTP listener', address: o.inboundHttp.address, port: o.inboundHttp.port });
  if (o.inboundTcp) own.push({ name: 'inbound TCP listener', address: o.inboundTcp.address, port: o.inboundTcp.port });
  if (o.outbound) own.push({ name: 'outbound listener', address: o.outbound.address, port: o.outbound.port });
  if (o.appProbes) own.push({ name: 'app probe listener', address: o.appProbes.address, port: o.appProbes.port });
  // Envoy binds [::] for IPv6 only (ipv4_compat is off): addresses overlap within one family, where
  // they are equal or one of them is that family's any-address.
  const parsed = (a: string) => (ipaddr.isValid(a) ? ipaddr.parse(a) : undefined);
  const overlap = (a: string, b: string) => {
    const [x, y] = [parsed(a), parsed(b)];
    if (!x || !y) return a === b;
    if (x.kind() !== y.kind()) return false;
    return x.toNormalizedString() === y.toNormalizedString() || x.range() === 'unspecified' || y.range() === 'unspecified';
  };
  own.forEach((l, i) => {
    for (const other of own.slice(0, i)) {
      if (l.port === other.port && overlap(l.address, other.address)) {
        throw new BootstrapOptionsError(`the ${l.name} and the ${other.name} are both on port ${l.port}: Envoy refuses two listeners on one address`);
      }
    }
  });
  const targets = [
    o.inboundHttp && { name: 'inbound HTTP listener', address: o.inboundHttp.appAddress, port: o.inboundHttp.appPort },
    o.inboundTcp && { name: 'inbound TCP listener', address: o.inboundTcp.appAddress, port: o.inboundTcp.appPort },
  ];
  for (const t of targets) {
    const loop = t && own.find((l) => l.port === t.port && overlap(l.address, t.address));
    if (t && loop) throw new BootstrapOptionsError(`the ${t.name}'s app port ${t.port} is Envoy's own ${loop.name}: every request would come back to Envoy`);
  }
}

function resolveAppProbes(p: AppProbesOptions): AppProbesOptions {
  positiveInteger('appProbes.port', p.port);
  const seen = new Set<string>();
  for (const r of p.routes) {
    positiveInteger('appProbes.routes[].appPort', r.appPort);
    if (!r.path.startsWith('/') || !r.appPath.startsWith('/')) throw new BootstrapOptionsError(`appProbes: paths must start with "/", got ${JSON.stringify(r.path)} -> ${JSON.stringify(r.appPath)}`);
    if (seen.has(r.path)) throw new BootstrapOptionsError(`appProbes: ${JSON.stringify(r.path)} is routed twice`);
    seen.add(r.path);
  }
  return p;
}

function resolveAuthzHeaders(names: readonly string[], hasFilter: boolean): string[] {
  if (!hasFilter) {
    throw new BootstrapOptionsError('authzHeaders is for the inbound HTTP listener\'s ext_authz filter, which this bootstrap does not have (no HTTP listener, extAuthz false, or inboundFilter ext_proc)');
  }
  const bad = names.filter((n) => !isHeaderName(n));
  if (bad.length) throw new BootstrapOptionsError(`authzHeaders: not a lower-case header name: ${bad.map((n) => JSON.stringify(n)).join(', ')} (${HEADER_NAME_RULE})`);
  return sentListFor(names).split(',');
}

function resolveMiddleboxTls(t: MiddleboxTlsOptions, endpoints: Endpoint[]): ResolvedMiddleboxTls {
  const nonEmpty = (name: string, v: string | undefined) => {
    if (v !== undefined && v.trim() === '') throw new BootstrapOptionsError(`middleboxTls.${name} must not be empty`);
    return v;
  };
  if (!t.caFile || t.caFile.trim() === '') throw new BootstrapOptionsError('middleboxTls.caFile is required: TLS that verifies no certificate protects nothing');
  if ((t.certFile === undefined) !== (t.keyFile === undefined)) throw new BootstrapOptionsError('middleboxTls.certFile and keyFile go together');
  const hosts = endpoints.flatMap((e) => (e.kind === 'unix' ? [] : [e.address]));
  const names = [...new Set(t.subjectAltNames ?? hosts)];
  for (const n of names) if (!n || /\s/.test(n)) throw new BootstrapOptionsError(`middleboxTls.subjectAltNames: ${JSON.stringify(n)} is not a name`);
  const sni = nonEmpty('sni', t.sni) ?? endpoints.find((e): e is Extract<Endpoint, { kind: 'dns' }> => e.kind === 'dns')?.address;
  const watchedDirectory = nonEmpty('watchedDirectory', t.watchedDirectory)?.replace(/\/+$/, '');
  if (watchedDirectory !== undefined) {
    if (!isAbsolute(watchedDirectory)) throw new BootstrapOptionsError(`middleboxTls.watchedDirectory must be an absolute path, got ${JSON.stringify(t.watchedDirectory)}`);
    for (const [name, file] of [['caFile', t.caFile], ['certFile', t.certFile], ['keyFile', t.keyFile]] as const) {
      if (file !== undefined && dirname(file) !== watchedDirectory) throw new BootstrapOptionsError(`middleboxTls.${name} must be a file in watchedDirectory ${watchedDirectory}, got ${JSON.stringify(file)}`);
    }
  }
  return {
    caFile: t.caFile,
    subjectAltNames: names.map((value) => ({ type: isIpLiteral(value) ? 'IP_ADDRESS' : 'DNS', value })),
    sni,
    certFile: nonEmpty('certFile', t.certFile),
    keyFile: nonEmpty('keyFile', t.keyFile),
    watchedDirectory,
  };
}

/**
 * The SDS resource files for middleboxTls.watchedDirectory, by file name (MIDDLEBOX_TLS_SDS_FILES):
 * each a discovery response with one TLS secret that names the certificate files. They must be in
 * the watched directory, replaced with it.
 */
export function middleboxTlsSdsFiles(t: MiddleboxTlsOptions): Record<string, string> {
  const r = resolveMiddleboxTls(t, []);
  if (!r.watchedDirectory) throw new BootstrapOptionsError('middleboxTls.watchedDirectory is not set: the certificate files are read directly, no SDS files are needed');
  const file = (secret: Config) => stringify({ resources: [{ '@type': TYPES.tlsSecret, ...secret }] }, { lineWidth: 0 });
  const files: Record<string, string> = {
    [MIDDLEBOX_TLS_SDS_FILES.ca]: file({ name: SDS_SECRETS.ca, validation_context: { trusted_ca: { filename: r.caFile } } }),
  };
  if (r.certFile && r.keyFile) {
    files[MIDDLEBOX_TLS_SDS_FILES.clientCert] = file({
      name: SDS_SECRETS.clientCert,
      tls_certificate: { certificate_chain: { filename: r.certFile }, private_key: { filename: r.keyFile } },
    });
  }
  return files;
}

function isIpLiteral(text: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(text) || text.includes(':');
}

function resolveLocalRateLimit(l: LocalRateLimitOptions): LocalRateLimitOptions {
  const fillIntervalMs = positiveInteger('localRateLimit.fillIntervalMs', l.fillIntervalMs);
  if (fillIntervalMs < 50) throw new BootstrapOptionsError(`localRateLimit.fillIntervalMs must be at least 50, got ${fillIntervalMs}`);
  return {
    maxTokens: positiveInteger('localRateLimit.maxTokens', l.maxTokens),
    tokensPerFill: positiveInteger('localRateLimit.tokensPerFill', l.tokensPerFill),
    fillIntervalMs,
  };
}

/** Parses "host:port", "[v6]:port" or "unix:/path" (a host: a DNS name or an IPv4 address). */
export function parseEndpoint(text: string): Endpoint {
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (!path.startsWith('/')) throw new BootstrapOptionsError(`unix endpoint needs an absolute path: ${text}`);
    return { kind: 'unix', path };
  }
  // A DNS name may end in a dot (fully qualified: no search-path lookups).
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\.?)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) {
    throw new BootstrapOptionsError(`middlebox endpoint must be host:port, [v6]:port or unix:/path, got "${text}"`);
  }
  if (m[1] !== undefined) return { kind: 'ip', address: m[1], port };
  const host = m[2]!;
  return { kind: /^\d{1,3}(\.\d{1,3}){3}$/.test(host) ? 'ip' : 'dns', address: host, port };
}

// ---- listeners ----------------------------------------------------------------------------------
// One function per listener; a new listener (e.g. outbound) is one more entry here.

function listeners(o: ResolvedOptions): Config[] {
  return [
    o.inboundHttp && inboundHttpListener(o, o.inboundHttp),
    o.inboundTcp && inboundTcpListener(o, o.inboundTcp),
    o.outbound && outboundListener(o, o.outbound),
    o.appProbes && appProbesListener(o.appProbes),
  ].filter((l): l is Config => Boolean(l));
}

/** The kubelet's rewritten app probes: exact paths to the app, no middlebox, anything else 404. */
function appProbesListener(p: AppProbesOptions): Config {
  return {
    name: 'app_probes',
    address: socketAddress(p.address, p.port),
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': TYPES.httpConnectionManager,
              stat_prefix: 'app_probes',
              route_config: {
                name: 'app_probes',
                virtual_hosts: [
                  {
                    name: 'app_probes',
                    domains: ['*'],
                    routes: p.routes.map((r) => ({
                      match: { path: r.path },
                      // With an exact path match the whole path is swapped for the app's own.
                      route: { cluster: `${CLUSTERS.appProbePrefix}${r.appPort}`, prefix_rewrite: r.appPath },
                      // The kubelet follows a redirect to the same host, which would be this
                      // listener, where only the probe paths are routed (404). Without a Location
                      // it takes the 3xx as it is: a success, as an off-host redirect is.
                      response_headers_to_remove: ['location'],
                    })),
                  },
                ],
              },
              http_filters: [routerFilter()],
            },
          },
        ],
      },
    ],
  };
}

/**
 * The connection's original destination (the app's port, before the capture's REDIRECT to this
 * listener) restored as its local address, so that the middlebox is asked about the port the
 * client dialled (firewall `ports`), not the listener's. (A connection made to the listener
 * directly keeps the listener's address.) Nothing is handed to another listener: that would take
 * use_original_dst. The outbound listener has it too, for where its connections were going.
 */
const RESTORE_ORIGINAL_DST = { name: 'envoy.filters.listener.original_dst', typed_config: { '@type': TYPES.originalDstListener } };

function inboundHttpListener(o: ResolvedOptions, target: ListenerTarget): Config {
  return {
    name: 'inbound_http',
    address: socketAddress(target.address, target.port),
    listener_filters: [RESTORE_ORIGINAL_DST],
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': TYPES.httpConnectionManager,
              stat_prefix: 'inbound_http',
              ...(o.accessLog ? { access_log: [inboundAccessLog(o.accessLog, o.inboundFilter, o.middleboxHttp !== undefined)] } : {}),
              // The middlebox decides on the real client address: take it from the connection
              // and append it to x-forwarded-for rather than trusting what the client sent.
              use_remote_address: true,
              skip_xff_append: false,
              // Lets the middlebox's decision logs be joined with Envoy's access logs.
              generate_request_id: true,
              // Path rules must see the path the app will see: "/a/../admin", "//admin" and
              // "/%2Fadmin" are made canonical before the middlebox is asked, so that they cannot
              // slip past a rule on "/admin/*".
              normalize_path: true,
              merge_slashes: true,
              path_with_escaped_slashes_action: 'UNESCAPE_AND_REDIRECT',
              route_config: {
                name: 'inbound_http',
                virtual_hosts: [
                  {
                    name: 'app',
                    domains: ['*'],
                    routes: [{ match: { prefix: '/' }, route: { cluster: CLUSTERS.app } }],
                  },
                ],
              },
              // Order matters: the middlebox decides before the router forwards anything. Envoy's
              // local rate limit, when configured, comes first so that a flood it sheds never
              // costs a middlebox decision.
              http_filters: [
                o.localRateLimit && httpLocalRateLimitFilter(o.localRateLimit),
                // The middlebox overwrites the headers it vouches for on every request it answers;
                // with failure_mode_allow a request it could not be asked about would keep a
                // client's copies, and the app could not tell them apart.
                o.extAuthz && o.failureModeAllow && dropHeadersFilter([DECISION_HEADER, SHADOW_DENY_HEADER]),
                o.extAuthz && o.inboundFilter !== 'ext_proc' && httpExtAuthzFilter(o),
                o.extAuthz && o.inboundFilter !== 'ext_authz' && httpExtProcFilter(o, o.inboundFilter === 'ext_authz+ext_proc', true),
                routerFilter(),
              ].filter((f): f is Config => Boolean(f)),
            },
          },
        ],
      },
    ],
  };
}

/**
 * tcp_proxy to `cluster`. With `onData`, it connects only once the client's first bytes have
 * passed the filters before it (network ext_authz asks on data, not on accept) instead of as the
 * client connects (Envoy's default), holding up to 64 KiB that arrives meanwhile.
 */
function tcpProxyFilter(statPrefix: string, cluster: string, onData: boolean): Config {
  return {
    name: 'envoy.filters.network.tcp_proxy',
    typed_config: {
      '@type': TYPES.tcpProxy,
      stat_prefix: statPrefix,
      cluster,
      ...(onData ? { upstream_connect_mode: 'ON_DOWNSTREAM_DATA', max_early_data_bytes: 65536 } : {}),
    },
  };
}

function inboundTcpListener(o: ResolvedOptions, target: ListenerTarget): Config {
  return {
    name: 'inbound_tcp',
    address: socketAddress(target.address, target.port),
    listener_filters: [RESTORE_ORIGINAL_DST],
    filter_chains: [
      {
        filters: [
          o.extAuthz && networkExtAuthzFilter(o),
          tcpProxyFilter('inbound_tcp', CLUSTERS.appTcp, o.inboundTcpConnect === 'on-data'),
        ].filter((f): f is Config => Boolean(f)),
      },
    ],
  };
}

/**
 * The app's own requests, captured by the init container's iptables rules (or sent here directly).
 * The middlebox picks the destination; without a NAT rule the request goes where it was headed
 * (the connection's original destination).
 */
/**
 * One JSON line per inbound request. `decision` joins it with the middlebox's decision log: the
 * ext_authz filter's dynamic metadata (set on allow and deny), or with ext_proc the decision header
 * the middlebox adds to the request (allowed requests) or to its own answer (denied ones).
 */
function inboundAccessLog(path: string, filter: InboundFilter, overHttp: boolean): Config {
  const meta = (key: string) => `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:${key})%`;
  const decision =
    filter === 'ext_proc'
      ? { decision: '%REQ(X-MIDDLEBOX-DECISION)%', denied_decision: '%RESP(X-MIDDLEBOX-DECISION)%' }
      : overHttp
        ? // http_service answers carry the id in a header, which the filter turns into metadata.
          { decision: meta(DECISION_HEADER) }
        : { decision: meta('decision_id'), verdict: meta('verdict'), reason: meta('reason'), rule: meta('rule') };
  return {
    name: 'envoy.access_loggers.file',
    typed_config: {
      '@type': TYPES.fileAccessLog,
      path,
      log_format: {
        json_format: {
          start_time: '%START_TIME%',
          method: '%REQ(:METHOD)%',
          path: '%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%',
          status: '%RESPONSE_CODE%',
          response_flags: '%RESPONSE_FLAGS%',
          duration_ms: '%DURATION%',
          client: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%',
          request_id: '%REQ(X-REQUEST-ID)%',
          ...decision,
        },
      },
    },
  };
}

/**
 * The app's outbound connections, redirected here by the capture. Plain HTTP (HTTP/1.x, or HTTP/2
 * with prior knowledge) goes through ext_proc: the firewall, the rate limits and NAT, per request.
 * Anything else (TLS, a database's protocol) is asked about as a connection (network ext_authz:
 * the firewall's rules on addresses and ports, the rate limits) and, allowed, goes on unchanged to
 * where it was going: the capture takes every outbound port, and a listener that spoke only HTTP
 * would break the rest. The inspector waits for the client's first bytes as long as they take (as
 * Istio's default): a timeout would send an HTTP connection that is slow to start past its
 * per-request rules. So a protocol where the server speaks first waits forever: exclude its port.
 */
function outboundListener(o: ResolvedOptions, target: { address: string; port: number }): Config {
  return {
    name: 'outbound_http',
    address: socketAddress(target.address, target.port),
    listener_filters: [
      RESTORE_ORIGINAL_DST,
      { name: 'envoy.filters.listener.http_inspector', typed_config: { '@type': TYPES.httpInspector } },
    ],
    // 0: no timeout (Envoy's default is 15 s, after which the connection would be closed).
    listener_filters_timeout: '0s',
    default_filter_chain: {
      name: 'outbound_tcp',
      filters: [
        networkExtAuthzFilter(o, 'outbound_tcp'),
        // Only client-first protocols get here (the inspector waited for the client's bytes), so it
        // connects only once they pass ext_authz: a denied destination never sees the connection.
        tcpProxyFilter('outbound_tcp', CLUSTERS.outbound, true),
      ],
    },
    filter_chains: [
      {
        name: 'outbound_http',
        filter_chain_match: { application_protocols: ['http/1.0', 'http/1.1', 'h2c'] },
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': TYPES.httpConnectionManager,
              stat_prefix: 'outbound_http',
              generate_request_id: true,
              normalize_path: true,
              merge_slashes: true,
              route_config: {
                name: 'outbound_http',
                virtual_hosts: [
                  { name: 'outbound', domains: ['*'], routes: [{ match: { prefix: '/' }, route: { cluster: CLUSTERS.outbound } }] },
                ],
              },
              // The destination header steers the ORIGINAL_DST cluster: only NAT may set it. The
              // middlebox removes a client's copy in its answer, but with failure_mode_allow a
              // request ext_proc could not ask about would keep it, and the app's client could
              // send itself anywhere. So it goes before ext_proc, always.
              http_filters: [dropHeadersFilter([DESTINATION_HEADER]), httpExtProcFilter(o), routerFilter()],
            },
          },
        ],
      },
    ],
  };
}

/** Removes request headers a client must not hand on (Envoy's header_mutation filter). */
function dropHeadersFilter(names: readonly string[]): Config {
  return {
    name: 'envoy.filters.http.header_mutation',
    typed_config: { '@type': TYPES.headerMutation, mutations: { request_mutations: names.map((remove) => ({ remove })) } },
  };
}

// ---- filters ------------------------------------------------------------------------------------

/**
 * ext_proc to the middlebox. `afterAuthz`: ext_authz runs before it on the same listener and has
 * decided the firewall and the rate limits, which the stream is told (AFTER_EXT_AUTHZ_HEADER) so
 * that it only translates and charges no limit a second time. `inbound`: the inbound listener,
 * whose route goes to the app, so NAT does not apply (INBOUND_LISTENER_HEADER).
 */
function httpExtProcFilter(o: ResolvedOptions, afterAuthz = false, inbound = false): Config {
  const metadata = [
    ...(afterAuthz ? [{ key: AFTER_EXT_AUTHZ_HEADER, value: 'true' }] : []),
    ...(inbound ? [{ key: INBOUND_LISTENER_HEADER, value: 'true' }] : []),
  ];
  return {
    name: 'envoy.filters.http.ext_proc',
    typed_config: {
      '@type': TYPES.httpExtProc,
      grpc_service: metadata.length > 0 ? { ...middleboxGrpcService(o), initial_metadata: metadata } : middleboxGrpcService(o),
      failure_mode_allow: o.failureModeAllow,
      message_timeout: duration(o.timeoutMs),
      // Headers both ways (decide and translate); bodies stream past untouched.
      processing_mode: {
        request_header_mode: 'SEND',
        response_header_mode: 'SEND',
        request_body_mode: 'NONE',
        response_body_mode: 'NONE',
        request_trailer_mode: 'SKIP',
        response_trailer_mode: 'SKIP',
      },
      // Lets the middlebox skip the response round trip when nothing needs translating back.
      allow_mode_override: true,
      request_attributes: REQUEST_ATTRIBUTES,
      // NAT writes the destination header and may rewrite :authority; Envoy refuses both unless allowed.
      mutation_rules: { allow_all_routing: true, allow_envoy: true },
    },
  };
}

function httpExtAuthzFilter(o: ResolvedOptions): Config {
  if (o.middleboxHttp) return httpServiceExtAuthzFilter(o);
  return {
    name: 'envoy.filters.http.ext_authz',
    typed_config: {
      '@type': TYPES.httpExtAuthz,
      grpc_service: o.authzHeaders
        ? { ...middleboxGrpcService(o), initial_metadata: [{ key: SENT_HEADERS_HEADER, value: o.authzHeaders.join(',') }] }
        : middleboxGrpcService(o),
      transport_api_version: 'V3',
      failure_mode_allow: o.failureModeAllow,
      status_on_error: { code: o.statusOnError },
      // SPIFFE principals in firewall rules come from the peer certificate.
      include_peer_certificate: true,
      ...(o.authzHeaders ? { allowed_headers: sentHeaderMatchers(o.authzHeaders) } : {}),
      // No with_request_body: decisions use headers only, so requests stream without buffering.
    },
  };
}

/**
 * ext_authz over HTTP/1.1 (src/grpc/authz/http.ts is the other side): the call carries the client
 * request's method, path and headers, and one header with the connection's addresses and peer
 * certificate; the answer's headers are copied upstream, to the client's response, or to the
 * denial, each by its own list.
 */
function httpServiceExtAuthzFilter(o: ResolvedOptions): Config {
  const exact = (names: readonly string[]) => names.map((n) => ({ exact: n }));
  const prefixes = (names: readonly string[]) => names.map((n) => ({ prefix: n }));
  return {
    name: 'envoy.filters.http.ext_authz',
    typed_config: {
      '@type': TYPES.httpExtAuthz,
      http_service: {
        server_uri: { uri: `http://${CLUSTERS.middleboxHttp}`, cluster: CLUSTERS.middleboxHttp, timeout: duration(o.timeoutMs) },
        path_prefix: HTTP_AUTHZ_PATH_PREFIX,
        // As over gRPC: a call that never reached a replica goes to another. Not on 5xx, which
        // are the middlebox's own answers (503 state_unavailable).
        retry_policy: middleboxRetryPolicy('connect-failure,refused-stream,reset'),
        // The list of headers sent rides in the peer header, which Envoy always sets: a client
        // cannot forge it (and with it a 503 that --failure-mode-allow would let through).
        authorization_request: { headers_to_add: [{ key: HTTP_AUTHZ_PEER_HEADER, value: httpAuthzPeerValue(o.authzHeaders && httpSentList(o.authzHeaders)) }] },
        authorization_response: {
          allowed_upstream_headers: { patterns: prefixes([HTTP_AUTHZ_UPSTREAM_HEADER_PREFIX]) },
          allowed_client_headers_on_success: { patterns: prefixes(HTTP_AUTHZ_CLIENT_HEADER_PREFIXES) },
          allowed_client_headers: { patterns: [...exact([...HTTP_AUTHZ_DENIAL_HEADERS, DECISION_HEADER]), ...prefixes(HTTP_AUTHZ_CLIENT_HEADER_PREFIXES)] },
          dynamic_metadata_from_headers: { patterns: exact([DECISION_HEADER]) },
        },
      },
      // Every header of the client's request, as the gRPC Check carries them (rules may name any),
      // or only those listed (Envoy adds host, method, path, content-length and authorization itself).
      allowed_headers: o.authzHeaders
        ? sentHeaderMatchers(o.authzHeaders.filter((n) => !n.startsWith(':')))
        : { patterns: [{ safe_regex: { regex: '.*' } }] },
      failure_mode_allow: o.failureModeAllow,
      status_on_error: { code: o.statusOnError },
    },
  };
}

/**
 * What the replica is told an HTTP call carries: the listed headers less the pseudo-headers, which
 * the call has no room for, but with the three it rebuilds from the call's request line and Host.
 * A rule on another pseudo-header (:scheme) is then refused, not decided without it.
 */
function httpSentList(names: readonly string[]): string {
  return names.filter((n) => !n.startsWith(':') || ALWAYS_SENT.includes(n)).join(',');
}

/**
 * The listed headers, and every x-middlebox-* one: the replica must see those a client sent to have
 * Envoy remove them before the request goes upstream.
 */
function sentHeaderMatchers(names: readonly string[]): Config {
  return { patterns: [...names.map((n) => ({ exact: n })), { prefix: ALWAYS_SENT_PREFIX }] };
}

function networkExtAuthzFilter(o: ResolvedOptions, statPrefix = 'inbound_tcp'): Config {
  return {
    name: 'envoy.filters.network.ext_authz',
    typed_config: {
      '@type': TYPES.networkExtAuthz,
      stat_prefix: statPrefix,
      grpc_service: middleboxGrpcService(o),
      transport_api_version: 'V3',
      failure_mode_allow: o.failureModeAllow,
      include_peer_certificate: true,
    },
  };
}

function httpLocalRateLimitFilter(l: LocalRateLimitOptions): Config {
  // Enabled and enforced for every request; without a runtime_key nothing outside the bootstrap
  // can turn it down.
  const always = () => ({ default_value: { numerator: 100, denominator: 'HUNDRED' } });
  return {
    name: 'envoy.filters.http.local_ratelimit',
    typed_config: {
      '@type': TYPES.httpLocalRateLimit,
      stat_prefix: 'inbound_http_local_rate_limit',
      token_bucket: {
        max_tokens: l.maxTokens,
        tokens_per_fill: l.tokensPerFill,
        fill_interval: duration(l.fillIntervalMs),
      },
      filter_enabled: always(),
      filter_enforced: always(),
    },
  };
}

function routerFilter(): Config {
  return { name: 'envoy.filters.http.router', typed_config: { '@type': TYPES.router } };
}

/**
 * A call that could not reach a replica (refused, reset, the replica gone) is sent once more, to
 * another replica, within the same deadline: a replica that dies takes no decision with it.
 */
function middleboxGrpcService(o: ResolvedOptions): Config {
  return {
    envoy_grpc: { cluster_name: CLUSTERS.middlebox },
    timeout: duration(o.timeoutMs),
    retry_policy: middleboxRetryPolicy('connect-failure,refused-stream,reset,unavailable'),
  };
}

function middleboxRetryPolicy(retryOn: string): Config {
  return {
    retry_on: retryOn,
    num_retries: 2,
    retry_host_predicate: [{ name: 'envoy.retry_host_predicates.previous_hosts', typed_config: { '@type': TYPES.previousHosts } }],
    host_selection_retry_max_attempts: 3,
  };
}

// ---- clusters -----------------------------------------------------------------------------------

function clusters(o: ResolvedOptions): Config[] {
  return [
    (o.extAuthz || o.outbound) && middleboxCluster(o.middlebox, o.middleboxTls),
    o.extAuthz && o.inboundHttp && o.inboundFilter !== 'ext_proc' && o.middleboxHttp && middleboxHttpCluster(o.middleboxHttp, o.middleboxTls),
    o.outbound && outboundCluster(o.upstreamIdleTimeoutMs),
    o.inboundHttp && staticCluster(CLUSTERS.app, o.inboundHttp.appAddress, o.inboundHttp.appPort, o.upstreamIdleTimeoutMs),
    o.inboundTcp && staticCluster(CLUSTERS.appTcp, o.inboundTcp.appAddress, o.inboundTcp.appPort),
    ...[...new Set(o.appProbes?.routes.map((r) => r.appPort) ?? [])].map((port) => staticCluster(`${CLUSTERS.appProbePrefix}${port}`, '127.0.0.1', port, o.upstreamIdleTimeoutMs)),
  ].filter((c): c is Config => Boolean(c));
}

/**
 * Connects to whatever x-envoy-original-dst-host names, else the connection's original destination.
 * Its HTTP connections (the outbound_http chain) close after `idleMs` idle; the outbound_tcp chain's
 * tcp_proxy connections are not HTTP and keep theirs.
 */
function outboundCluster(idleMs: number): Config {
  return {
    name: CLUSTERS.outbound,
    type: 'ORIGINAL_DST',
    lb_policy: 'CLUSTER_PROVIDED',
    connect_timeout: '1s',
    original_dst_lb_config: { use_http_header: true, http_header_name: DESTINATION_HEADER },
    ...httpIdleOptions(idleMs),
  };
}

function middleboxCluster(endpoints: Endpoint[], tls?: ResolvedMiddleboxTls): Config {
  return replicaCluster({
    name: CLUSTERS.middlebox,
    endpoints,
    // gRPC needs HTTP/2 to the upstream. Envoy's ext_proc filter resets its gRPC stream at the end
    // of every request (a known Envoy behaviour), and HTTP/2 servers guard against rapid resets:
    // Node's allows a burst of 1000, then 33 a second, before it sends GOAWAY and refuses the
    // streams in flight. Retiring a connection after 900 requests keeps every connection inside
    // the burst; a new HTTP/2 connection every 900 requests costs next to nothing.
    protocolOptions: {
      common_http_protocol_options: { max_requests_per_connection: MAX_REQUESTS_PER_MIDDLEBOX_CONNECTION },
      explicit_http_config: { http2_protocol_options: {} },
    },
    transportSocket: tls && middleboxTransportSocket(tls, 'h2'),
    healthCheck: { grpc_health_check: { service_name: AUTHORIZATION_SERVICE } },
  });
}

/**
 * The replicas' HTTP ext_authz listeners: HTTP/1.1 with keep-alive, idle connections closed by
 * Envoy well before the server would (HTTP_AUTHZ_KEEP_ALIVE_MS), health from GET /healthz.
 */
function middleboxHttpCluster(endpoints: Endpoint[], tls?: ResolvedMiddleboxTls): Config {
  return replicaCluster({
    name: CLUSTERS.middleboxHttp,
    endpoints,
    protocolOptions: {
      common_http_protocol_options: { idle_timeout: duration(HTTP_AUTHZ_KEEP_ALIVE_MS / 2) },
      explicit_http_config: { http_protocol_options: {} },
    },
    transportSocket: tls && middleboxTransportSocket(tls, 'http/1.1'),
    healthCheck: { http_health_check: { path: HTTP_AUTHZ_HEALTH_PATH } },
    // A 503 from the middlebox is its answer (state_unavailable, policy_not_loaded), not a broken
    // replica: five in a row must not eject it, as Envoy's consecutive_5xx default would.
    outlierOverrides: { enforcing_consecutive_5xx: 0 },
  });
}

/** What both replica clusters share: discovery, load balancing, retry budget, outlier detection, health check timing. */
function replicaCluster(c: {
  name: string;
  endpoints: Endpoint[];
  protocolOptions: Config;
  transportSocket: Config | undefined;
  healthCheck: Config;
  outlierOverrides?: Config;
}): Config {
  return {
    name: c.name,
    type: middleboxDiscoveryType(c.endpoints),
    connect_timeout: '0.25s',
    load_assignment: {
      cluster_name: c.name,
      endpoints: [{ lb_endpoints: c.endpoints.map((e) => ({ endpoint: { address: endpointAddress(e) } })) }],
    },
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': { '@type': TYPES.httpProtocolOptions, ...c.protocolOptions },
    },
    ...(c.transportSocket ? { transport_socket: c.transportSocket } : {}),
    // A dead or draining replica leaves the rotation within about two seconds (two failed checks a
    // second apart) and comes back after one good check. no_traffic_interval keeps checking that
    // often before the first request too, instead of Envoy's default of once a minute.
    // Never "panic" (Envoy's default spreads calls over every listed replica, dead ones included,
    // once fewer than half are healthy): the healthy ones take all calls, and with none healthy
    // the filter fails as configured (closed by default).
    common_lb_config: { healthy_panic_threshold: { value: 0 } },
    // Retries (above) may be many at once when a busy replica dies: Envoy's default allows 3 in
    // flight per cluster; a budget scales with the traffic instead.
    circuit_breakers: { thresholds: [{ priority: 'DEFAULT', retry_budget: { budget_percent: { value: 25 }, min_retry_concurrency: 32 } }] },
    // A replica whose connections fail is taken out at once, ahead of its health checks.
    outlier_detection: {
      split_external_local_origin_errors: true,
      consecutive_local_origin_failure: 2,
      consecutive_gateway_failure: 3,
      interval: '1s',
      base_ejection_time: '5s',
      max_ejection_percent: 100,
      ...c.outlierOverrides,
    },
    health_checks: [
      {
        timeout: '0.5s',
        interval: '1s',
        no_traffic_interval: '1s',
        unhealthy_threshold: 2,
        healthy_threshold: 1,
        ...c.healthCheck,
      },
    ],
  };
}

/**
 * TLS to the replicas (gRPC calls and health checks alike): their certificate must chain to the CA
 * and carry one of the expected names; with a client certificate, Envoy proves itself too (mTLS).
 * ALPN says h2 for gRPC, which a gRPC server over TLS insists on, and http/1.1 for HTTP ext_authz.
 */
function middleboxTransportSocket(t: ResolvedMiddleboxTls, alpn: 'h2' | 'http/1.1'): Config {
  const names =
    t.subjectAltNames.length > 0 ? { match_typed_subject_alt_names: t.subjectAltNames.map((n) => ({ san_type: n.type, matcher: { exact: n.value } })) } : {};
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': TYPES.upstreamTlsContext,
      ...(t.sni ? { sni: t.sni } : {}),
      common_tls_context: { alpn_protocols: [alpn], ...(t.watchedDirectory ? watchedTlsFiles(t, t.watchedDirectory, names) : tlsFiles(t, names)) },
    },
  };
}

/** The certificate files, read once at start. */
function tlsFiles(t: ResolvedMiddleboxTls, names: Config): Config {
  return {
    ...(t.certFile && t.keyFile ? { tls_certificates: [{ certificate_chain: { filename: t.certFile }, private_key: { filename: t.keyFile } }] } : {}),
    validation_context: { trusted_ca: { filename: t.caFile }, ...names },
  };
}

/**
 * The certificate files through file-based SDS: Envoy reloads a resource file, and the certificate
 * files it names, whenever something is moved into the watched directory (the kubelet's swap).
 * The names to match stay in the bootstrap, combined with the CA that SDS brings.
 */
function watchedTlsFiles(t: ResolvedMiddleboxTls, dir: string, names: Config): Config {
  const sds = (name: string, file: string) => ({
    name,
    sds_config: { path_config_source: { path: `${dir}/${file}`, watched_directory: { path: dir } }, resource_api_version: 'V3' },
  });
  return {
    ...(t.certFile && t.keyFile ? { tls_certificate_sds_secret_configs: [sds(SDS_SECRETS.clientCert, MIDDLEBOX_TLS_SDS_FILES.clientCert)] } : {}),
    combined_validation_context: {
      default_validation_context: names,
      validation_context_sds_secret_config: sds(SDS_SECRETS.ca, MIDDLEBOX_TLS_SDS_FILES.ca),
    },
  };
}

/**
 * STATIC for IPs and unix sockets, STRICT_DNS as soon as one replica is named by host name
 * (STRICT_DNS resolves IP literals to themselves, but cannot hold a unix socket).
 */
function middleboxDiscoveryType(endpoints: Endpoint[]): 'STATIC' | 'STRICT_DNS' {
  if (!endpoints.some((e) => e.kind === 'dns')) return 'STATIC';
  if (endpoints.some((e) => e.kind === 'unix')) {
    throw new BootstrapOptionsError('middlebox endpoints cannot mix host names and unix sockets in one cluster');
  }
  return 'STRICT_DNS';
}

/**
 * One fixed upstream. With `httpIdleMs`, an HTTP/1.1 one whose kept-alive connections Envoy closes
 * after that long idle (see upstreamIdleTimeoutMs); without, a TCP one.
 */
function staticCluster(name: string, address: string, port: number, httpIdleMs?: number): Config {
  return {
    name,
    type: 'STATIC',
    connect_timeout: '1s',
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: socketAddress(address, port) } }] }],
    },
    ...(httpIdleMs === undefined ? {} : httpIdleOptions(httpIdleMs)),
  };
}

/** HTTP/1.1 (Envoy's default, made explicit as the options require) with idle connections closed after `idleMs`. */
function httpIdleOptions(idleMs: number): Config {
  return {
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
        '@type': TYPES.httpProtocolOptions,
        common_http_protocol_options: { idle_timeout: duration(idleMs) },
        explicit_http_config: { http_protocol_options: {} },
      },
    },
  };
}

// ---- process-wide ---------------------------------------------------------------------------------

function overloadManager(o: ResolvedOptions): Config {
  return {
    resource_monitors: [
      {
        name: 'envoy.resource_monitors.global_downstream_max_connections',
        typed_config: {
          '@type': TYPES.downstreamConnections,
          max_active_downstream_connections: o.maxDownstreamConnections,
        },
      },
    ],
  };
}

// ---- small pieces -------------------------------------------------------------------------------

function endpointAddress(e: Endpoint): Config {
  return e.kind === 'unix' ? { pipe: { path: e.path } } : socketAddress(e.address, e.port);
}

function socketAddress(address: string, port: number): Config {
  return { socket_address: { address, port_value: port } };
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isInteger(value) || value <= 0) throw new BootstrapOptionsError(`${name} must be a positive integer, got ${value}`);
  return value;
}

/** Milliseconds as a protobuf Duration string ("0.25s"). */
function duration(ms: number): string {
  return `${ms / 1000}s`;
}
