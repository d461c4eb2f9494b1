import { circuitBreaker, ConsecutiveBreaker, handleWhen, noop, retry } from 'cockatiel';
import { Etcd3, EtcdAuthenticationFailedError, isRecoverableError, type IOptions } from 'etcd3';
import { MiddleboxError } from '../../errors';

export interface EtcdSettings {
  endpoints: string[];
  /** How long one dial may take before the call fails. */
  dialTimeoutMs?: number;
  /** Deadline of every unary etcd call. */
  callDeadlineMs?: number;
  /** TLS to etcd (https:// endpoints only): the CA to trust and, for client-certificate auth, a certificate and key. */
  tls?: EtcdTls;
  /** etcd's user name and password authentication. */
  auth?: EtcdAuth;
}

/** PEM contents, as read from --etcd-cacert, --etcd-cert and --etcd-key. */
export interface EtcdTls {
  /** CA bundle that signed etcd's server certificate; omitted: the system's roots. */
  ca?: Buffer;
  /** Client certificate (chain) and its key, together or not at all. */
  cert?: Buffer;
  key?: Buffer;
}

export interface EtcdAuth {
  username: string;
  password: string;
}

export function connectEtcd(settings: EtcdSettings): Etcd3 {
  const protocols = new Set<string>();
  for (const e of settings.endpoints) {
    let url: URL;
    try {
      url = new URL(e);
    } catch {
      throw new MiddleboxError('bad_etcd_endpoint', `etcd endpoint ${JSON.stringify(e)} is not a URL (expected http://host:port)`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new MiddleboxError('bad_etcd_endpoint', `etcd endpoint ${JSON.stringify(e)} must start with http:// or https://`);
    }
    protocols.add(url.protocol);
  }
  if (protocols.size > 1) {
    throw new MiddleboxError('bad_etcd_endpoint', 'etcd endpoints must all be http:// or all https://, not a mix');
  }
  const tls = settings.tls;
  if (tls && (tls.ca || tls.cert || tls.key)) {
    if (protocols.has('http:')) {
      throw new MiddleboxError('bad_etcd_endpoint', 'etcd TLS settings need https:// endpoints; http:// is plaintext');
    }
    if (Boolean(tls.cert) !== Boolean(tls.key)) {
      throw new MiddleboxError('bad_etcd_endpoint', 'an etcd client certificate and its key go together');
    }
  }
  if (settings.auth && (!settings.auth.username || !settings.auth.password)) {
    throw new MiddleboxError('bad_etcd_endpoint', 'etcd authentication needs a user name and a password');
  }
  if (protocols.has('https:')) quietIpServerNameWarning();
  const options: IOptions = {
    hosts: settings.endpoints,
    dialTimeout: settings.dialTimeoutMs ?? 2000,
    faultHandling: failover(settings.endpoints.length),
    // A call to a frozen etcd must fail, not hang: the breaker times requests out much sooner, but
    // the calls behind them (and the CLI's) need an end too. Watches and lease keep-alives are streams.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + (settings.callDeadlineMs ?? 3000) }),
  };
  if (tls && (tls.ca || tls.cert)) {
    // gRPC takes null for "the system's roots"; etcd3's type insists on a Buffer.
    options.credentials = { rootCertificate: (tls.ca ?? null) as Buffer, certChain: tls.cert, privateKey: tls.key };
  }
  if (settings.auth) {
    const { username, password } = settings.auth;
    // The token exchange gets the same deadline as any unary call: a wrong or frozen etcd must not hang it.
    options.auth = { username, password, callOptions: () => ({ deadline: Date.now() + (settings.callDeadlineMs ?? 3000) }) };
  }
  const client = new Etcd3(options);
  if (settings.auth) freshTokenForWatchStreams(client);
  return client;
}

/** The parts of etcd3's connection pool that freshTokenForWatchStreams reaches into. */
interface PoolInternals {
  withConnection(service: string, ...rest: unknown[]): Promise<unknown>;
  authenticator?: { invalidateMetadata(): void };
}

/**
 * etcd3 caches the token of a user and password for every call, and only renews it when a unary
 * call is refused. etcd forgets its simple tokens when it restarts and after --auth-token-ttl (5
 * minutes) unused; a watch stream re-established with the stale token then has every watch
 * cancelled ("invalid auth token") for good, and a replica would stop following policy changes.
 * So every new watch stream (rare: start and reconnects) authenticates afresh. Without those
 * internals (another etcd3 version) nothing changes.
 */
function freshTokenForWatchStreams(client: Etcd3): void {
  const pool = (client as unknown as { pool?: PoolInternals }).pool;
  if (!pool || typeof pool.withConnection !== 'function' || typeof pool.authenticator?.invalidateMetadata !== 'function') return;
  const withConnection = pool.withConnection.bind(pool);
  const authenticator = pool.authenticator;
  pool.withConnection = (service: string, ...rest: unknown[]) => {
    if (service === 'Watch') authenticator.invalidateMetadata();
    return withConnection(service, ...rest);
  };
}

/**
 * gRPC sends the endpoint's host as TLS server name (SNI) even when it is an IP address, and Node
 * then warns once (DEP0123) on stderr, which would break the CLI's one-line errors and the JSON
 * logs. The certificate is still checked against the IP (its IP SANs); only the warning goes.
 */
let ipServerNameWarningQuieted = false;
export function quietIpServerNameWarning(): void {
  if (ipServerNameWarningQuieted) return;
  ipServerNameWarningQuieted = true;
  const emit = process.emitWarning;
  process.emitWarning = function (this: unknown, warning: string | Error, ...rest: unknown[]) {
    const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
    if (code === 'DEP0123') return;
    return (emit as (...a: unknown[]) => void).call(process, warning, ...rest);
  } as typeof process.emitWarning;
}

/** What a caller knows about the connection, to say what to fix. */
export interface EtcdErrorContext {
  endpoints: string[];
  username?: string;
  /** Whether a client certificate was given. */
  clientCert?: boolean;
}

/** What went wrong talking to etcd, in the user's terms. */
export interface EtcdProblem {
  /** auth: credentials refused; tls: the TLS handshake failed; unreachable: no connection; other: anything else. */
  kind: 'auth' | 'tls' | 'unreachable' | 'other';
  message: string;
}

/** Reads an etcd client failure: TLS and authentication problems get one clear, actionable line. */
export function classifyEtcdError(e: unknown, ctx: EtcdErrorContext): EtcdProblem {
  const raw = e instanceof Error ? e.message : String(e);
  const at = ctx.endpoints.join(',');
  const detail = cleanGrpcMessage(raw);
  const user = JSON.stringify(ctx.username ?? '');
  if (e instanceof EtcdAuthenticationFailedError || /authentication failed, invalid user ID or password/.test(raw)) {
    return { kind: 'auth', message: `etcd at ${at} refused user ${user}: wrong user name or password (etcdserver: authentication failed)` };
  }
  if (/etcdserver: user name is empty/.test(raw)) {
    return {
      kind: 'auth',
      message: `etcd at ${at} requires authentication: give --etcd-user and a password (MIDDLEBOX_ETCD_PASSWORD or --etcd-password-file), or a client certificate`,
    };
  }
  if (/etcdserver: permission denied/.test(raw)) {
    const who = ctx.username !== undefined ? `user ${user}` : ctx.clientCert ? "the client certificate's user (its CN)" : 'this client';
    return { kind: 'auth', message: `etcd at ${at} denied ${who} access (etcdserver: permission denied): its role needs readwrite on the prefix` };
  }
  if (/alert bad certificate|alert certificate required|alert unknown ca|alert certificate unknown|SSL alert number (42|46|48|116)\b/.test(raw)) {
    return {
      kind: 'tls',
      message: ctx.clientCert
        ? `etcd at ${at} refused the client certificate (TLS alert: ${tlsAlert(raw)}): it must be signed by a CA that etcd trusts (its --trusted-ca-file)`
        : `etcd at ${at} requires a client certificate (TLS alert: ${tlsAlert(raw)}): give --etcd-cert and --etcd-key`,
    };
  }
  const verify = /(unable to verify the first certificate|self[- ]signed certificate[^.]*|unable to get local issuer certificate|certificate has expired|certificate is not yet valid|Hostname\/IP does not match certificate's altnames[^.]*|ERR_TLS_CERT_ALTNAME_INVALID)/.exec(raw);
  if (verify) {
    return {
      kind: 'tls',
      message: `etcd's certificate at ${at} is not trusted (${verify[1]}): give --etcd-cacert with the CA that signed it, and an endpoint host that the certificate names`,
    };
  }
  if (/wrong version number|packet length too long|disconnected before secure TLS connection was established|unexpected eof while reading/i.test(raw)) {
    return {
      kind: 'tls',
      message: `etcd at ${at} did not complete a TLS handshake (${detail}): is it serving TLS on that port? A plaintext etcd needs an http:// endpoint`,
    };
  }
  if (/UNAVAILABLE|No connection established/.test(raw)) {
    const hint = /Failed to connect|Connection dropped|Protocol error/i.test(raw) && at.startsWith('http:') ? ' (if etcd serves TLS, use an https:// endpoint)' : '';
    return { kind: 'unreachable', message: `cannot reach etcd at ${at}: ${detail}${hint}` };
  }
  return { kind: 'other', message: raw };
}

/**
 * An etcd client failure as the CLI reports it: TLS, authentication and connection problems become
 * one clear line (a MiddleboxError 'etcd_unavailable'); anything else is returned unchanged.
 */
export function explainEtcdError(e: unknown, ctx: EtcdErrorContext): unknown {
  if (!(e instanceof Error)) return e;
  const problem = classifyEtcdError(e, ctx);
  return problem.kind === 'other' ? e : new MiddleboxError('etcd_unavailable', problem.message);
}

/** gRPC's "14 UNAVAILABLE: No connection established. Last error: X (time). Resolution note: " → "X". */
function cleanGrpcMessage(message: string): string {
  const last = /No connection established\. Last error: (.*)$/s.exec(message);
  let m = last ? last[1]! : message.replace(/^(?:.*: )?\d+ [A-Z_]+: /s, '');
  m = m.replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)/g, '').replace(/\.?\s*Resolution note:.*$/s, '');
  // OpenSSL's "80FC...:error:0A000412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate:../ssl/x.c:1601:SSL alert number 42".
  const ssl = /SSL routines:[^:]*:([^:]+)/.exec(m);
  if (ssl) return ssl[1]!.trim();
  return m.replace(/^Error: /, '').trim();
}

