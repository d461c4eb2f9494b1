// The --etcd and --prefix flags that every command talking to etcd shares.
import { normalisePrefix, settingsFromEnv, splitList } from '../settings';
import type { Etcd3 } from 'etcd3';
import { connectEtcd } from '../state/etcd/client';
import { stringOpt, type Options } from './command';

export const etcdOptions: Options = { etcd: { type: 'string' }, prefix: { type: 'string' } };

export const etcdHelp = [
  '  --etcd URLS      comma-separated etcd client URLs (env MIDDLEBOX_ETCD, default http://127.0.0.1:2379)',
  '  --prefix PREFIX  etcd key prefix (env MIDDLEBOX_PREFIX, default /middlebox)',
];

function etcdFrom(values: Record<string, unknown>) {
  const env = settingsFromEnv();
  const endpoints = stringOpt(values, 'etcd') ? splitList(stringOpt(values, 'etcd')!) : env.etcd;
  const prefix = stringOpt(values, 'prefix') ? normalisePrefix(stringOpt(values, 'prefix')!) : env.prefix;
  return { client: connectEtcd({ endpoints }), prefix };
}

/** Runs a command's etcd work with a client made from the flags, closing it whatever happens. */
export async function withEtcd<T>(values: Record<string, unknown>, work: (client: Etcd3, prefix: string) => Promise<T>): Promise<T> {
  const { client, prefix } = etcdFrom(values);
  try {
    return await work(client, prefix);
  } finally {
    client.close();
  }
}
