// `middlebox serve`: the one place that wires settings, etcd, the policy store and the gRPC server.
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { Etcd3 } from 'etcd3';
import { MiddleboxError } from '../errors';
import { DEFAULT_TRANSLATION_LIMITS } from '../grpc/authz/request';
import { DEFAULT_MAX_MESSAGE_BYTES, parseListen, startServer, type RunningServer, type ServerTls } from '../grpc/server';
import { ADMIN_OFF, parseAdminListen, startAdminServer } from '../observability/admin';
import { ALWAYS_REDACTED, DecisionLog, decisionLogSettings } from '../observability/decision-log';
import { createLogger, type Logger } from '../observability/logger';
import { MeteredBreaker } from '../observability/metered-breaker';
import { MiddleboxMetrics } from '../observability/metrics';
import { BOUNDS, DEFAULTS, SERVER_TLS_ENV, settingsFromEnv } from '../settings';
import { classifyEtcdError, type EtcdErrorContext } from '../state/etcd/client';
import { EtcdMembership, DEFAULT_MEMBER_TTL_S } from '../state/etcd/membership';
import { DEFAULT_MAX_NAT_FLOWS_PER_RULE, EtcdNatTable } from '../state/etcd/nat';
import { EtcdPolicyStore, ON_NO_STATE, type OnNoState } from '../state/etcd/policies';
import { ensureStateDir } from '../state/disk';
import { EtcdRateLimitStore } from '../state/etcd/ratelimit';
import { DEFAULT_MAX_KEYS_PER_RULE, KeyCappedRateLimits } from '../state/ratelimit/key-cap';
import { DEFAULT_MAX_BUCKETS, LocalRateLimitStore } from '../state/ratelimit/local';
import { DEFAULT_BREAKER } from '../state/resilient/breaker';
import { ResilientNatTable } from '../state/resilient/nat';
import { ResilientRateLimitStore } from '../state/resilient/ratelimit';
import { flagOrEnv, intEnv, intOpt, logLevelOpt, MAX_TIMER_MS, stringOpt, UsageError, type Command } from './command';
import { connectFromFlags, etcdConnectionFrom, etcdHelpLines, etcdOptions } from './etcd-flags';
import { boundOpt, policyLimitHelp, policyLimitOptions, policyLimitsFrom } from './policy';

