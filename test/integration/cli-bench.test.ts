// `middlebox bench` as a user runs it: the built CLI listing the experiments, refusing an unknown one,
// and running the report generator (dist/bench/report.js) over a copy of the committed results.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BENCH_EXPERIMENTS } from '../../src/cli/bench';
import { middlebox } from '../harness/cli';

/** The repository's bench/results (this file runs from dist/test/integration). */
const RESULTS = path.join(__dirname, '..', '..', '..', 'bench', 'results');

const SECTIONS: Record<string, string> = {
  'ratelimit-accuracy': '## Rate-limit accuracy',
  'nat-cost': '## NAT path cost',
  'fault-timeline': '## Fault timeline',
  latency: '## Latency and throughput',
  'envoy-authz-cost': '## What Envoy spends on an ext_authz call',
  scaling: '## Dynamic scaling',
};

const NO_STACK = /\n\s+at /;

describe('middlebox bench', function () {
  this.timeout(60_000);

  it('--help lists every experiment and --quick', async () => {
    const r = await middlebox(['bench', '--help']);
    assert.equal(r.code, 0, r.stderr);
    for (const name of ['ratelimit', 'nat', 'faults', 'latency', 'envoy-authz', 'scaling', 'soak', 'report']) assert.match(r.stdout, new RegExp(`^  ${name} `, 'm'), name);
    assert.match(r.stdout, /--quick/);
    assert.match(r.stdout, /^Usage: middlebox bench <experiment> \[--quick\]/);
  });

  it('runs every benchmark the Makefile runs', async () => {
    const makefile = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'Makefile'), 'utf8');
    const scripts = [...makefile.matchAll(/node dist\/bench\/([a-z-]+)\.js/g)].map((m) => m[1]!);
    assert.ok(scripts.length >= 7, scripts.join(', '));
    const help = (await middlebox(['bench', '--help'])).stdout;
    for (const script of new Set(scripts)) {
      const experiment = BENCH_EXPERIMENTS.find((e) => e.script === script);
      assert.ok(experiment, `make runs dist/bench/${script}.js, middlebox bench has no experiment for it`);
      assert.match(help, new RegExp(`^  ${experiment.name} +\\S`, 'm'));
    }
  });

  it('is listed in the top-level usage', async () => {
    const r = await middlebox(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^ {2}bench {2,}/m);
  });

  it('refuses an unknown experiment with exit 2 and one line', async () => {
    const r = await middlebox(['bench', 'warp-speed']);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^middlebox bench: unknown experiment "warp-speed" \(one of: ratelimit, nat, faults, latency, envoy-authz, scaling, soak, report\)\n$/);
  });

  it('refuses a missing experiment and unknown flags with exit 2, without a stack trace', async () => {
    for (const args of [['bench'], ['bench', 'scaling', '--fast'], ['bench', 'report', '--quick'], ['bench', 'nat', 'extra'], ['bench', 'nat', '--only', 'envoy'], ['bench', 'latency', '--only']]) {
      const r = await middlebox(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^middlebox bench: /, args.join(' '));
      assert.doesNotMatch(r.stderr, NO_STACK);
    }
  });

  it('latency --only passes the ids on: an unknown one is refused with the list of ids, exit 2', async () => {
    const r = await middlebox(['bench', 'latency', '--only', 'middlebox-leased-authz-http-tcp,warp-speed']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^--only: unknown configuration warp-speed; one of:\n/);
    assert.match(r.stderr, /^ {2}middlebox-leased-authz-http-unix$/m);
    assert.doesNotMatch(r.stderr, NO_STACK);
  });

  it('report: writes REPORT.md from a copy of the results, one section per results file', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-bench-report-'));
    try {
      const results = path.join(dir, 'results');
      fs.mkdirSync(results);
      const present = Object.keys(SECTIONS).filter((id) => fs.existsSync(path.join(RESULTS, `${id}.json`)));
      assert.ok(present.length > 0, `no results in ${RESULTS} to copy`);
      for (const id of present) fs.copyFileSync(path.join(RESULTS, `${id}.json`), path.join(results, `${id}.json`));
      // A quick run beside them is left out of the report.
      fs.writeFileSync(path.join(results, 'scaling.quick.json'), '{}');

      const r = await middlebox(['bench', 'report'], { env: { BENCH_RESULTS_DIR: results } });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /wrote .*REPORT\.md/);
      const report = fs.readFileSync(path.join(dir, 'REPORT.md'), 'utf8');
      assert.match(report, /^# Benchmark report/);
      assert.match(report, /^## Targets$/m);
      assert.match(report, /\| (✔|✘|–) \| (latency|ratelimit-accuracy)\.json \|/);
      for (const [id, heading] of Object.entries(SECTIONS)) {
        const at = report.indexOf(heading);
        assert.ok(at >= 0, `no section ${heading}`);
        const next = report.indexOf('\n## ', at + 1);
        const section = report.slice(at, next < 0 ? undefined : next);
        if (present.includes(id)) {
          assert.match(section, /^- run: /m, `${id}: run metadata`);
          assert.match(section, new RegExp(`\\[full table\\]\\(results/${id}\\.md\\)`), `${id}: link to its table`);
          assert.doesNotMatch(section, /_No results/, id);
        } else {
          assert.match(section, new RegExp(`_No results: results/${id}\\.json is missing`), `${id}: a note, not a section`);
        }
      }
      assert.doesNotMatch(report, /scaling\.quick/);
      // The committed report is left alone.
      assert.ok(!fs.readdirSync(results).includes('REPORT.md'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
