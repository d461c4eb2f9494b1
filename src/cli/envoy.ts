// `middlebox envoy bootstrap`: prints a sidecar's Envoy bootstrap (the webhook and tests use the same renderer).
import { isIP } from 'node:net';
import { BOOTSTRAP_DEFAULTS, BootstrapOptionsError, INBOUND_FILTERS, renderBootstrapYaml, TCP_CONNECT_MODES, type BootstrapOptions, type InboundFilter, type TcpConnect } from '../envoy/bootstrap';
import { notHeaderNames, readHeaderList } from '../policy/headers';
import { splitList } from '../settings';
import { intOpt, runGroup, stringOpt, UsageError, type Command } from './command';

const d = BOOTSTRAP_DEFAULTS;

const bootstrap: Command = {
  name: 'envoy bootstrap',
  summary: 'Print a complete Envoy bootstrap (YAML) for a sidecar that asks the middlebox before traffic reaches the app.',
  usage: 'middlebox envoy bootstrap [--middlebox ADDRS] [--middlebox-http ADDRS] [--inbound-port N] [--app-port N] [--tcp-port N --tcp-app-port N] ...',
  help: [
    `  --middlebox ADDRS        comma-separated replicas: host:port, [v6]:port or unix:/path (default ${d.middlebox.join(',')})`,
    '  --middlebox-http ADDRS   the replicas\' HTTP ext_authz listeners (serve --http-authz-listen), same forms:',
    '                           the HTTP ext_authz filter asks them over HTTP/1.1 instead of gRPC (same',
    '                           decisions, a quarter to a third less CPU per request); ext_proc and the TCP',
    '                           listener still use --middlebox (default: gRPC only)',
    '  --authz-headers NAMES    send the middlebox only these request headers (comma-separated; "" for none),',
    '                           over gRPC or HTTP: Envoy passes more requests. Give it what',
    '                           `middlebox policy headers` prints; a request that reaches an enforced rule',
    '                           reading a header left out is refused (403 headers_not_sent). :authority,',
    '                           :method, :path, content-length, x-request-id and x-middlebox-* always go',
    '                           (default: every header)',
    `  --node-id ID             Envoy node id (default ${d.nodeId})`,
    `  --admin-port N           admin listener on ${d.adminAddress} (default ${d.adminPort})`,
    `  --inbound-address ADDR   address of the inbound listeners (default ${d.inboundHttp.address})`,
    `  --inbound-port N         inbound HTTP listener port (default ${d.inboundHttp.port})`,
    `  --app-port N             the app's HTTP port on ${d.inboundHttp.appAddress} (default ${d.inboundHttp.appPort})`,
    '  --no-http                render no HTTP listener',
    '  --inbound-filter NAME    ext_authz (default), ext_proc, or ext_authz+ext_proc: which filters ask the',
    '                           middlebox inbound (both: ext_authz decides; inbound ext_proc applies no NAT)',
    '  --outbound-port N        add an outbound listener on this port: HTTP through ext_proc (firewall, rate',
    '                           limits, NAT), other TCP through network ext_authz; then ORIGINAL_DST',
    '  --tcp-port N             add a TCP listener with the network ext_authz filter on this port',
    '  --tcp-app-port N         the app\'s TCP port the TCP listener forwards to (required with --tcp-port)',
    '  --tcp-connect MODE       when the TCP listener connects to the app: immediate (default, Envoy\'s own:',
    '                           as the client connects, so a server that speaks first works; the app sees',
    '                           a denied client connect and close) or on-data (once the client\'s first',
    '                           bytes are allowed: a denied client never reaches the app; a protocol where',
    '                           the server speaks first, MySQL or SMTP, never starts)',
    `  --timeout-ms N           deadline of one middlebox call (default ${d.timeoutMs})`,
    '  --upstream-idle-timeout-ms N',
    '                           close a kept-alive HTTP connection to the app, or to where the app\'s requests',
    `                           go (outbound listener), after this long idle, before the server does (default`,
    `                           ${d.upstreamIdleTimeoutMs}: below Node's 5 s, gunicorn's 2 s); a server that closes one as Envoy`,
    '                           sends on it fails that request with a 503',
    '  --failure-mode-allow     let traffic through when the middlebox cannot be asked (default: fail closed)',
    `  --status-on-error N      HTTP status when the middlebox cannot be asked (default ${d.statusOnError})`,
    '  --access-log PATH        a JSON access-log line per inbound HTTP request, with the middlebox\'s decision',
    '                           id, to this file (/dev/stdout in a pod); default none',
    '  --middlebox-ca FILE      TLS to the middlebox (replicas run with serve --tls-cert): the CA bundle that',
    '                           signed their certificates, as a path in Envoy\'s filesystem; default plaintext',
    '  --middlebox-san NAMES    comma-separated DNS names or IPs a replica\'s certificate must carry, any one',
    '                           (default the --middlebox hosts; "" for any certificate the CA signed)',
    '  --middlebox-sni NAME     TLS server name sent (default the first --middlebox host name)',
    '  --middlebox-cert FILE    mTLS (serve --tls-client-ca): the client certificate Envoy presents, with',
    '  --middlebox-key FILE     its private key (paths in Envoy\'s filesystem)',
  ],
  options: {
    middlebox: { type: 'string' },
    'middlebox-http': { type: 'string' },
    'authz-headers': { type: 'string' },
    'node-id': { type: 'string' },
    'admin-port': { type: 'string' },
    'inbound-address': { type: 'string' },
    'inbound-port': { type: 'string' },
    'app-port': { type: 'string' },
    'no-http': { type: 'boolean' },
    'inbound-filter': { type: 'string' },
    'outbound-port': { type: 'string' },
    'tcp-port': { type: 'string' },
    'tcp-app-port': { type: 'string' },
    'tcp-connect': { type: 'string' },
    'timeout-ms': { type: 'string' },
    'upstream-idle-timeout-ms': { type: 'string' },
    'failure-mode-allow': { type: 'boolean' },
    'status-on-error': { type: 'string' },
    'access-log': { type: 'string' },
    'middlebox-ca': { type: 'string' },
    'middlebox-san': { type: 'string' },
    'middlebox-sni': { type: 'string' },
    'middlebox-cert': { type: 'string' },
    'middlebox-key': { type: 'string' },
  },
  async run({ values }) {
    const options = bootstrapOptionsFromFlags(values);
    let yaml: string;
    try {
      yaml = renderBootstrapYaml(options);
    } catch (e) {
      // What the renderer refuses came from the flags: an endpoint that is not one, ...
      if (e instanceof BootstrapOptionsError) throw new UsageError(e.message);
      throw e;
    }
    process.stdout.write(yaml);
    return 0;
  },
};

