// The lab etcd: starts healthy on free ports, keeps its data across kill and restart, can be frozen,
// and leaves nothing behind.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { EtcdProcess } from '../../src/lab/etcd';
import { alive } from '../harness/process';

const b64 = (text: string) => Buffer.from(text).toString('base64');

/** POST to etcd's v3 JSON gateway. */
async function gateway<T>(etcd: EtcdProcess, route: string, body: object): Promise<T> {
  const res = await fetch(`${etcd.endpoint}/v3/${route}`, {
    method: 'POST',
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(3000),
  });
  assert.equal(res.status, 200, `${route}: ${res.status} ${await res.clone().text()}`);
  return (await res.json()) as T;
}

async function put(etcd: EtcdProcess, key: string, value: string): Promise<void> {
  await gateway(etcd, 'kv/put', { key: b64(key), value: b64(value) });
}

async function get(etcd: EtcdProcess, key: string): Promise<string | undefined> {
  const body = await gateway<{ kvs?: { value: string }[] }>(etcd, 'kv/range', { key: b64(key) });
  const value = body.kvs?.[0]?.value;
  return value === undefined ? undefined : Buffer.from(value, 'base64').toString();
}

async function health(etcd: EtcdProcess, timeoutMs = 2000): Promise<unknown> {
  const res = await fetch(`${etcd.endpoint}/health`, { signal: AbortSignal.timeout(timeoutMs) });
  return res.json();
}

describe('EtcdProcess', function () {
  this.timeout(60_000);

  let etcd: EtcdProcess;

  before(async () => {
    etcd = await EtcdProcess.start();
  });

  after(async () => {
    await etcd?.stop();
  });

  it('starts on a free loopback port and reports healthy', async () => {
    assert.match(etcd.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.ok(alive(etcd.pid));
    assert.ok(fs.existsSync(etcd.dataDir));
    assert.equal(((await health(etcd)) as { health: string }).health, 'true');
  });

  it('keeps data across restart', async () => {
    await put(etcd, '/middlebox/test/restart', 'kept');
    const before = etcd.pid;
    await etcd.restart();
    assert.notEqual(etcd.pid, before);
    assert.equal(await get(etcd, '/middlebox/test/restart'), 'kept');
  });

  it('keeps data across a kill and a restart', async () => {
    await put(etcd, '/middlebox/test/kill', 'survives');
    await etcd.kill();
    assert.equal(etcd.running, false);
    await assert.rejects(health(etcd));
    await etcd.restart();
    assert.equal(await get(etcd, '/middlebox/test/kill'), 'survives');
  });

  it('restarts on its own port once another socket that held it meanwhile lets go', async () => {
    // While etcd is down its port may become some connection's source port; here a listener holds it.
    await put(etcd, '/middlebox/test/port', 'held');
    await etcd.kill();
    const holder = net.createServer((socket) => socket.destroy()); // the lab's health checks meanwhile
    await new Promise<void>((resolve, reject) => {
      holder.once('error', reject);
      holder.listen(Number(new URL(etcd.endpoint).port), '127.0.0.1', resolve);
    });
    const released = new Promise<void>((resolve) => setTimeout(() => holder.close(() => resolve()), 500));
    try {
      await etcd.restart();
    } finally {
      await released;
    }
    assert.equal(await get(etcd, '/middlebox/test/port'), 'held');
  });

  it('answers nothing while frozen and recovers when thawed', async () => {
    await etcd.freeze();
    // freeze() resolves once the kernel reports the process stopped, so it answers nothing from then.
    assert.ok(fs.readFileSync(`/proc/${etcd.pid}/stat`, 'utf8').split(') ')[1]?.startsWith('T'), 'stopped (T) when freeze() resolves');
    await assert.rejects(health(etcd, 500), /abort|timeout/i);
    etcd.thaw();
    assert.equal(((await health(etcd)) as { health: string }).health, 'true');
  });

  it('stops the process and removes the temp data dir it made', async () => {
    const other = await EtcdProcess.start();
    const { pid, dataDir } = other;
    await other.stop();
    assert.equal(alive(pid), false);
    assert.equal(fs.existsSync(dataDir), false);
  });

  it('keeps a data dir it was given', async () => {
    const dataDir = fs.mkdtempSync(`${etcd.dataDir}-given-`);
    try {
      const other = await EtcdProcess.start({ dataDir, name: 'given' });
      await other.stop();
      assert.ok(fs.existsSync(`${dataDir}/member`));
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('fails with etcd\'s own output when etcd cannot start', async () => {
    // A regular file where the data dir should be: etcd refuses it and exits.
    const file = `${etcd.dataDir}-not-a-dir`;
    fs.writeFileSync(file, '');
    try {
      await assert.rejects(EtcdProcess.start({ dataDir: file }), /etcd exited .*\n--- last output of etcd ---\n.+/s);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
});
