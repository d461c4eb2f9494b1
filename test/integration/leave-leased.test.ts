// A replica that stops (SIGTERM) gives the leased tokens its pools hold back to etcd, every one of
// them, before its breaker and etcd client shut down: through a real Envoy, with a real etcd, for
// many buckets at once, and with no shutdown delay or drain to hide behind.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { Etcd3 } from 'etcd3';
import { httpRequest } from '../../src/lab/client';
import { waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { parsePolicies } from '../../src/policy/parse';
import { connectEtcd } from '../../src/state/etcd/client';

const PATHS = 40;
const POLICY = `
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  rateLimits:
    - { name: per-path, match: { paths: ["/items/*"] }, limit: 1000000, per: 1h, by: [path], algorithm: fixed-window, consistency: leased, headers: true }
`;

describe('a leased replica that stops gives its unspent tokens back', function () {
  this.timeout(120_000);
  let lab: SidecarLab;
  let client: Etcd3;

  before(async () => {
    lab = await SidecarLab.start({ replicas: 1 });
    await lab.applyPolicies(parsePolicies(POLICY, 'policy.yaml').documents);
    client = connectEtcd({ endpoints: [lab.etcd.endpoint] });
    await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/items/warm' })).headers['ratelimit-limit'] !== undefined, {
      timeoutMs: 15_000,
      intervalMs: 100,
      what: 'the rate limit in force',
    });
  });
  after(async () => {
    client?.close();
    await lab?.stop();
  });

  it(`SIGTERM with ${PATHS} buckets holding blocks: etcd ends up counting exactly what was admitted`, async () => {
    // Rounds of one request per path, 20 ms apart: each bucket learns a rate and takes blocks
    // of that rate's worth, most of which its pool still holds at the end.
    let admitted = 1; // the warm-up request
    for (let round = 0; round < 8; round++) {
      const answers = await Promise.all(Array.from({ length: PATHS }, (_, i) => httpRequest({ port: lab.httpPort, path: `/items/${i}` })));
      for (const a of answers) assert.equal(a.status, 200);
      admitted += answers.length;
      await new Promise((r) => setTimeout(r, 20));
    }
    const counted = async () => {
      const all = await client.getAll().prefix(`${lab.prefix}/ratelimit/`).strings();
      return Object.values(all).reduce((n, v) => n + (JSON.parse(v) as { c: number }).c, 0);
    };
    const before = await counted();
    assert.ok(before > admitted + PATHS, `the pools hold tokens etcd counted (${before} counted, ${admitted} admitted)`);

    const replica = lab.replicas[0]!;
    replica.signal('SIGTERM');
    const exit = await Promise.race([replica.exitStatus(), new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 20_000).unref())]);
    assert.notEqual(exit, 'timeout', 'still running 20 s after SIGTERM');
    assert.equal((exit as { code: number | null }).code, 0);

    assert.equal(await counted(), admitted, 'every unspent token went back');
    const log = fs.readFileSync(lab.replicaLogFile(0), 'utf8');
    assert.match(log, /gave unspent leased tokens back to etcd/);
    assert.doesNotMatch(log, /could not give leased tokens back|did not take all unspent leased tokens back/);
  });
});
