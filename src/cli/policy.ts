// `middlebox policy validate|apply|get|delete|headers`.
import YAML from 'yaml';
import { MiddleboxError } from '../errors';
import { DEFAULT_POLICY_LIMITS, type PolicyLimits } from '../policy/limits';
import { headersReadBy } from '../policy/headers';
import { formatPolicyError, parsePolicies, parsePolicyFile, parsePolicyStdin } from '../policy/parse';
import type { PolicyDocument } from '../policy/types';
import { BOUNDS, type BoundSetting } from '../settings';
import { deletePolicy, getPolicies, putPolicies } from '../state/etcd/policies';
import { intEnv, intOpt, runGroup, stringOpt, UsageError, type Command, type Options } from './command';
import { etcdHelp, etcdOptions, withEtcd } from './etcd-flags';

/** A bound's value: its flag, else its environment variable, else `fallback`; out of range is a usage error. */
export function boundOpt(values: Record<string, unknown>, setting: BoundSetting, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const flag = intOpt(values, setting.flag, setting.min, setting.max);
  if (flag !== undefined) return flag;
  return intEnv(setting.env, setting.min, setting.max, env) ?? fallback;
}

/** --max-policy-bytes and --max-rules-per-policy (or their env vars), shared by `serve` and `policy validate|apply`. */
export function policyLimitsFrom(values: Record<string, unknown>): PolicyLimits {
  return {
    maxPolicyBytes: boundOpt(values, BOUNDS.maxPolicyBytes, DEFAULT_POLICY_LIMITS.maxPolicyBytes),
    maxRulesPerPolicy: boundOpt(values, BOUNDS.maxRulesPerPolicy, DEFAULT_POLICY_LIMITS.maxRulesPerPolicy),
  };
}

export const policyLimitOptions: Options = {
  [BOUNDS.maxPolicyBytes.flag]: { type: 'string' },
  [BOUNDS.maxRulesPerPolicy.flag]: { type: 'string' },
};

/** Help lines for the policy bounds, with the description column at `column` (as etcdHelpLines). */
export function policyLimitHelp(column = 27): string[] {
  const pad = ' '.repeat(column);
  const line = (flag: string, first: string, second: string) => {
    const head = `  --${flag} N`;
    return [...(head.length < column ? [`${head.padEnd(column)}${first}`] : [head, `${pad}${first}`]), `${pad}${second}`];
  };
  return [
    ...line(
      BOUNDS.maxPolicyBytes.flag,
      'bytes of one policy file, and of one policy as stored in etcd (JSON); past it',
      `the policy is refused (env ${BOUNDS.maxPolicyBytes.env}, default ${DEFAULT_POLICY_LIMITS.maxPolicyBytes})`,
    ),
    ...line(
      BOUNDS.maxRulesPerPolicy.flag,
      'firewall rules, rate limits and NAT rules (each) in one policy; past it the',
      `policy is refused (env ${BOUNDS.maxRulesPerPolicy.env}, default ${DEFAULT_POLICY_LIMITS.maxRulesPerPolicy})`,
    ),
  ];
}

function filesFrom(values: Record<string, unknown>): string[] {
  const f = values.filename;
  const files = Array.isArray(f) ? (f as string[]) : typeof f === 'string' ? [f] : [];
  if (files.length === 0) throw new UsageError('-f FILE is required (use - for standard input)');
  return files;
}

/** Reads and validates every file; all errors of all files are reported together. */
export function loadFiles(files: string[], consequence: string, limits: PolicyLimits): PolicyDocument[] {
  // A file read twice would define each of its policies twice (and standard input is empty the second time).
  const twice = files.find((f, i) => files.indexOf(f) !== i);
  if (twice !== undefined) throw new UsageError(`-f ${twice === '-' ? '- (standard input)' : twice} is given twice`);
  const docs: PolicyDocument[] = [];
  const problems: string[] = [];
  const seen = new Map<string, string>();
  for (const file of files) {
    const result = file === '-' ? parsePolicyStdin(limits) : parsePolicyFile(file, limits);
    problems.push(...result.errors.map(formatPolicyError));
    for (const d of result.documents) {
      const where = seen.get(d.metadata.name);
      if (where && where !== file) problems.push(`${file}: policy ${JSON.stringify(d.metadata.name)} is also defined in ${where}`);
      seen.set(d.metadata.name, file);
      docs.push(d);
    }
  }
  if (problems.length) throw new MiddleboxError('policy_invalid', `${problems.length} problem${problems.length > 1 ? 's' : ''} found${consequence}`, problems);
  return docs;
}


