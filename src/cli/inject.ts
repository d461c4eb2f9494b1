// `middlebox inject -f FILE`: prints the objects of FILE with the middlebox sidecar injected into
// every pod that asks for it, offline (like `istioctl kube-inject`). The webhook uses the same core.
import fs from 'node:fs';
import { parseAllDocuments, stringify } from 'yaml';
import { MiddleboxError } from '../errors';
import { INJECT_DEFAULTS, injectConfig, NAMESPACE_LABEL, NAMESPACE_LABEL_ENABLED, type InjectConfig } from '../inject/config';
import { InjectError } from '../inject/patch';
import { injectObject, TEMPLATE_KINDS } from '../inject/workloads';
import { splitList } from '../settings';
import { runCommand, stringOpt, UsageError, type Command } from './command';

const d = INJECT_DEFAULTS;

export const injectCommand: Command = {
  name: 'inject',
  summary: 'Print Kubernetes objects with the middlebox sidecar (iptables init container + Envoy) injected into their pods.',
  usage: 'middlebox inject -f FILE [--namespace-labels K=V,...] [--middlebox HOST:PORT] [-o yaml|json]',
  help: [
    '  -f, --filename FILE        YAML or JSON, one or more documents; "-" reads stdin',
    `                             Pods and the pod templates of ${TEMPLATE_KINDS.join(', ')} and CronJob`,
    '                             are injected; other objects are printed unchanged',
    `  --namespace-labels K=V,..  labels of the pods' namespace (e.g. ${NAMESPACE_LABEL}=${NAMESPACE_LABEL_ENABLED})`,
    `  --middlebox HOST:PORT      the middlebox Service Envoy asks (default ${d.middleboxAddress})`,
    `  --envoy-image IMAGE        (default ${d.envoyImage})`,
    `  --init-image IMAGE         image with iptables and sh for the init container (default ${d.initImage})`,
    '  -o, --output FORMAT        yaml (default) or json',
    '  --explain                  say on stderr why each pod was or was not injected',
  ],
  options: {
    filename: { type: 'string', short: 'f' },
    'namespace-labels': { type: 'string' },
    middlebox: { type: 'string' },
    'envoy-image': { type: 'string' },
    'init-image': { type: 'string' },
    output: { type: 'string', short: 'o' },
    explain: { type: 'boolean' },
  },
  async run({ values }) {
    const file = stringOpt(values, 'filename');
    if (file === undefined) throw new UsageError('-f FILE is required ("-" for stdin)');
    const output = stringOpt(values, 'output') ?? 'yaml';
    if (output !== 'yaml' && output !== 'json') throw new UsageError(`--output must be yaml or json, got ${JSON.stringify(output)}`);
    const namespaceLabels = parseLabels(stringOpt(values, 'namespace-labels') ?? '');
    const config = injectConfig(
      definedOnly({
        middleboxAddress: stringOpt(values, 'middlebox'),
        envoyImage: stringOpt(values, 'envoy-image'),
        initImage: stringOpt(values, 'init-image'),
      }),
    );
    const source = file === '-' ? 'stdin' : file;
    const docs = parseDocuments(readInput(file), source);
    const out: unknown[] = [];
    for (const [i, doc] of docs.entries()) {
      out.push(injectDocument(doc, namespaceLabels, config, `${source} document ${i + 1}`, values.explain === true));
    }
    process.stdout.write(output === 'json' ? render(out, 'json') : render(out, 'yaml'));
    return 0;
  },
};

export function injectMain(argv: string[]): Promise<number> {
  return runCommand(injectCommand, argv);
}

function injectDocument(doc: unknown, labels: Record<string, string>, config: InjectConfig, where: string, explain: boolean): unknown {
  const obj = doc as Record<string, any> | null;
  // `kubectl get -o yaml` wraps objects in a List.
  if (obj && obj.kind === 'List' && Array.isArray(obj.items)) {
    return { ...obj, items: obj.items.map((item: unknown, i: number) => injectDocument(item, labels, config, `${where} item ${i + 1}`, explain)) };
  }
  const name = obj && typeof obj === 'object' ? `${obj.kind ?? '?'}/${obj.metadata?.name ?? obj.metadata?.generateName ?? '?'}` : where;
  try {
    const { object, decision } = injectObject(doc, labels, config);
    if (explain && decision) process.stderr.write(`${name}: ${decision.inject ? 'injected' : 'not injected'}: ${decision.reason}\n`);
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
