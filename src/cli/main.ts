// The `middlebox` command.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { useLinearRegexFallback } from '../policy/regex-engine';
import { BENCH_EXPERIMENTS } from './bench';
import { reportFailure, runCommand } from './command';
import { demoCommand } from './demo';
import { envoyCommand } from './envoy';
import { injectMain } from './inject';
import { natCommand } from './nat';
import { policyCommand } from './policy';
import { serveCommand } from './serve';

const USAGE = `Usage: middlebox <command> [flags]

Commands:
  serve              run the gRPC server that Envoy asks (ext_authz) — policies from etcd
  policy             validate | apply | get | delete | headers: policies in files and in etcd
  nat                list | drain | undrain: the shared NAT table
  explain            show which rules match a described request and what each middlebox would decide
  envoy bootstrap    print a sidecar Envoy bootstrap that uses the middlebox
  inject             print Kubernetes objects with the middlebox sidecar injected (offline)
  inject serve       run the sidecar injector as a Kubernetes admission webhook (HTTPS)
  demo               bring up etcd, two replicas, Envoy and an app locally and show the firewall at work
  bench              run a benchmark (${BENCH_EXPERIMENTS.filter((e) => e.name !== 'report').map((e) => e.name).join(', ')}) or regenerate bench/REPORT.md
  version            print the version

Run 'middlebox <command> --help' for a command's flags.
`;

function version(): string {
  const pkg = JSON.parse(readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve':
      return runCommand(serveCommand, rest);
    case 'policy':
      return policyCommand(rest);
    case 'envoy':
      return envoyCommand(rest);
    case 'inject':
      return injectMain(rest);
    case 'nat':
      return natCommand(rest);
    case 'demo':
      return runCommand(demoCommand, rest);
    case 'bench': return (await import('./bench')).benchMain(rest);
    case 'explain':
      return runCommand((await import('./explain')).explainCommand, rest);
    case 'version':
    case '--version':
      if (rest[0] === '-h' || rest[0] === '--help') {
        process.stdout.write('Usage: middlebox version\n\nPrint the version.\n');
        return 0;
      }
      if (rest.length > 0) {
        process.stderr.write(`middlebox version: takes no arguments, got ${JSON.stringify(rest[0])}\n`);
        return 2;
      }
      process.stdout.write(`middlebox ${version()}\n`);
      return 0;
    case undefined:
      process.stderr.write(USAGE);
      return 2;
    case 'help':
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return 0;
    default:
      process.stderr.write(`middlebox: unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`);
      return 2;
  }
}

/** Runs the command line and exits with its code. */
export function run(): void {
  useLinearRegexFallback();
  main(process.argv.slice(2)).then(
    (code) => {
      // serve resolves only after a clean shutdown; other commands may leave client sockets behind.
      setImmediate(() => process.exit(code));
    },
    (e) => process.exit(reportFailure('', e)),
  );
}

if (require.main === module) run();
