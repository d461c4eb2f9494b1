// `middlebox demo` is one of the two commands the README promises: it must keep working.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ENVOY_BIN_ENV } from '../../src/lab/envoy';
import { etcdExecutable } from '../../src/lab/etcd';
import { middlebox } from '../harness/cli';

describe('middlebox demo', function () {
  this.timeout(90_000);

  it('brings everything up, shows each middlebox verdict, and ends by itself', async () => {
    const r = await middlebox(['demo'], { timeoutMs: 80_000 });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /GET\s+\/products\/42\s+from 127\.0\.0\.1\s+→ 200 allowed/);
    assert.match(r.stdout, /\/admin\/users .*→ 403 denied by shop\/no-admin/);
    assert.match(r.stdout, /from 127\.0\.0\.66\s+→ 403 denied by shop\/blocked-client/);
    assert.match(r.stdout, /DELETE \/orders\/7 .*→ 403 denied by shop\/orders-read-only/);
    assert.match(r.stdout, /shadow rule firewall\/shop\/beta-trial would have denied it/);
    for (let i = 1; i <= 5; i++) assert.match(r.stdout, new RegExp(`search #${i} → 200 allowed, ratelimit-remaining ${5 - i}`));
    assert.match(r.stdout, /search #6 → 429 denied by shop\/search-per-client, retry-after \d+ s/);
    assert.match(r.stdout, /connection from 127\.0\.0\.1\s+→ echoed/);
    assert.match(r.stdout, /connection from 127\.0\.0\.66\s+→ refused/);
    assert.match(r.stdout, /in force on every replica after \d+ ms\n.*\/admin\/users .*→ 200 allowed/);
    assert.match(r.stdout, /from 127\.0\.0\.11 ×3 → (orders-[ab]), \1, \1 /, 'NAT keeps a flow on one backend');
    assert.match(r.stdout, /the client sees location: http:\/\/orders\.internal\/next/);
    assert.match(r.stdout, /middlebox nat list: .*127\.0\.0\.11 → 127\.0\.0\.1:\d+/);
    assert.match(r.stdout, /Stopping everything/);
  });

  it('says which binary is missing before starting anything', async () => {
    // A PATH with etcd on it and no envoy; the Envoy named instead is not there.
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'middlebox-demo-path-'));
    try {
      fs.symlinkSync(etcdExecutable(), path.join(bin, 'etcd'));
      const missing = path.join(bin, 'envoy');
      const r = await middlebox(['demo'], { env: { PATH: bin, [ENVOY_BIN_ENV]: missing }, timeoutMs: 10_000 });
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stderr, `middlebox demo: ${ENVOY_BIN_ENV}=${missing}: not an executable file\n`);
      assert.equal(r.stdout, '', 'nothing started');
    } finally {
      fs.rmSync(bin, { recursive: true, force: true });
    }
  });

  it('refuses --logs that is a file, or empty, before starting anything', async () => {
    for (const [logs, message] of [[__filename, /exists and is not a directory/], ['', /--logs must name a directory/]] as const) {
      const r = await middlebox(['demo', '--logs', logs], { timeoutMs: 10_000 });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.equal(r.stdout, '', 'nothing started');
    }
  });
});
