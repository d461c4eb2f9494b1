// Runs the real `middlebox` command line as a user would.
import { execFile } from 'node:child_process';
import path from 'node:path';

export const CLI = path.join(__dirname, '..', '..', 'src', 'cli', 'main.js');

export interface CliResult {
  /** The exit code; -1 when there is none (killed at the time limit or by a signal, or not started). */
  code: number;
  stdout: string;
  stderr: string;
}

export function middlebox(args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliResult> {
  const timeoutMs = opts.timeoutMs ?? 20_000;
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [CLI, ...args],
      // SIGKILL at the limit: a command stuck in a drain would outlive SIGTERM.
      { env: { ...process.env, ...opts.env }, timeout: timeoutMs, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        if (!err) return resolve({ code: 0, stdout, stderr });
        if (typeof err.code === 'number') return resolve({ code: err.code, stdout, stderr });
        // Not an exit code, so that no test expecting a failure (1) passes on a hung command.
        const why = err.killed ? `killed after ${timeoutMs} ms` : err.signal ? `ended by ${err.signal}` : err.message;
        resolve({ code: -1, stdout, stderr: `${stderr}\n[test harness: middlebox ${args.join(' ')}: ${why}]` });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}