const validate: Command = {
  name: 'policy validate',
  summary: 'Check policy files offline (format, and the size and rule bounds). Prints file:line: what is wrong, and exits 1, when a file is bad.',
  usage: 'middlebox policy validate -f FILE [-f FILE ...] [--max-policy-bytes N] [--max-rules-per-policy N]',
  help: ['  -f, --filename FILE      policy file (YAML or JSON, several documents allowed; - for stdin)', ...policyLimitHelp()],
  options: { filename: { type: 'string', short: 'f', multiple: true }, ...policyLimitOptions },
  async run({ values }) {
    const docs = loadFiles(filesFrom(values), '', policyLimitsFrom(values));
    for (const d of docs) process.stdout.write(`policy/${d.metadata.name} valid\n`);
    return 0;
  },
};

const apply: Command = {
  name: 'policy apply',
  summary: 'Validate policy files and store them in etcd, all or none; every replica applies them at once.',
  usage: 'middlebox policy apply -f FILE [-f FILE ...] [--etcd URLS] [--prefix PREFIX] [--max-policy-bytes N] [--max-rules-per-policy N]',
  help: [
    '  -f, --filename FILE      policy file (YAML or JSON, several documents allowed; - for stdin)',
    ...etcdHelp,
    ...policyLimitHelp(),
    '                           Give serve the same bounds: a replica refuses a stored policy past its own.',
  ],
  options: { filename: { type: 'string', short: 'f', multiple: true }, ...etcdOptions, ...policyLimitOptions },
  async run({ values }) {
    const docs = loadFiles(filesFrom(values), '; nothing was applied', policyLimitsFrom(values));
    return withEtcd(values, async (client, prefix) => {
      const before = await getPolicies(client, prefix);
      await putPolicies(client, prefix, docs);
      for (const d of docs) {
        const old = before.get(d.metadata.name);
        const state = old === undefined ? 'created' : old === JSON.stringify(d) ? 'unchanged' : 'configured';
        process.stdout.write(`policy/${d.metadata.name} ${state}\n`);
      }
      return 0;
    });
  },
};

const get: Command = {
  name: 'policy get',
  summary: 'Show the policies stored in etcd: a table of all, or one policy as YAML.',
  usage: 'middlebox policy get [NAME] [-o table|yaml|json] [--etcd URLS] [--prefix PREFIX]',
  help: ['  -o, --output FORMAT   table (default without NAME), yaml (default with NAME) or json', ...etcdHelp],
  options: { output: { type: 'string', short: 'o' }, ...etcdOptions },
  allowPositionals: true,
  async run({ values, positionals }) {
    if (positionals.length > 1) throw new UsageError('at most one policy NAME');
    const name = positionals[0];
    const format = stringOpt(values, 'output') ?? (name ? 'yaml' : 'table');
    if (!['table', 'yaml', 'json'].includes(format)) throw new UsageError(`-o must be table, yaml or json, got ${JSON.stringify(format)}`);
    return withEtcd(values, async (client, prefix) => {
      const stored = await getPolicies(client, prefix);
      const names = name ? [name] : [...stored.keys()].sort();
      if (name && !stored.has(name)) throw new MiddleboxError('policy_not_found', `policy ${JSON.stringify(name)} not found`);
      if (names.length === 0) {
        process.stderr.write('No policies found.\n');
        return 0;
      }
      const docs = names.map((n) => parseStoredForDisplay(stored.get(n)!));
      if (format === 'json') process.stdout.write(`${JSON.stringify(name ? docs[0] : docs, null, 2)}\n`);
      else if (format === 'yaml') process.stdout.write(docs.map((d) => YAML.stringify(d)).join('---\n'));
      else process.stdout.write(table(names, docs));
      return 0;
    });
  },
};

/** Shows what is stored even when it is corrupt (that is when an operator needs to see it). */
function parseStoredForDisplay(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return { invalid: text };
  }
}