export function bootstrapOptionsFromFlags(values: Record<string, unknown>): BootstrapOptions {
  const address = stringOpt(values, 'inbound-address') ?? d.inboundHttp.address;
  if (!isIP(address)) throw new UsageError(`--inbound-address must be an IP address (e.g. 0.0.0.0), got ${JSON.stringify(address)}`);
  const tcpPort = intOpt(values, 'tcp-port', 1, 65535);
  const tcpAppPort = intOpt(values, 'tcp-app-port', 1, 65535);
  if ((tcpPort === undefined) !== (tcpAppPort === undefined)) throw new UsageError('--tcp-port and --tcp-app-port go together');
  const tcpConnect = stringOpt(values, 'tcp-connect');
  if (tcpConnect !== undefined && !(TCP_CONNECT_MODES as readonly string[]).includes(tcpConnect)) {
    throw new UsageError(`--tcp-connect must be ${TCP_CONNECT_MODES.join(' or ')}, got ${JSON.stringify(tcpConnect)}`);
  }
  if (tcpConnect !== undefined && tcpPort === undefined) throw new UsageError('--tcp-connect is for the TCP listener: add --tcp-port and --tcp-app-port');
  const middlebox = stringOpt(values, 'middlebox');
  const middleboxHttp = stringOpt(values, 'middlebox-http');
  for (const [flag, list] of [['--middlebox', middlebox], ['--middlebox-http', middleboxHttp]] as const) {
    if (list !== undefined && splitList(list).length === 0) throw new UsageError(`${flag} needs at least one host:port, [v6]:port or unix:/path`);
  }
  if (middleboxHttp !== undefined && (values['no-http'] === true || stringOpt(values, 'inbound-filter') === 'ext_proc')) {
    throw new UsageError('--middlebox-http is for the inbound HTTP listener\'s ext_authz filter: not with --no-http or --inbound-filter ext_proc');
  }
  const inboundFilter = stringOpt(values, 'inbound-filter');
  if (inboundFilter !== undefined && !(INBOUND_FILTERS as readonly string[]).includes(inboundFilter)) {
    throw new UsageError(`--inbound-filter must be ${INBOUND_FILTERS.join(', ')}, got ${JSON.stringify(inboundFilter)}`);
  }
  const outboundPort = intOpt(values, 'outbound-port', 1, 65535);
  if (values['upstream-idle-timeout-ms'] !== undefined && values['no-http'] === true && outboundPort === undefined) {
    throw new UsageError('--upstream-idle-timeout-ms is for HTTP connections to the app or from it: not with --no-http and no --outbound-port');
  }
  if (values['no-http'] === true && tcpPort === undefined && outboundPort === undefined) {
    throw new UsageError('--no-http leaves the sidecar no listener: add --tcp-port and --tcp-app-port, or --outbound-port');
  }
  return {
    inboundFilter: inboundFilter as InboundFilter | undefined,
    outbound: outboundPort === undefined ? undefined : { address, port: outboundPort },
    nodeId: stringOpt(values, 'node-id'),
    adminPort: intOpt(values, 'admin-port', 1, 65535),
    inboundHttp: values['no-http']
      ? false
      : definedOnly({ address, port: intOpt(values, 'inbound-port', 1, 65535), appPort: intOpt(values, 'app-port', 1, 65535) }),
    inboundTcp: tcpPort && tcpAppPort ? { address, port: tcpPort, appAddress: d.inboundHttp.appAddress, appPort: tcpAppPort } : undefined,
    inboundTcpConnect: tcpConnect as TcpConnect | undefined,
    middlebox: middlebox !== undefined ? splitList(middlebox) : undefined,
    middleboxHttp: middleboxHttp !== undefined ? splitList(middleboxHttp) : undefined,
    authzHeaders: authzHeaders(values),
    timeoutMs: intOpt(values, 'timeout-ms', 1, 60_000),
    upstreamIdleTimeoutMs: intOpt(values, 'upstream-idle-timeout-ms', 1, 3_600_000),
    failureModeAllow: values['failure-mode-allow'] === true ? true : undefined,
    statusOnError: intOpt(values, 'status-on-error', 200, 599),
    accessLog: accessLog(values),
    middleboxTls: middleboxTls(values),
  };
}

