// A middlebox replica dies (SIGKILL) under traffic through a real Envoy: the calls that were on its
// connection, and those Envoy sends it before its health checks notice, must go to the surviving
// replicas instead of failing the requests (but for a rare call caught in the dying process). Then the survivor is the only healthy replica of three
// listed, and Envoy must keep sending to it (no panic routing to the dead addresses).
import assert from 'node:assert/strict';
import { httpRequest, type HttpResult } from '../../src/lab/client';
import { sleep, waitFor } from '../../src/lab/ports';
import { SidecarLab } from '../../src/lab/sidecar';
import { parsePolicies } from '../../src/policy/parse';

const POLICY = `
apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  firewall:
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"] }
`;

describe('a replica killed under traffic through Envoy', function () {
  this.timeout(90_000);
  let lab: SidecarLab;

  before(async () => {
    lab = await SidecarLab.start({ replicas: 3 });
    const { documents, errors } = parsePolicies(POLICY, 'test');
    assert.deepEqual(errors, []);
    await lab.applyPolicies(documents);
    await waitFor(async () => (await httpRequest({ port: lab.httpPort, path: '/admin/x' })).status === 403, { timeoutMs: 10_000, what: 'the policy' });
  });

  after(async () => {
    await lab?.stop();
  });

  /** Requests from `concurrency` clients until `stop()` says so; every answer (a client error is status 0). */
  function traffic(concurrency: number): { stop: () => Promise<HttpResult[]> } {
    const out: HttpResult[] = [];
    let running = true;
    const loops = Array.from({ length: concurrency }, async (_, i) => {
      for (let n = 0; running && n < 100_000; n++) {
        const path = n % 5 === 0 ? '/admin/x' : `/products/${i}`;
        out.push(await httpRequest({ port: lab.httpPort, path, timeoutMs: 5000 }).catch((e: Error) => ({ status: 0, headers: {}, body: e.message })));
      }
    });
    return {
      stop: async () => {
        running = false;
        await Promise.all(loops);
        return out;
      },
    };
  }

  it('costs at most a few requests in a thousand when one of three dies, and when only one is left', async () => {
    const load = traffic(8);
    await sleep(1500);
    await lab.replicas[0]!.kill();
    await sleep(3000);
    await lab.replicas[1]!.kill();
    await sleep(3000);
    const results = await load.stop();
    const stats = await lab.envoy.stats('cluster.middlebox.(upstream_rq_retry|outlier_detection.ejections_enforced_total)');
    console.log(`      observed: ${results.length} requests; Envoy: ${[...stats].map(([k, v]) => `${k.replace('cluster.middlebox.', '')}=${v}`).join(', ')}`);
    const byStatus = new Map<number, number>();
    for (const r of results) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1);
    const failed = results.filter((r) => r.status !== 200 && !(r.status === 403 && r.body.includes('"rule":"no-admin"')));
    assert.ok(results.length > 200, `only ${results.length} requests`);
    // A call caught in the killed process can still fail now and then (retries are for calls that
    // could not reach a replica, and the kill races them); without retries, outlier detection and
    // the panic threshold, about 40 % of these requests failed.
    const bound = Math.ceil(results.length * 0.002);
    assert.ok(failed.length <= bound, `of ${results.length} requests, ${failed.length} failed (bound ${bound}): ${JSON.stringify([...byStatus])}; first: ${failed[0]?.status} ${failed[0]?.body}`);
  });
});
