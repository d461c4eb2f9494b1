// A small command framework over node:util parseArgs: every command has --help, unknown flags are
// a usage error (exit 2), and failures print one clear line (exit 1), never a stack trace.
// Exit 2: the command line (or an environment variable standing in for a flag) is wrong. Exit 1:
// it could not be done (a file unreadable or invalid, etcd unreachable, a port taken).
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { MiddleboxError } from '../errors';
import { wholeNumber, wholeNumberFromEnv } from '../settings';

export type Options = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  name: string;
  summary: string;
  usage: string;
  /** Lines printed under the usage by --help. */
  help: string[];
  options: Options;
  allowPositionals?: boolean;
  run(args: { values: Record<string, string | boolean | string[] | boolean[] | undefined>; positionals: string[] }): Promise<number>;
}

export class UsageError extends Error {}

export function helpText(cmd: Command): string {
  return [`Usage: ${cmd.usage}`, '', cmd.summary, '', ...cmd.help, '  -h, --help   show this help'].join('\n');
}

export async function runCommand(cmd: Command, argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...cmd.options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: cmd.allowPositionals ?? false,
      strict: true,
    });
  } catch (e) {
    // One line and where to look, as kubectl does: the whole usage would bury the mistake.
    process.stderr.write(`middlebox ${cmd.name}: ${(e as Error).message}\nRun 'middlebox ${cmd.name} --help' for usage.\n`);
    return 2;
  }
  if (parsed.values.help) {
    process.stdout.write(`${helpText(cmd)}\n`);
    return 0;
  }
  try {
    return await cmd.run(parsed as never);
  } catch (e) {
    return reportFailure(cmd.name, e);
  }
}

export function reportFailure(where: string, e: unknown): number {
  if (e instanceof UsageError) {
    process.stderr.write(`middlebox ${where}: ${e.message}\n`);
    return 2;
  }
  if (e instanceof MiddleboxError) {
    process.stderr.write(`middlebox ${where}: ${e.message}\n`);
    for (const d of e.details) process.stderr.write(`${d}\n`);
    return 1;
  }
  process.stderr.write(`middlebox ${where}: ${(e as Error)?.message ?? String(e)}\n`);
  if (process.env.MIDDLEBOX_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
  return 1;
}

export function stringOpt(values: Record<string, unknown>, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

/**
 * A flag's value, else its environment variable's (empty means unset), with the name it came from:
 * what a message about a bad value names.
 */
export function flagOrEnv(values: Record<string, unknown>, flag: string, envName: string, env: NodeJS.ProcessEnv = process.env): { value: string | undefined; name: string } {
  const v = stringOpt(values, flag);
  return v !== undefined ? { value: v, name: `--${flag}` } : { value: env[envName] || undefined, name: envName };
}

/** The longest delay Node's timers keep (about 24.8 days); a longer one would fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export function intOpt(values: Record<string, unknown>, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = stringOpt(values, name);
  if (v === undefined) return undefined;
  const n = wholeNumber(v);
  if (n === undefined || n < min || n > max) throw new UsageError(`--${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return n;
}

/** A command with subcommands (`middlebox policy apply`): dispatch, or print the group's usage. */
export async function runGroup(group: string, subcommands: readonly Command[], argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const cmd = subcommands.find((c) => c.name === `${group} ${sub}`);
  if (cmd) return runCommand(cmd, rest);
  const names = subcommands.map((c) => c.name.slice(group.length + 1)).join('|');
  const width = Math.max(...subcommands.map((c) => c.name.length));
  const out = `Usage: middlebox ${group} <${names}> [flags]\n\n${subcommands.map((c) => `  ${c.name.padEnd(width)}   ${c.summary}`).join('\n')}\n`;
  if (sub === '-h' || sub === '--help' || sub === 'help') {
    process.stdout.write(out);
    return 0;
  }
  process.stderr.write(sub === undefined ? out : `middlebox ${group}: unknown subcommand ${JSON.stringify(sub)}\n${out}`);
  return 2;
}

/**
 * A whole number from environment variable `name`, standing in for a flag: undefined if unset or
 * empty, a UsageError naming the variable if it is not one in [min, max].
 */
export function intEnv(name: string, min = 0, max = Number.MAX_SAFE_INTEGER, env: NodeJS.ProcessEnv = process.env): number | undefined {
  try {
    return wholeNumberFromEnv(name, min, max, env);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/** --log-level, else env MIDDLEBOX_LOG_LEVEL, else `fallback`: one of LOG_LEVELS, or a UsageError. */
export function logLevelOpt(values: Record<string, unknown>, fallback: string, env: NodeJS.ProcessEnv = process.env): string {
  const flag = stringOpt(values, 'log-level');
  const level = flag ?? (env.MIDDLEBOX_LOG_LEVEL || fallback);
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new UsageError(`${flag !== undefined ? '--log-level' : 'MIDDLEBOX_LOG_LEVEL'} must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(level)}`);
  }
  return level;
}
