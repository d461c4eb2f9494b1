// `middlebox nat list|drain|undrain`: the shared NAT table in etcd.
import { MiddleboxError } from '../errors';
import { drainBackend, listFlows, undrainBackend } from '../state/etcd/nat';
import { parseIp } from '../middlebox/ip';
import { runGroup, stringOpt, UsageError, type Command } from './command';
import { etcdHelp, etcdOptions, withEtcd } from './etcd-flags';

/** A backend as NAT rules write it: ip:port, IPv6 as [addr]:port, in canonical form. */
function backendArg(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('exactly one BACKEND (ip:port) is required');
  const text = positionals[0]!;
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ?? /^([^:\[\]]+):(\d{1,5})$/.exec(text);
  const ip = m ? parseIp(m[1]!) : undefined;
  const port = m ? Number(m[2]) : 0;
  if (!ip || port < 1 || port > 65535) throw new UsageError(`${JSON.stringify(text)} is not ip:port (IPv6 as [addr]:port)`);
  return ip.family === 6 ? `[${ip.text}]:${port}` : `${ip.text}:${port}`;
}

const list: Command = {
  name: 'nat list',
  summary: 'Show the shared NAT table: every flow and the backend it is mapped to, and drained backends.',
  usage: 'middlebox nat list [-o table|json] [--etcd URLS] [--prefix PREFIX]',
  help: ['  -o, --output FORMAT   table (default) or json', ...etcdHelp],
  options: { output: { type: 'string', short: 'o' }, ...etcdOptions },
  async run({ values }) {
    const format = stringOpt(values, 'output') ?? 'table';
    if (format !== 'table' && format !== 'json') throw new UsageError(`-o must be table or json, got ${JSON.stringify(format)}`);
    return withEtcd(values, async (client, prefix) => {
      const { flows, drained } = await listFlows(client, prefix);
      if (format === 'json') {
        process.stdout.write(`${JSON.stringify({ flows: flows.map(({ key: _key, ...f }) => f), drained }, null, 2)}\n`);
        return 0;
      }
      const rows = [['RULE', 'FLOW', 'BACKEND'], ...flows.map((f) => [f.rule, f.flow, drained.includes(f.backend) ? `${f.backend} (drained)` : f.backend])];
      const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
      if (flows.length === 0) process.stderr.write('No flows in the NAT table.\n');
      else process.stdout.write(rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('   ').trimEnd()).join('\n') + '\n');
      if (drained.length) process.stdout.write(`Drained: ${drained.join(', ')}\n`);
      return 0;
    });
  },
};

const BACKEND_HELP = '  BACKEND          ip:port as written in a NAT rule\'s `to` (IPv6 as [addr]:port)';

const drain: Command = {
  name: 'nat drain',
  summary: 'Take a backend out for new flows and move its sticky flows to the rest of the pool.',
  usage: 'middlebox nat drain BACKEND [--etcd URLS] [--prefix PREFIX]',
  help: [BACKEND_HELP, ...etcdHelp],
  options: etcdOptions,
  allowPositionals: true,
  async run({ values, positionals }) {
    const backend = backendArg(positionals);
    return withEtcd(values, async (client, prefix) => {
      const moved = await drainBackend(client, prefix, backend);
      process.stdout.write(`backend/${backend} drained; ${moved} flow${moved === 1 ? '' : 's'} moved\n`);
      return 0;
    });
  },
};

const undrain: Command = {
  name: 'nat undrain',
  summary: 'Put a drained backend back into its pools for new flows.',
  usage: 'middlebox nat undrain BACKEND [--etcd URLS] [--prefix PREFIX]',
  help: [BACKEND_HELP, ...etcdHelp],
  options: etcdOptions,
  allowPositionals: true,
  async run({ values, positionals }) {
    const backend = backendArg(positionals);
    return withEtcd(values, async (client, prefix) => {
      if (!(await undrainBackend(client, prefix, backend))) throw new MiddleboxError('bad_usage', `backend ${backend} is not drained`);
      process.stdout.write(`backend/${backend} undrained\n`);
      return 0;
    });
  },
};

const subcommands = [list, drain, undrain];

export function natCommand(argv: string[]): Promise<number> {
  return runGroup('nat', subcommands, argv);
}