function table(names: string[], values: unknown[]): string {
  const rows = [['NAME', 'SHADOW', 'FIREWALL', 'RATE-LIMITS', 'NAT']];
  names.forEach((n, i) => {
    const spec = (values[i] as Partial<PolicyDocument>)?.spec;
    if (!spec) return rows.push([n, '-', 'invalid', '-', '-']);
    const fw = spec.firewall ? `${spec.firewall.rules.length} rules, default ${spec.firewall.default}` : '-';
    rows.push([n, String(Boolean(spec.shadow)), fw, String(spec.rateLimits?.length ?? 0), String(spec.nat?.length ?? 0)]);
  });
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('   ').trimEnd()).join('\n') + '\n';
}

const del: Command = {
  name: 'policy delete',
  summary: 'Delete a policy from etcd; every replica stops enforcing it at once.',
  usage: 'middlebox policy delete NAME [--etcd URLS] [--prefix PREFIX]',
  help: etcdHelp,
  options: etcdOptions,
  allowPositionals: true,
  async run({ values, positionals }) {
    if (positionals.length !== 1) throw new UsageError('exactly one policy NAME is required');
    return withEtcd(values, async (client, prefix) => {
      if (!(await deletePolicy(client, prefix, positionals[0]!))) {
        throw new MiddleboxError('policy_not_found', `policy ${JSON.stringify(positionals[0])} not found`);
      }
      process.stdout.write(`policy/${positionals[0]} deleted\n`);
      return 0;
    });
  },
};

const headers: Command = {
  name: 'policy headers',
  summary: 'List the request headers the policies\' ext_authz rules read: what `envoy bootstrap --authz-headers` must send.',
  usage: 'middlebox policy headers [-f FILE ...] [-o list|table] [--etcd URLS] [--prefix PREFIX]',
  help: [
    '  -f, --filename FILE      policy file (YAML or JSON; - for stdin); without -f, the policies in etcd',
    '  -o, --output FORMAT      list (default): the names, comma-separated, for --authz-headers;',
    '                           table: each name with the first rule (policy/rule) that reads it',
    ...etcdHelp,
    ...policyLimitHelp(),
  ],
  options: { filename: { type: 'string', short: 'f', multiple: true }, output: { type: 'string', short: 'o' }, ...etcdOptions, ...policyLimitOptions },
  async run({ values }) {
    const format = stringOpt(values, 'output') ?? 'list';
    if (format !== 'list' && format !== 'table') throw new UsageError(`-o must be list or table, got ${JSON.stringify(format)}`);
    const print = (docs: PolicyDocument[]) => {
      // In evaluation order (by name), so that the rule named is the one a refusal would name.
      const read = headersReadBy([...docs].sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0)));
      if (format === 'list') process.stdout.write(`${read.map((h) => h.name).join(',')}\n`);
      else if (read.length === 0) process.stderr.write('No rule reads a request header.\n');
      else {
        const width = Math.max(6, ...read.map((h) => h.name.length));
        const rows = read.map((h) => `${h.name.padEnd(width)}   ${h.policy}/${h.rule}${h.enforced ? '' : ' (shadow only)'}`);
        process.stdout.write([`${'HEADER'.padEnd(width)}   READ-BY`, ...rows].join('\n') + '\n');
      }
    };
    if (values.filename !== undefined) {
      const etcdFlag = Object.keys(etcdOptions).find((name) => values[name] !== undefined);
      if (etcdFlag !== undefined) throw new UsageError(`give -f FILE or --${etcdFlag}, not both: the policies come from one place`);
      print(loadFiles(filesFrom(values), '', policyLimitsFrom(values)));
      return 0;
    }
    return withEtcd(values, async (client, prefix) => {
      const stored = await getPolicies(client, prefix);
      const docs: PolicyDocument[] = [];
      const problems: string[] = [];
      for (const [name, text] of stored) {
        const r = parsePolicies(text, `etcd policy ${name}`, policyLimitsFrom(values));
        problems.push(...r.errors.map(formatPolicyError));
        docs.push(...r.documents);
      }
      print(docs);
      if (problems.length === 0) return 0;
      // Replicas keep the last good version of a policy stored invalid; what it reads is unknown here.
      throw new MiddleboxError(
        'policy_invalid',
        `${problems.length} problem${problems.length > 1 ? 's' : ''} in stored policies: the list above leaves out the headers that the version of them still in force on the replicas may read`,
        problems,
      );
    });
  },
};

export const policySubcommands = [validate, apply, get, del, headers];

export function policyCommand(argv: string[]): Promise<number> {
  return runGroup('policy', policySubcommands, argv);
}
