// The --etcd and --prefix flags that every command talking to etcd shares.
import { normalisePrefix, settingsFromEnv, splitList } from '../settings';
import { connectEtcd } from '../state/etcd/client';
import { stringOpt, type Options } from './command';

export const etcdOptions: Options = { etcd: { type: 'string' }, prefix: { type: 'string' } };

export const etcdHelp = [
  '  --etcd URLS      comma-separated etcd client URLs (env MIDDLEBOX_ETCD, default http://127.0.0.1:2379)',
  '  --prefix PREFIX  etcd key prefix (env MIDDLEBOX_PREFIX, default /middlebox)',
];

export function etcdFrom(values: Record<string, unknown>) {
  const env = settingsFromEnv();
  const endpoints = stringOpt(values, 'etcd') ? splitList(stringOpt(values, 'etcd')!) : env.etcd;
  const prefix = stringOpt(values, 'prefix') ? normalisePrefix(stringOpt(values, 'prefix')!) : env.prefix;
  return { client: connectEtcd({ endpoints }), prefix };
}
