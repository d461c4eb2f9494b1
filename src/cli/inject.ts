// `middlebox inject -f FILE`: prints the objects of FILE with the middlebox sidecar injected into
// every pod that asks for it, offline (like `istioctl kube-inject`). `middlebox inject serve` runs
// the same core as a Kubernetes mutating admission webhook (src/inject/webhook.ts). Both read the
// injection settings through the same flags (injectFlags / injectSettings below).
import fs from 'node:fs';
import { parseAllDocuments, stringify } from 'yaml';
import { MiddleboxError } from '../errors';
import { parseEndpoint } from '../envoy/bootstrap';
import { INJECT_DEFAULTS, injectConfig, NAMESPACE_LABEL, NAMESPACE_LABEL_ENABLED, type InjectConfig } from '../inject/config';
import { InjectError } from '../inject/patch';
import {
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_WEBHOOK_DRAIN_MS,
  DEFAULT_WEBHOOK_SHUTDOWN_DELAY_MS,
  DEFAULT_WEBHOOK_LISTEN,
  parseHostPort,
  INJECT_PATH,
  startWebhook,
} from '../inject/webhook';
import { injectObject, TEMPLATE_KINDS } from '../inject/workloads';
import { createLogger } from '../observability/logger';
import { splitList } from '../settings';
import { intOpt, logLevelOpt, MAX_TIMER_MS, runCommand, stringOpt, UsageError, type Command, type Options } from './command';

const d = INJECT_DEFAULTS;
const ENABLED_LABEL = `${NAMESPACE_LABEL}=${NAMESPACE_LABEL_ENABLED}`;

// ---- the injection settings, shared by `inject` and `inject serve` ------------------------------

const injectOptions: Options = {
  'namespace-labels': { type: 'string' },
  middlebox: { type: 'string' },
  'middlebox-http': { type: 'string' },
  'middlebox-tls-secret': { type: 'string' },
  'middlebox-mtls': { type: 'boolean' },
  'envoy-image': { type: 'string' },
  'init-image': { type: 'string' },
};

function injectHelp(namespaceLabels: string[]): string[] {
  return [
    ...namespaceLabels,
    `  --middlebox HOST:PORT      the middlebox Service Envoy asks (default ${d.middleboxAddress})`,
    '  --middlebox-http HOST:PORT the Service\'s HTTP ext_authz port (replicas run with --http-authz-listen):',
    '                             Envoy\'s HTTP ext_authz asks it over HTTP/1.1 instead of gRPC (default: gRPC)',
    '  --middlebox-tls-secret NAME TLS to the middlebox: a Secret in each injected pod\'s namespace with ca.crt,',
    '                             the CA of the replicas\' certificates (and tls.crt, tls.key with --middlebox-mtls);',
    '                             mounted into Envoy only, renewed files taken without a restart (default: plaintext)',
    '  --middlebox-mtls           Envoy presents the Secret\'s tls.crt and tls.key (replicas run with --tls-client-ca)',
    `  --envoy-image IMAGE        (default ${d.envoyImage})`,
    `  --init-image IMAGE         image with sh, iptables and ip6tables for the init container (default ${d.initImage})`,
  ];
}

export interface InjectSettings {
  config: InjectConfig;
  namespaceLabels: Record<string, string>;
}

