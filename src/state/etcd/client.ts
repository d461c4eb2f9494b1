import { circuitBreaker, ConsecutiveBreaker, handleWhen, noop, retry } from 'cockatiel';
import { Etcd3, isRecoverableError, type IOptions } from 'etcd3';
import { MiddleboxError } from '../../errors';

export interface EtcdSettings {
  endpoints: string[];
  /** How long one dial may take before the call fails. */
  dialTimeoutMs?: number;
  /** Deadline of every unary etcd call. */
  callDeadlineMs?: number;
}

export function connectEtcd(settings: EtcdSettings): Etcd3 {
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
  }
  const options: IOptions = {
    hosts: settings.endpoints,
    dialTimeout: settings.dialTimeoutMs ?? 2000,
    faultHandling: failover(settings.endpoints.length),
    // A call to a frozen etcd must fail, not hang: the breaker times requests out much sooner, but
    // the calls behind them (and the CLI's) need an end too. Watches and lease keep-alives are streams.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + (settings.callDeadlineMs ?? 3000) }),
  };
  return new Etcd3(options);
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
