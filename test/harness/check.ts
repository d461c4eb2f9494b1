// Talks to a middlebox replica as Envoy does: envoy.service.auth.v3.Authorization/Check.
import * as grpc from '@grpc/grpc-js';
import type { CheckRequest, CheckResponse } from '../../src/grpc/envoy-types';
import { authorizationClient } from '../../src/grpc/protos';

export class CheckClient {
  private readonly client: grpc.Client & { Check: Function };

  constructor(address: string) {
    const Ctor = authorizationClient();
    this.client = new Ctor(address, grpc.credentials.createInsecure()) as never;
  }

  check(req: CheckRequest, timeoutMs = 2000): Promise<CheckResponse> {
    return new Promise((resolve, reject) =>
      this.client.Check(req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: CheckResponse) =>
        err ? reject(err) : resolve(res),
      ),
    );
  }

  close(): void {
    this.client.close();
  }
}

/** A CheckRequest as Envoy's HTTP ext_authz filter sends it. */
export function httpCheck(opts: { path?: string; method?: string; source?: string; host?: string; headers?: Record<string, string> } = {}): CheckRequest {
  return {
    attributes: {
      source: { address: { socket_address: { address: opts.source ?? '127.0.0.1', port_value: 40000 } } },
      destination: { address: { socket_address: { address: '127.0.0.1', port_value: 15006 } } },
      request: {
        http: {
          id: `test-${Math.random().toString(36).slice(2)}`,
          method: opts.method ?? 'GET',
          path: opts.path ?? '/',
          host: opts.host ?? 'app.local',
          headers: { ':method': opts.method ?? 'GET', ':path': opts.path ?? '/', ...opts.headers },
        },
      },
    },
  };
}

/** The HTTP status Envoy would answer with: 200 for allow, else the denied status. */
export function statusOf(res: CheckResponse): number {
  // proto3 leaves zero values off the wire, so an OK status decodes without a code.
  return (res.status?.code ?? 0) === 0 ? 200 : res.denied_response?.status?.code ?? 403;
}