/** The injection config and namespace labels from the shared flags; `defaultLabels` when --namespace-labels is absent. */
export function injectSettings(values: Record<string, unknown>, defaultLabels = ''): InjectSettings {
  const namespaceLabels = parseLabels(stringOpt(values, 'namespace-labels') ?? defaultLabels);
  const middleboxAddress = stringOpt(values, 'middlebox');
  const middleboxHttpAddress = stringOpt(values, 'middlebox-http');
  for (const [flag, address] of [['--middlebox', middleboxAddress], ['--middlebox-http', middleboxHttpAddress]] as const) {
    if (address === undefined) continue;
    let kind: string | undefined;
    try {
      kind = parseEndpoint(address).kind;
    } catch {
      // refused below
    }
    // A unix socket is in another pod's file system: only the Service's host:port reaches it.
    if (kind === undefined || kind === 'unix') throw new UsageError(`${flag} must be host:port or [ipv6]:port (the middlebox Service), got ${JSON.stringify(address)}`);
  }
  const middleboxTlsSecret = stringOpt(values, 'middlebox-tls-secret');
  if (middleboxTlsSecret !== undefined && !/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(middleboxTlsSecret)) {
    throw new UsageError(`--middlebox-tls-secret must name a Secret (lower-case letters, digits, '-' and '.'), got ${JSON.stringify(middleboxTlsSecret)}`);
  }
  const middleboxMtls = values['middlebox-mtls'] === true;
  if (middleboxMtls && middleboxTlsSecret === undefined) throw new UsageError('--middlebox-mtls needs --middlebox-tls-secret, the Secret with the client certificate');
  for (const flag of ['envoy-image', 'init-image']) {
    if (stringOpt(values, flag)?.trim() === '') throw new UsageError(`--${flag} must name an image, got ""`);
  }
  const config = injectConfig(
    definedOnly({
      middleboxAddress,
      middleboxHttpAddress,
      middleboxTlsSecret,
      middleboxMtls: middleboxMtls || undefined,
      envoyImage: stringOpt(values, 'envoy-image'),
      initImage: stringOpt(values, 'init-image'),
    }),
  );
  return { config, namespaceLabels };
}

// ---- middlebox inject -f FILE -------------------------------------------------------------------

export const injectCommand: Command = {
  name: 'inject',
  summary: 'Print Kubernetes objects with the middlebox sidecar (iptables init container + Envoy) injected into their pods.',
  usage: 'middlebox inject -f FILE [-f FILE ...] [--namespace-labels K=V,...] [--middlebox HOST:PORT] [--middlebox-http HOST:PORT] [--middlebox-tls-secret NAME [--middlebox-mtls]] [-o yaml|json]\n       middlebox inject serve --tls-cert FILE --tls-key FILE [flags]   (the admission webhook; see its --help)',
  help: [
    '  -f, --filename FILE        YAML or JSON, one or more documents; "-" reads stdin; repeatable',
    `                             Pods and the pod templates of ${TEMPLATE_KINDS.join(', ')} and CronJob`,
    '                             are injected; other objects are printed unchanged',
    ...injectHelp([`  --namespace-labels K=V,..  labels of the pods' namespace (e.g. ${ENABLED_LABEL})`]),
    '  -o, --output FORMAT        yaml (default) or json',
    '  --explain                  say on stderr why each pod was or was not injected',
  ],
  options: {
    filename: { type: 'string', short: 'f', multiple: true },
    ...injectOptions,
    output: { type: 'string', short: 'o' },
    explain: { type: 'boolean' },
  },
  async run({ values }) {
    const files = (values.filename as string[] | undefined) ?? [];
    if (files.length === 0) throw new UsageError('-f FILE is required ("-" for stdin)');
    if (files.filter((f) => f === '-').length > 1) throw new UsageError('-f - (stdin) can be given once');
    const output = stringOpt(values, 'output') ?? 'yaml';
    if (output !== 'yaml' && output !== 'json') throw new UsageError(`--output must be yaml or json, got ${JSON.stringify(output)}`);
    const { config, namespaceLabels } = injectSettings(values);
    const out: unknown[] = [];
    for (const file of files) {
      const source = file === '-' ? 'stdin' : file;
      for (const [i, doc] of parseDocuments(readInput(file), source).entries()) {
        out.push(injectDocument(doc, namespaceLabels, config, `${source} document ${i + 1}`, values.explain === true));
      }
    }
    process.stdout.write(output === 'json' ? render(out, 'json') : render(out, 'yaml'));
    return 0;
  },
};