export const serveCommand: Command = {
  name: 'serve',
  summary: 'Run the middlebox gRPC server (Envoy ext_authz Check, ext_proc Process, grpc.health.v1): firewall, rate limits and NAT, state shared in etcd.',
  usage: 'middlebox serve [--listen ADDR] [--http-authz-listen ADDR] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--etcd URLS] [--prefix PREFIX] [--etcd-cacert FILE ...] [--admin-listen ADDR|off]',
  help: [
    `  --listen ADDR            host:port, [ipv6]:port or unix:/path (env MIDDLEBOX_LISTEN, default ${DEFAULTS.listen})`,
    '  --http-authz-listen ADDR also answer Envoy\'s ext_authz filter over plain HTTP/1.1 (its http_service,',
    '                           as `envoy bootstrap --middlebox-http` renders it) on host:port, [ipv6]:port or',
    '                           unix:/path; the same decisions for a quarter to a third less CPU per request',
    '                           (differences: README, "The Envoy side")',
    '                           (env MIDDLEBOX_HTTP_AUTHZ_LISTEN, default off)',
    `  --tls-cert FILE          serve gRPC (and HTTP ext_authz) over TLS with this certificate (chain), with --tls-key (env ${SERVER_TLS_ENV.cert});`,
    '                           default plaintext: see docs/security.md for when that is fine',
    `  --tls-key FILE           the certificate's private key (env ${SERVER_TLS_ENV.key})`,
    '  --tls-client-ca FILE     mTLS: require a client certificate signed by this CA bundle on every',
    `                           connection (Envoy's, health checks included) (env ${SERVER_TLS_ENV.clientCa})`,
    '                           The three files are checked every second and read again when they change',
    '                           (a rotated certificate serves new connections; one that does not load is',
    '                           logged and the current one kept)',
    ...etcdHelpLines(27),
    '  --admin-listen ADDR      admin HTTP port: GET /healthz (liveness), /readyz (readiness: 200 when health',
    '                           "" is SERVING, 503 while starting, without policy or draining), /metrics',
    '                           (Prometheus); host:port, [ipv6]:port, or off',
    `                           (env MIDDLEBOX_ADMIN_LISTEN, default ${DEFAULTS.adminListen})`,
    `  --drain-ms N             on SIGTERM, how long in-flight calls may take (env MIDDLEBOX_DRAIN_MS, default ${DEFAULTS.drainMs})`,
    '  --shutdown-delay-ms N    on SIGTERM, how long to answer NOT_SERVING before closing, so that',
    '                           Envoy health checks notice first (env MIDDLEBOX_SHUTDOWN_DELAY_MS, default 2000)',
    '  --replica-id ID          this replica\'s name in etcd membership (env MIDDLEBOX_REPLICA_ID, default hostname-pid)',
    `  --member-ttl SECONDS     membership lease; a dead replica stops counting towards local limit shares after it (default ${DEFAULT_MEMBER_TTL_S})`,
    `  --etcd-timeout-ms N      one etcd operation's deadline before the local fallback decides; the etcd`,
    `                           breaker opens when a failed operation is confirmed by a read with half that`,
    `                           deadline, or after repeated failures (env MIDDLEBOX_ETCD_TIMEOUT_MS, default ${DEFAULT_BREAKER.timeoutMs})`,
    `  --max-rate-limit-keys N  rate-limit buckets this replica tracks; least recently used dropped first`,
    `                           (env MIDDLEBOX_MAX_RATE_LIMIT_KEYS, default ${DEFAULT_MAX_BUCKETS})`,
    `  --max-keys-per-rate-limit N`,
    `                           distinct keys (\`by\` values) one rate limit tracks on this replica; requests of`,
    `                           further keys share the limit's one overflow bucket, counted in`,
    `                           middlebox_ratelimit_keys_overflow_total (env ${BOUNDS.maxKeysPerRateLimit.env},`,
    `                           default ${DEFAULT_MAX_KEYS_PER_RULE})`,
    `  --max-nat-flows-per-rule N`,
    `                           flow mappings one NAT rule records in etcd, all replicas together; further`,
    `                           flows keep the backend hashing picks, unrecorded, counted in`,
    `                           middlebox_nat_flows_over_cap_total (env ${BOUNDS.maxNatFlowsPerRule.env}, default ${DEFAULT_MAX_NAT_FLOWS_PER_RULE})`,
    `  --max-header-bytes N     request header bytes (names and values) examined per request; more is`,
    `                           refused 431 headers_too_large (env ${BOUNDS.maxHeaderBytes.env}, default ${DEFAULT_TRANSLATION_LIMITS.maxHeaderBytes})`,
    `  --max-message-bytes N    largest gRPC message received or sent; gRPC refuses a bigger one with`,
    `                           RESOURCE_EXHAUSTED (env ${BOUNDS.maxMessageBytes.env}, default ${DEFAULT_MAX_MESSAGE_BYTES})`,
    ...policyLimitHelp(),
    '                           A stored policy past these is refused: the last good version stays, and',
    '                           health middlebox.policy is NOT_SERVING. Give `policy apply` the same.',
    `  --log-level LEVEL        trace|debug|info|warn|error|fatal|silent (env MIDDLEBOX_LOG_LEVEL, default ${DEFAULTS.logLevel});`,
    '                           decision lines are chosen by --decision-log alone',
    '  --decision-log WHICH     a log line per decision: denied (denials and shadow denials), all, or off',
    '                           (env MIDDLEBOX_DECISION_LOG, default denied)',
    '  --decision-log-sample F  share of those decisions logged, 0 to 1 (env MIDDLEBOX_DECISION_LOG_SAMPLE, default 1)',
    `  --log-redact-headers H   comma-separated header names never logged, on top of ${ALWAYS_REDACTED.join(', ')}`,
    '                           (env MIDDLEBOX_LOG_REDACT_HEADERS)',
    '  --state-dir DIR          keep the last good policies and NAT table here (policies.json, nat.json) and',
    '                           start from them while etcd is unreachable; etcd replaces them once it answers;',
    '                           created if missing (env MIDDLEBOX_STATE_DIR, default none: nothing kept)',
    '  --on-no-state CHOICE     with neither etcd nor a state file: fail-closed answers 503 and health',
    '                           NOT_SERVING; fail-open allows everything, SERVING, with a warning every',
    '                           minute (env MIDDLEBOX_ON_NO_STATE, default fail-closed)',
    '',
    'Decisions fail closed (503; over HTTP ext_authz Envoy turns a 5xx into its status_on_error, 403)',
    'until the policies are loaded from etcd or the state dir (unless --on-no-state fail-open).',
    'SIGTERM or SIGINT: health goes NOT_SERVING, in-flight calls finish, the process exits 0.',
  ],
  options: {
    listen: { type: 'string' },
    'http-authz-listen': { type: 'string' },
    ...etcdOptions,
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'tls-client-ca': { type: 'string' },
    'drain-ms': { type: 'string' },
    'shutdown-delay-ms': { type: 'string' },
    'log-level': { type: 'string' },
    'decision-log': { type: 'string' },
    'decision-log-sample': { type: 'string' },
    'log-redact-headers': { type: 'string' },
    'replica-id': { type: 'string' },
    'member-ttl': { type: 'string' },
    'etcd-timeout-ms': { type: 'string' },
    'max-rate-limit-keys': { type: 'string' },
    [BOUNDS.maxKeysPerRateLimit.flag]: { type: 'string' },
    [BOUNDS.maxNatFlowsPerRule.flag]: { type: 'string' },
    [BOUNDS.maxHeaderBytes.flag]: { type: 'string' },
    [BOUNDS.maxMessageBytes.flag]: { type: 'string' },
    ...policyLimitOptions,
    'state-dir': { type: 'string' },
    'on-no-state': { type: 'string' },
    'admin-listen': { type: 'string' },
  },
  async run({ values }) {
    const env = settingsFromEnv();
    const listen = stringOpt(values, 'listen') ?? env.listen;
    checkListen(stringOpt(values, 'listen') !== undefined ? '--listen' : 'MIDDLEBOX_LISTEN', listen);
    const httpAuthz = flagOrEnv(values, 'http-authz-listen', 'MIDDLEBOX_HTTP_AUTHZ_LISTEN');
    const httpAuthzListen = httpAuthz.value;
    if (httpAuthzListen !== undefined) {
      checkListen(httpAuthz.name, httpAuthzListen);
      if (sameAddress(httpAuthzListen, listen)) throw new UsageError(`--http-authz-listen must differ from --listen (both ${listen})`);
    }
    // The etcd flags are the ones every command shares; their files are read (and refused) now.
    const etcdConn = etcdConnectionFrom(values);
    const etcd = etcdConn.settings.endpoints;
    const prefix = etcdConn.prefix;
    const serverTls = serverTlsFrom(values);
    const drainMs = intOpt(values, 'drain-ms', 0, MAX_TIMER_MS) ?? intEnv('MIDDLEBOX_DRAIN_MS', 0, MAX_TIMER_MS) ?? DEFAULTS.drainMs;
    const delayMs = intOpt(values, 'shutdown-delay-ms', 0, MAX_TIMER_MS) ?? intEnv('MIDDLEBOX_SHUTDOWN_DELAY_MS', 0, MAX_TIMER_MS) ?? 2000;
    const memberTtlS = intOpt(values, 'member-ttl', 2, 3600) ?? DEFAULT_MEMBER_TTL_S;
    const etcdTimeoutMs = intOpt(values, 'etcd-timeout-ms', 1, 60_000) ?? intEnv('MIDDLEBOX_ETCD_TIMEOUT_MS', 1, 60_000) ?? DEFAULT_BREAKER.timeoutMs;
    const maxKeys = intOpt(values, 'max-rate-limit-keys', 1) ?? intEnv('MIDDLEBOX_MAX_RATE_LIMIT_KEYS', 1) ?? DEFAULT_MAX_BUCKETS;
    const maxKeysPerRule = boundOpt(values, BOUNDS.maxKeysPerRateLimit, DEFAULT_MAX_KEYS_PER_RULE);
    const maxNatFlowsPerRule = boundOpt(values, BOUNDS.maxNatFlowsPerRule, DEFAULT_MAX_NAT_FLOWS_PER_RULE);
    const maxHeaderBytes = boundOpt(values, BOUNDS.maxHeaderBytes, DEFAULT_TRANSLATION_LIMITS.maxHeaderBytes);
    const maxMessageBytes = boundOpt(values, BOUNDS.maxMessageBytes, DEFAULT_MAX_MESSAGE_BYTES);
    const policyLimits = policyLimitsFrom(values);
    const onNoStateOpt = flagOrEnv(values, 'on-no-state', 'MIDDLEBOX_ON_NO_STATE');
    const onNoState = (onNoStateOpt.value ?? 'fail-closed') as OnNoState;
    if (!ON_NO_STATE.includes(onNoState)) throw new UsageError(`${onNoStateOpt.name} must be ${ON_NO_STATE.join(' or ')}, got ${JSON.stringify(onNoState)}`);
    const adminListenFlag = stringOpt(values, 'admin-listen');
    const adminListen = adminListenFlag ?? env.adminListen;
    const adminSource = adminListenFlag !== undefined ? '--admin-listen' : 'MIDDLEBOX_ADMIN_LISTEN';
    if (adminListen !== ADMIN_OFF && !parseAdminListen(adminListen)) {
      throw new UsageError(`${adminSource} must be host:port, [ipv6]:port or ${ADMIN_OFF}, got ${JSON.stringify(adminListen)}`);
    }
    for (const [other, address] of [['--listen', listen], ['--http-authz-listen', httpAuthzListen]] as const) {
      if (address !== undefined && sameAddress(address, adminListen)) throw new UsageError(`${adminSource} must differ from ${other} (both ${address})`);
    }
    if (stringOpt(values, 'state-dir')?.trim() === '') throw new UsageError('--state-dir must name a directory, got ""');
    const stateDirOpt = flagOrEnv(values, 'state-dir', 'MIDDLEBOX_STATE_DIR').value;
    const { value: replicaId, name: replicaIdName } = flagOrEnv(values, 'replica-id', 'MIDDLEBOX_REPLICA_ID');
    // One etcd key per replica: replicas sharing a name would count as one in every local share.
    if (replicaId !== undefined && !/^[^\s/]{1,253}$/.test(replicaId)) {
      throw new UsageError(`${replicaIdName} must be 1 to 253 characters with no space or '/', got ${JSON.stringify(replicaId)}`);
    }
    const stateDir = stateDirOpt !== undefined ? ensureStateDir(stateDirOpt) : undefined;
    const logger = createLogger({ level: logLevelOpt(values, DEFAULTS.logLevel) });
    let decisionLog: DecisionLog;
    const mode = flagOrEnv(values, 'decision-log', 'MIDDLEBOX_DECISION_LOG');
    const sample = flagOrEnv(values, 'decision-log-sample', 'MIDDLEBOX_DECISION_LOG_SAMPLE');
    try {
      decisionLog = new DecisionLog(
        // --decision-log chooses the decision lines, whatever --log-level says of the others.
        logger.child({}, { level: 'info' }),
        decisionLogSettings(mode.value, sample.value, stringOpt(values, 'log-redact-headers') ?? process.env.MIDDLEBOX_LOG_REDACT_HEADERS ?? '', { mode: mode.name, sample: sample.name }),
      );
    } catch (e) {
      throw new UsageError((e as Error).message);
    }

    // The admin port first: liveness answers while the rest starts, and readiness says "starting".
    const metrics = new MiddleboxMetrics();
    let server: RunningServer | undefined;
    const admin =
      adminListen === ADMIN_OFF
        ? undefined
        : await startAdminServer({ listen: adminListen, metrics, logger, readiness: () => server?.health.readiness() ?? { ready: false, reason: 'starting' } });

    const client = connectFromFlags(etcdConn);
    const etcdCheck = checkEtcdAccess(client, prefix, etcdConn.context, logger);
    const policies = EtcdPolicyStore.open({ client, prefix, logger, stateDir, onNoState, limits: policyLimits });
    metrics.watchPolicies(policies);
    const membership = EtcdMembership.join({ client, prefix, logger, id: replicaId, ttlS: memberTtlS });
    const replicas = () => membership.count();
    // Every per-request etcd operation goes through one breaker; its fallbacks live in state/resilient.
    const breaker = new MeteredBreaker(logger, { ...DEFAULT_BREAKER, timeoutMs: etcdTimeoutMs, confirmTimeoutMs: Math.round(etcdTimeoutMs / 2) }, () => client.get(`${prefix}/replicas/`).exec(), metrics);
    metrics.watchBreaker(breaker);
    const sharedLimits = new EtcdRateLimitStore({
      client,
      prefix,
      logger,
      replicas,
      maxBuckets: maxKeys,
      guard: (op, operation) => breaker.runAs(operation ?? 'cas', op),
    });
    const resilientLimits = new ResilientRateLimitStore(sharedLimits, new LocalRateLimitStore({ replicas, maxBuckets: maxKeys }), breaker, logger);
    const rateLimits = new KeyCappedRateLimits(resilientLimits, { maxKeysPerRule, logger });
    metrics.watchRateLimits({ shared: sharedLimits, resilient: resilientLimits, keys: rateLimits });
    const natTable = EtcdNatTable.open({ client, prefix, logger, stateDir, maxFlowsPerRule: maxNatFlowsPerRule });
    const nat = new ResilientNatTable(natTable, breaker, logger);
    metrics.watchNat({ table: natTable, resilient: nat });
    server = await startServer({
      listen,
      policies,
      ports: { rateLimits, nat },
      logger,
      breaker,
      metrics,
      decisionLog,
      tls: serverTls,
      limits: { maxHeaderBytes },
      maxMessageBytes,
      httpAuthzListen,
    });
    const running = server;

    return new Promise<number>((resolve) => {
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        logger.info({ signal, delayMs, drainMs }, 'shutting down: NOT_SERVING, draining in-flight calls');
        // Calls keep coming until Envoy sees NOT_SERVING; leased limits stop taking blocks now and
        // hand what their pools hold back to etcd, so the replicas that stay can admit it.
        const givingBack = sharedLimits.leave().then(
          (tokens) => {
            if (tokens > 0) logger.info({ tokens }, 'gave unspent leased tokens back to etcd');
          },
          (e: Error) => logger.warn({ err: e.message }, 'could not give leased tokens back to etcd: they lapse with their window'),
        );
        // The admin port stays up while draining (/readyz answers 503) and closes last.
        void running
          .shutdown({ delayMs, drainMs })
          // The give-back goes through the breaker: it must be done (or given up) before the
          // breaker shuts down, or what it had left would fail and lapse.
          .then(() =>
            boundedWait(givingBack, LEAVE_ETCD_MS, () =>
              logger.warn({ waitedMs: LEAVE_ETCD_MS }, 'etcd did not take all unspent leased tokens back while leaving: the rest lapse with their window'),
            ),
          )
          .then(() => etcdCheck.stop())
          .then(() => breaker.shutdown())
          // Leaving membership and closing watches need etcd; a frozen or gone etcd must not hold
          // the exit (the membership lease then expires by itself after --member-ttl).
          .then(() =>
            boundedWait(Promise.all([policies.close(), membership.leave(), natTable.close()]), LEAVE_ETCD_MS, () =>
              logger.warn({ waitedMs: LEAVE_ETCD_MS, memberTtlS }, 'etcd did not answer while leaving: exiting anyway; the membership lease expires by itself'),
            ),
          )
          .then(() => client.close())
          .then(() => admin?.close())
          .then(() => {
            logger.info('stopped');
            logger.flush();
            resolve(0);
          });
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      // Said once the signals are handled: whoever waits for this line may stop the replica at once.
      logger.info({ listen: server.address, httpAuthz: server.httpAuthzAddress, tls: tlsMode(serverTls), etcdTls: Boolean(etcdConn.settings.tls) || etcd.some((e) => e.startsWith('https:')), etcdUser: etcdConn.settings.auth?.username, admin: admin?.address ?? ADMIN_OFF, etcd, prefix, replica: membership.id, stateDir, onNoState, bounds: { ...policyLimits, maxKeysPerRule, maxNatFlowsPerRule, maxHeaderBytes, maxMessageBytes } }, 'middlebox serving');
    });
  },
};