function tlsAlert(message: string): string {
  return /(?:sslv3|tlsv1[0-9]?) alert ([a-z ]+)/i.exec(message)?.[1]?.trim() ?? cleanGrpcMessage(message);
}

/**
 * With one endpoint there is nothing to fail over to: a failure goes straight to the caller, and the
 * breaker in state/ decides (the client's own retries would only hide an outage behind long waits).
 * With several members, a call that could not reach its member is retried once on each other member,
 * and a member that refused a connection is skipped for a second, so losing one member of three costs
 * nothing (and is not mistaken for an etcd outage).
 */
function failover(endpoints: number): IOptions['faultHandling'] {
  if (endpoints < 2) return { global: noop, host: () => noop };
  return {
    global: retry(handleWhen(isRecoverableError), { maxAttempts: endpoints - 1 }),
    host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: 1000, breaker: new ConsecutiveBreaker(1) }),
  };
}

/** Runs an etcd call with a deadline; an unreachable etcd becomes a clear, coded error. */
export async function withDeadline<T>(what: string, ms: number, call: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new MiddleboxError('etcd_unavailable', `etcd did not answer ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([call(), deadline]);
  } catch (e) {
    if (e instanceof MiddleboxError) throw e;
    throw new MiddleboxError('etcd_unavailable', `etcd ${what} failed: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}

/** An outcome that says nothing about etcd's health (lost compare-and-swap races): never trips the breaker. */
export class NotAnEtcdFailure extends Error {}