// ---- middlebox inject serve ---------------------------------------------------------------------

export const injectServeCommand: Command = {
  name: 'inject serve',
  summary: 'Run the sidecar injector as a Kubernetes mutating admission webhook (HTTPS, AdmissionReview admission.k8s.io/v1).',
  usage: 'middlebox inject serve --tls-cert FILE --tls-key FILE [--listen HOST:PORT] [--namespace-labels K=V,...] [--middlebox HOST:PORT] [--middlebox-http HOST:PORT]',
  help: [
    `  --listen HOST:PORT         where to serve HTTPS, host:port or [ipv6]:port (default ${DEFAULT_WEBHOOK_LISTEN})`,
    '  --tls-cert FILE            PEM certificate (chain) the API server verifies; required',
    '  --tls-key FILE             its PEM private key; required. Both files are re-read when they change',
    '                             (checked every second); a pair that does not load is logged and the',
    '                             current one kept',
    ...injectHelp([
      `  --namespace-labels K=V,..  labels every request's namespace is taken to have (default ${ENABLED_LABEL}:`,
      '                             the MutatingWebhookConfiguration\'s namespaceSelector chose the namespace).',
      '                             "" injects only pods that opt in with middlebox.io/inject: "true"',
    ]),
    `  --max-request-bytes N      larger request bodies are refused with 413 (default ${DEFAULT_MAX_REQUEST_BYTES}, as kube-apiserver)`,
    `  --shutdown-delay-ms N      on SIGTERM, /readyz answers 503 and reviews are still answered this long, while`,
    `                             the Service's endpoints drop this replica; then the listener closes (default ${DEFAULT_WEBHOOK_SHUTDOWN_DELAY_MS})`,
    `  --drain-ms N               then how long in-flight requests may take (default ${DEFAULT_WEBHOOK_DRAIN_MS})`,
    '  --log-level LEVEL          trace|debug|info|warn|error|fatal|silent (env MIDDLEBOX_LOG_LEVEL, default info)',
    '',
    `Paths: POST ${INJECT_PATH} (an AdmissionReview; answers allowed with a JSONPatch for pods to inject),`,
    'GET /healthz (liveness), GET /readyz (readiness; 503 once shutting down). A pod is injected when it',
    'says middlebox.io/inject: "true", or when its namespace counts as enabled and it does not say "false";',
    'an injected pod (middlebox.io/status: injected) is allowed unchanged. SIGTERM or SIGINT: stop',
    'accepting connections, finish in-flight requests, exit 0.',
  ],
  options: {
    listen: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    ...injectOptions,
    'max-request-bytes': { type: 'string' },
    'drain-ms': { type: 'string' },
    'shutdown-delay-ms': { type: 'string' },
    'log-level': { type: 'string' },
  },
  async run({ values }) {
    const certFile = stringOpt(values, 'tls-cert');
    const keyFile = stringOpt(values, 'tls-key');
    if (certFile === undefined || keyFile === undefined) throw new UsageError('--tls-cert FILE and --tls-key FILE are required');
    const { config, namespaceLabels } = injectSettings(values, ENABLED_LABEL);
    const maxRequestBytes = intOpt(values, 'max-request-bytes', 1) ?? DEFAULT_MAX_REQUEST_BYTES;
    const drainMs = intOpt(values, 'drain-ms', 0, MAX_TIMER_MS) ?? DEFAULT_WEBHOOK_DRAIN_MS;
    const delayMs = intOpt(values, 'shutdown-delay-ms', 0, MAX_TIMER_MS) ?? DEFAULT_WEBHOOK_SHUTDOWN_DELAY_MS;
    const listen = stringOpt(values, 'listen') ?? DEFAULT_WEBHOOK_LISTEN;
    try {
      parseHostPort(listen);
    } catch (e) {
      throw new UsageError(`--listen: ${(e as Error).message}`);
    }
    const logger = createLogger({ level: logLevelOpt(values, 'info') });
    const webhook = await startWebhook({
      listen,
      certFile,
      keyFile,
      config,
      namespaceLabels,
      logger,
      maxRequestBytes,
    });

    return new Promise<number>((resolve) => {
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        logger.info({ signal, delayMs, drainMs }, 'shutting down: /readyz 503, answering for the shutdown delay, then no new connections and in-flight requests finish');
        void webhook.shutdown(drainMs, delayMs).then(() => {
          logger.info('stopped');
          logger.flush();
          resolve(0);
        });
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    });
  },
};

