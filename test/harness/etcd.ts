// A real etcd for one mocha suite: its own data directory and a free port, and a client of it.
import type { Etcd3 } from 'etcd3';
import { EtcdProcess } from '../../src/lab/etcd';
import { connectEtcd } from '../../src/state/etcd/client';

/** Starts etcd and a client before the suite (handing both to `use`) and stops both after it. */
export function etcdForSuite(use: (etcd: EtcdProcess, client: Etcd3) => void): void {
  let etcd: EtcdProcess | undefined;
  let client: Etcd3 | undefined;
  before(async () => {
    etcd = await EtcdProcess.start();
    client = connectEtcd({ endpoints: [etcd.endpoint] });
    use(etcd, client);
  });
  after(async () => {
    client?.close();
    await etcd?.stop();
  });
}
