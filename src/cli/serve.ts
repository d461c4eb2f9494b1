// `middlebox serve`: the one place that wires settings, etcd, the policy store and the gRPC server.
import { startServer } from '../grpc/server';
import { createLogger } from '../observability/logger';
import { DEFAULTS, normalisePrefix, settingsFromEnv, splitList } from '../settings';
import { connectEtcd } from '../state/etcd/client';
import { EtcdMembership, DEFAULT_MEMBER_TTL_S } from '../state/etcd/membership';
import { EtcdNatTable } from '../state/etcd/nat';
import { EtcdPolicyStore } from '../state/etcd/policies';
import { EtcdRateLimitStore } from '../state/etcd/ratelimit';
import { DEFAULT_MAX_BUCKETS, LocalRateLimitStore } from '../state/ratelimit/local';
import { RateLimitStores } from '../state/ratelimit/store';
import { intOpt, stringOpt, type Command } from './command';

export const serveCommand: Command = {
  name: 'serve',
  summary: 'Run the middlebox gRPC server (Envoy ext_authz Check, ext_proc Process, grpc.health.v1): firewall, rate limits and NAT, state shared in etcd.',
  usage: 'middlebox serve [--listen ADDR] [--etcd URLS] [--prefix PREFIX]',
  help: [
    `  --listen ADDR            host:port, [ipv6]:port or unix:/path (env MIDDLEBOX_LISTEN, default ${DEFAULTS.listen})`,
    `  --etcd URLS              comma-separated etcd client URLs (env MIDDLEBOX_ETCD, default ${DEFAULTS.etcd.join(',')})`,
    `  --prefix PREFIX          etcd key prefix (env MIDDLEBOX_PREFIX, default ${DEFAULTS.prefix})`,
    `  --drain-ms N             on SIGTERM, how long in-flight calls may take (env MIDDLEBOX_DRAIN_MS, default ${DEFAULTS.drainMs})`,
    '  --shutdown-delay-ms N    on SIGTERM, how long to answer NOT_SERVING before closing, so that',
    '                           Envoy health checks notice first (env MIDDLEBOX_SHUTDOWN_DELAY_MS, default 2000)',
    '  --replica-id ID          this replica\'s name in etcd membership (env MIDDLEBOX_REPLICA_ID, default hostname-pid)',
    `  --member-ttl SECONDS     membership lease; a dead replica stops counting towards local limit shares after it (default ${DEFAULT_MEMBER_TTL_S})`,
    `  --max-rate-limit-keys N  rate-limit buckets this replica tracks; least recently used dropped first`,
    `                           (env MIDDLEBOX_MAX_RATE_LIMIT_KEYS, default ${DEFAULT_MAX_BUCKETS})`,
    `  --log-level LEVEL        trace|debug|info|warn|error (env MIDDLEBOX_LOG_LEVEL, default ${DEFAULTS.logLevel})`,
    '',
    'Decisions fail closed (503) until the policies are loaded from etcd. SIGTERM or SIGINT: health',
    'goes NOT_SERVING, in-flight calls finish, the process exits 0.',
  ],
  options: {
    listen: { type: 'string' },
    etcd: { type: 'string' },
    prefix: { type: 'string' },
    'drain-ms': { type: 'string' },
    'shutdown-delay-ms': { type: 'string' },
    'log-level': { type: 'string' },
    'replica-id': { type: 'string' },
    'member-ttl': { type: 'string' },
    'max-rate-limit-keys': { type: 'string' },
  },
  async run({ values }) {
    const env = settingsFromEnv();
    const listen = stringOpt(values, 'listen') ?? env.listen;
    const etcd = stringOpt(values, 'etcd') ? splitList(stringOpt(values, 'etcd')!) : env.etcd;
    const prefix = stringOpt(values, 'prefix') ? normalisePrefix(stringOpt(values, 'prefix')!) : env.prefix;
    const drainMs = intOpt(values, 'drain-ms') ?? env.drainMs;
    const delayMs = intOpt(values, 'shutdown-delay-ms') ?? Number(process.env.MIDDLEBOX_SHUTDOWN_DELAY_MS ?? 2000);
    const memberTtlS = intOpt(values, 'member-ttl', 2, 3600) ?? DEFAULT_MEMBER_TTL_S;
    const maxKeys = intOpt(values, 'max-rate-limit-keys', 1) ?? Number(process.env.MIDDLEBOX_MAX_RATE_LIMIT_KEYS ?? DEFAULT_MAX_BUCKETS);
    const logger = createLogger({ level: stringOpt(values, 'log-level') ?? env.logLevel });

    const client = connectEtcd({ endpoints: etcd });
    const policies = EtcdPolicyStore.open({ client, prefix, logger });
    const membership = EtcdMembership.join({ client, prefix, logger, id: stringOpt(values, 'replica-id') ?? process.env.MIDDLEBOX_REPLICA_ID, ttlS: memberTtlS });
    const replicas = () => membership.count();
    const rateLimits = new RateLimitStores(
      new LocalRateLimitStore({ replicas, maxBuckets: maxKeys }),
      new EtcdRateLimitStore({ client, prefix, logger, replicas, maxBuckets: maxKeys }),
    );
    const nat = EtcdNatTable.open({ client, prefix, logger });
    const server = await startServer({ listen, policies, ports: { rateLimits, nat }, logger });
    logger.info({ listen: server.address, etcd, prefix, replica: membership.id }, 'middlebox serving');

    return new Promise<number>((resolve) => {
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        logger.info({ signal, delayMs, drainMs }, 'shutting down: NOT_SERVING, draining in-flight calls');
        void server
          .shutdown({ delayMs, drainMs })
          .then(() => Promise.all([policies.close(), membership.leave(), nat.close()]))
          .then(() => client.close())
          .then(() => {
            logger.info('stopped');
            logger.flush();
            resolve(0);
          });
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
    });
  },
};
