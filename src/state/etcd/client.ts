import { noop } from 'cockatiel';
import { Etcd3, type IOptions } from 'etcd3';
import { MiddleboxError } from '../../errors';

export interface EtcdSettings {
  endpoints: string[];
  /** How long one dial may take before the call fails. */
  dialTimeoutMs?: number;
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
    // The client's own retries and circuit breaker would hide an outage behind long waits and a
    // second breaker; middlebox decides about retries and fallback itself (state/).
    faultHandling: { global: noop, host: () => noop },
  };
  return new Etcd3(options);
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