/** `middlebox inject ...`: the webhook for `inject serve`, the offline injector otherwise. */
export function injectMain(argv: string[]): Promise<number> {
  if (argv[0] === 'serve') return runCommand(injectServeCommand, argv.slice(1));
  return runCommand(injectCommand, argv);
}

function injectDocument(doc: unknown, labels: Record<string, string>, config: InjectConfig, where: string, explain: boolean): unknown {
  const obj = doc as Record<string, any> | null;
  // `kubectl get -o yaml` wraps objects in a List.
  if (obj && obj.kind === 'List' && Array.isArray(obj.items)) {
    return { ...obj, items: obj.items.map((item: unknown, i: number) => injectDocument(item, labels, config, `${where} item ${i + 1}`, explain)) };
  }
  if (typeof obj !== 'object' || Array.isArray(obj) || typeof obj?.kind !== 'string' || typeof obj.apiVersion !== 'string') {
    throw new MiddleboxError('bad_usage', `${where}: not a Kubernetes object (a mapping with apiVersion and kind)`);
  }
  const name = obj && typeof obj === 'object' ? `${obj.kind ?? '?'}/${obj.metadata?.name ?? obj.metadata?.generateName ?? '?'}` : where;
  try {
    const { object, decision, stale } = injectObject(doc, labels, config);
    if (explain && decision) process.stderr.write(`${name}: ${decision.inject ? 'injected' : 'not injected'}: ${decision.reason}\n`);
    else if (decision?.malformed) process.stderr.write(`middlebox inject: warning: ${name}: not injected: ${decision.reason}\n`);
    if (stale) process.stderr.write(`middlebox inject: warning: ${name}: ${stale}\n`);
    return object;
  } catch (e) {
    if (e instanceof InjectError || e instanceof Error) throw new MiddleboxError('bad_usage', `${where} (${name}): ${e.message}`);
    throw e;
  }
}

function readInput(file: string): string {
  try {
    return fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new MiddleboxError('file_not_found', `no such file: ${file}`);
    throw new MiddleboxError('bad_usage', `cannot read ${file}: ${(e as Error).message}`);
  }
}

function parseDocuments(text: string, file: string): unknown[] {
  const docs = parseAllDocuments(text);
  const list = Array.isArray(docs) ? docs : [];
  const errors = list.flatMap((doc, i) => doc.errors.map((err) => `document ${i + 1}: ${err.message.split('\n')[0]}`));
  if (errors.length > 0) throw new MiddleboxError('bad_usage', `${file} is not valid YAML or JSON`, errors);
  // Empty documents (a trailing "---") carry nothing.
  return list.map((doc) => doc.toJS()).filter((doc) => doc !== null && doc !== undefined);
}

function render(objects: unknown[], format: 'yaml' | 'json'): string {
  if (format === 'json') return `${JSON.stringify(objects.length === 1 ? objects[0] : { apiVersion: 'v1', kind: 'List', items: objects }, null, 2)}\n`;
  return objects.map((o) => stringify(o, { aliasDuplicateObjects: false, lineWidth: 0 })).join('---\n');
}

/** "a=b,c=d" -> { a: "b", c: "d" }. */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const item of splitList(text)) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new UsageError(`--namespace-labels takes key=value pairs, got ${JSON.stringify(item)}`);
    labels[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  return labels;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