/** How long shutdown waits for etcd to take the replica out of membership. */
const LEAVE_ETCD_MS = 2000;

/** Resolves when `work` settles or after `ms`, whichever comes first (calling `onTimeout` then). */
function boundedWait(work: Promise<unknown>, ms: number, onTimeout: () => void): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      onTimeout();
      resolve();
    }, ms);
    work.then(
      () => undefined,
      () => undefined,
    ).finally(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * `--tls-cert`, `--tls-key`, `--tls-client-ca` (or their env vars), read and checked before anything
 * starts: a missing file or a key that does not match its certificate stops the command with one line.
 */
function serverTlsFrom(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): ServerTls | undefined {
  // Each file with the flag or variable that named it, for messages.
  const cert = flagOrEnv(values, 'tls-cert', SERVER_TLS_ENV.cert, env);
  const key = flagOrEnv(values, 'tls-key', SERVER_TLS_ENV.key, env);
  const ca = flagOrEnv(values, 'tls-client-ca', SERVER_TLS_ENV.clientCa, env);
  const [certFile, keyFile, caFile] = [cert.value, key.value, ca.value];
  if (certFile === undefined && keyFile === undefined) {
    if (caFile !== undefined) throw new UsageError(`${ca.name} (mTLS) needs --tls-cert and --tls-key: the server must present a certificate too`);
    return undefined;
  }
  if (certFile === undefined || keyFile === undefined) {
    throw new UsageError(`${certFile !== undefined ? cert.name : key.name} needs ${certFile !== undefined ? '--tls-key' : '--tls-cert'} too: --tls-cert and --tls-key go together`);
  }
  const read = (flag: string, file: string) => {
    try {
      return readFileSync(file);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new MiddleboxError('file_not_found', `${flag} ${file}: cannot read it (${err.code ?? err.message})`);
    }
  };
  const tls: ServerTls = {
    cert: read(cert.name, certFile),
    key: read(key.name, keyFile),
    clientCa: caFile === undefined ? undefined : read(ca.name, caFile),
    // Watched: a rotated certificate is served to new connections without a restart.
    files: { cert: certFile, key: keyFile, clientCa: caFile },
  };
  try {
    createSecureContext({ cert: tls.cert, key: tls.key, ca: tls.clientCa });
  } catch (e) {
    throw new MiddleboxError('file_not_found', `--tls-cert ${certFile}, --tls-key ${keyFile}${caFile ? `, --tls-client-ca ${caFile}` : ''}: do not load (${(e as Error).message})`);
  }
  return tls;
}

function tlsMode(tls: ServerTls | undefined): 'off' | 'tls' | 'mtls' {
  return !tls ? 'off' : tls.clientCa ? 'mtls' : 'tls';
}

/**
 * Reads etcd once at start (and again with backoff until it answers) to say, in one clear log line,
 * when etcd refuses this replica's credentials or TLS: the watches' own retries only log etcd's raw
 * error. The replica keeps running as it would with an unreachable etcd (the state dir, --on-no-state).
 */
function checkEtcdAccess(client: Etcd3, prefix: string, context: EtcdErrorContext, logger: Logger): { stop(): void } {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let backoffMs = 1000;
  const attempt = async () => {
    try {
      await client.get(`${prefix}/replicas/`).exec();
    } catch (e) {
      if (stopped) return;
      const problem = classifyEtcdError(e, context);
      if (problem.kind === 'auth' || problem.kind === 'tls') {
        logger.error({ etcd: context.endpoints, problem: problem.kind }, problem.message);
      }
      timer = setTimeout(() => void attempt(), backoffMs);
      timer.unref();
      backoffMs = Math.min(backoffMs * 2, 30_000);
    }
  };
  void attempt();
  return {
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}

/** Two listen addresses that would be one socket (port 0 picks a free port for each: never the same). */
export function sameAddress(a: string, b: string): boolean {
  return a === b && !/:0$/.test(a);
}

/** parseListen's check, with the flag or variable the address came from in its message. */
function checkListen(source: string, address: string): void {
  try {
    parseListen(address);
  } catch (e) {
    throw new UsageError(`${source}: ${(e as Error).message}`);
  }
}
