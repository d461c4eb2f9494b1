// `middlebox bench <experiment> [--quick] [--only IDS]`: runs one of the compiled benchmarks (dist/bench/*.js) as a
// child process with this terminal, and exits with its code.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Experiment name → script under dist/bench, and what it measures. */
export const BENCH_EXPERIMENTS: ReadonlyArray<{ name: string; script: string; summary: string; quick: boolean; only?: boolean }> = [
  { name: 'ratelimit', script: 'ratelimit-accuracy', summary: 'rate-limit accuracy and etcd writes per consistency mode, vs Envoy local_ratelimit', quick: true },
  { name: 'nat', script: 'nat-cost', summary: 'NAT path cost: ext_proc NAT throughput beside Envoy routing directly (needs h2load)', quick: true },
  { name: 'faults', script: 'fault-timeline', summary: 'etcd frozen and resumed under load: admitted rate, p99 and breakers over time', quick: true },
  { name: 'latency', script: 'latency', summary: 'latency at fixed rates and saturation throughput per configuration (needs h2load)', quick: true, only: true },
  { name: 'envoy-authz', script: 'envoy-authz-cost', summary: 'what Envoy itself spends per ext_authz call, by setting (needs h2load)', quick: true },
  { name: 'scaling', script: 'scaling', summary: 'replicas added, stopped and killed and etcd frozen under load, over time', quick: true },
  { name: 'soak', script: 'soak', summary: '10 minutes of steady traffic: replica memory, handles and latency over time (needs h2load)', quick: true },
  { name: 'report', script: 'report', summary: 'regenerate bench/REPORT.md from bench/results/*.json', quick: false },
];

export const BENCH_USAGE = `Usage: middlebox bench <experiment> [--quick] [--only ID,...]

Runs a benchmark on this machine (real etcd, Envoy and replicas on loopback) and writes its results
under bench/results/; every experiment ends by regenerating bench/REPORT.md.

Experiments:
${BENCH_EXPERIMENTS.map((e) => `  ${e.name.padEnd(Math.max(...BENCH_EXPERIMENTS.map((x) => x.name.length)))}  ${e.summary}`).join('\n')}

Flags:
  --quick      a short run that checks the bench (results *.quick.*, not for the report)
  --only IDS   latency: these configurations only (comma-separated ids), after the baseline, in
               this order in the first round (results latency.only.*, not for the report); an
               unknown id lists the ids
  -h, --help   show this help

Needs a build of the repository (make build) and, except for report, etcd and Envoy (make deps).
`;

/** Where the compiled benches are: dist/bench, beside dist/src. */
export function benchDir(): string {
  return path.join(__dirname, '..', '..', 'bench');
}

export async function benchMain(argv: string[]): Promise<number> {
  if (argv.includes('-h') || argv.includes('--help')) {
    process.stdout.write(BENCH_USAGE);
    return 0;
  }
  // --only takes a value: kept apart from the positionals (as "--only X" or "--only=X").
  const rest: string[] = [];
  const only: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--only') {
      const value = argv[i + 1];
      if (value === undefined || value.startsWith('-')) {
        process.stderr.write(`middlebox bench: --only needs configuration ids (comma-separated)\n\n${BENCH_USAGE}`);
        return 2;
      }
      only.push('--only', value);
      i++;
    } else if (a.startsWith('--only=')) only.push('--only', a.slice('--only='.length));
    else rest.push(a);
  }
  const positionals = rest.filter((a) => !a.startsWith('-'));
  const flags = rest.filter((a) => a.startsWith('-'));
  if (positionals.length === 0) {
    process.stderr.write(`middlebox bench: which experiment?\n\n${BENCH_USAGE}`);
    return 2;
  }
  const [name, ...extra] = positionals;
  const experiment = BENCH_EXPERIMENTS.find((e) => e.name === name);
  if (!experiment) {
    process.stderr.write(`middlebox bench: unknown experiment ${JSON.stringify(name)} (one of: ${BENCH_EXPERIMENTS.map((e) => e.name).join(', ')})\n`);
    return 2;
  }
  const badFlag = only.length > 0 && !experiment.only ? '--only' : flags.find((f) => f !== '--quick' || !experiment.quick);
  if (extra.length > 0 || badFlag !== undefined) {
    const what = extra.length > 0 ? `unexpected argument ${JSON.stringify(extra[0])}` : `${experiment.name} does not take ${badFlag}`;
    process.stderr.write(`middlebox bench: ${what}\n\n${BENCH_USAGE}`);
    return 2;
  }
  const dir = benchDir();
  const script = path.join(dir, `${experiment.script}.js`);
  if (!fs.existsSync(dir)) {
    process.stderr.write(`middlebox bench: no compiled benchmarks in ${dir}: run make build\n`);
    return 1;
  }
  if (!fs.existsSync(script)) {
    process.stderr.write(`middlebox bench: ${script} is missing: run make build\n`);
    return 1;
  }
  return runChild(script, [...flags, ...only]);
}

/** Runs the script with this terminal; Ctrl-C and SIGTERM reach it, and its exit code is ours. */
function runChild(script: string, args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: 'inherit' });
    // The bench ends its own children on these; this process waits for it to do so.
    const forward = (signal: NodeJS.Signals) => () => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    };
    const onInt = forward('SIGINT');
    const onTerm = forward('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    const done = (code: number) => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve(code);
    };
    child.on('error', (err) => {
      process.stderr.write(`middlebox bench: could not start ${script}: ${err.message}\n`);
      done(1);
    });
    child.on('exit', (code, signal) => done(code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1)));
  });
}
