// A follower (policies, NAT table, membership all use one) whose watch connection is cut while
// etcd moves on and compacts its history: when the connection comes back, etcd refuses to resume
// the watch from a revision it no longer has and ends it. The follower must load everything
// again and keep following, not keep a table that never changes again.
import assert from 'node:assert/strict';
import net from 'node:net';
import type { Etcd3 } from 'etcd3';
import { EtcdProcess } from '../../src/lab/etcd';
import { freePort, waitFor } from '../../src/lab/ports';
import { silentLogger } from '../../src/observability/logger';
import { connectEtcd } from '../../src/state/etcd/client';
import { PrefixFollower } from '../../src/state/etcd/follow';

/** A TCP proxy to etcd that can be cut (every connection dropped, none accepted) and restored. */
class CuttableProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  constructor(
    readonly port: number,
    private readonly target: { host: string; port: number },
  ) {}

  open(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
    });
    this.server = server;
    return new Promise((resolve, reject) => server.once('error', reject).listen(this.port, '127.0.0.1', () => resolve()));
  }

  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

describe('following a prefix when etcd compacts the history the watch would resume from', function () {
  this.timeout(60_000);
  let etcd: EtcdProcess;
  let admin: Etcd3;
  let proxy: CuttableProxy | undefined;
  let followerClient: Etcd3 | undefined;
  let follower: PrefixFollower | undefined;

  before(async () => {
    etcd = await EtcdProcess.start();
    admin = connectEtcd({ endpoints: [etcd.endpoint] });
  });
  after(async () => {
    await follower?.close();
    followerClient?.close();
    await proxy?.cut();
    admin?.close();
    await etcd?.stop();
  });

  it('loads everything again and keeps following', async () => {
    const target = new URL(etcd.endpoint);
    proxy = new CuttableProxy(await freePort(), { host: target.hostname, port: Number(target.port) });
    await proxy.open();
    followerClient = connectEtcd({ endpoints: [`http://127.0.0.1:${proxy.port}`] });
    follower = new PrefixFollower(followerClient, '/follow/', silentLogger(), 'test table');
    const seen = new Map<string, string>();
    let loads = 0;
    await admin.put('/follow/a').value('1');
    await follower.start({
      loaded: (kvs) => {
        loads += 1;
        seen.clear();
        for (const kv of kvs) seen.set(kv.key.toString(), kv.value.toString());
      },
      put: (kv) => seen.set(kv.key.toString(), kv.value.toString()),
      delete: (kv) => seen.delete(kv.key.toString()),
    });
    await admin.put('/follow/b').value('2');
    await waitFor(() => seen.get('/follow/b') === '2', { timeoutMs: 5000, what: 'the watch to deliver a put' });
    assert.equal(loads, 1);

    // The connection goes; etcd changes the prefix and compacts away the history in between.
    await proxy.cut();
    await admin.put('/follow/c').value('3');
    await admin.delete().key('/follow/a').exec();
    const { header } = await admin.put('/unrelated').value('x');
    await admin.kv.compact({ revision: header.revision, physical: true });

    await proxy.open();
    const expected = new Map([['/follow/b', '2'], ['/follow/c', '3']]);
    await waitFor(() => JSON.stringify([...seen].sort()) === JSON.stringify([...expected].sort()), {
      timeoutMs: 20_000,
      what: `the follower to see ${JSON.stringify([...expected])}, not ${JSON.stringify([...seen])}`,
    });
    assert.equal(loads, 2, 'loaded once more');
    // And it follows again.
    await admin.put('/follow/d').value('4');
    await waitFor(() => seen.get('/follow/d') === '4', { timeoutMs: 5000, what: 'the new watch to deliver a put' });
  });
});