/** --authz-headers: lower-cased; a name Envoy could not match is a usage error, not a silent miss. */
function authzHeaders(values: Record<string, unknown>): string[] | undefined {
  const text = stringOpt(values, 'authz-headers');
  if (text === undefined) return undefined;
  const { names, bad } = readHeaderList(text);
  if (bad.length) throw new UsageError(`--authz-headers: ${notHeaderNames(bad)}`);
  if (values['no-http'] === true || stringOpt(values, 'inbound-filter') === 'ext_proc') {
    throw new UsageError('--authz-headers is for the inbound HTTP listener\'s ext_authz filter: not with --no-http or --inbound-filter ext_proc (ext_proc always sends every header)');
  }
  return names;
}

/** --middlebox-ca and friends: TLS (and mTLS) from Envoy to the replicas. */
function middleboxTls(values: Record<string, unknown>): BootstrapOptions['middleboxTls'] {
  const caFile = stringOpt(values, 'middlebox-ca');
  const san = stringOpt(values, 'middlebox-san');
  const sni = stringOpt(values, 'middlebox-sni');
  const certFile = stringOpt(values, 'middlebox-cert');
  const keyFile = stringOpt(values, 'middlebox-key');
  if (caFile === undefined) {
    const given = [san !== undefined && '--middlebox-san', sni !== undefined && '--middlebox-sni', certFile !== undefined && '--middlebox-cert', keyFile !== undefined && '--middlebox-key'].filter(Boolean);
    if (given.length > 0) throw new UsageError(`${given.join(', ')} ${given.length === 1 ? 'needs' : 'need'} --middlebox-ca: TLS to the middlebox starts with the CA that signed its certificates`);
    return undefined;
  }
  if (caFile.trim() === '') throw new UsageError('--middlebox-ca needs a file path');
  if ((certFile === undefined) !== (keyFile === undefined)) throw new UsageError('--middlebox-cert and --middlebox-key go together');
  if (sni !== undefined && sni.trim() === '') throw new UsageError('--middlebox-sni needs a name');
  return { caFile, subjectAltNames: san === undefined ? undefined : splitList(san), sni, certFile, keyFile };
}

function accessLog(values: Record<string, unknown>): string | undefined {
  const path = stringOpt(values, 'access-log');
  if (path !== undefined && path.trim() === '') throw new UsageError('--access-log needs a file path, e.g. /dev/stdout');
  return path;
}

/** Flags not given must not override the renderer's defaults. */
function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export function envoyCommand(argv: string[]): Promise<number> {
  return runGroup('envoy', [bootstrap], argv);
}
