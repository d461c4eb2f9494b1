// grpc.health.v1.Health with per-component status. Service names:
//   ""                                    the whole server (what Kubernetes probes ask)
//   "envoy.service.auth.v3.Authorization" what Envoy's active health check asks (ext_authz)
//   "envoy.service.ext_proc.v3.ExternalProcessor"  the same for ext_proc
//   "middlebox.policy"                    NOT_SERVING while a stored policy is refused (the last
//                                         good one stays in force) or before the first load
//   "middlebox.etcd"                      NOT_SERVING while the policy watch is disconnected or the
//                                         etcd breaker is not closed: the replica is degraded, deciding
//                                         from local state (the server itself stays SERVING)
import type * as grpc from '@grpc/grpc-js';
import type { ServiceHost } from './transport';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import type { PolicySource } from '../state/port';
import type { EtcdBreaker } from '../state/resilient/breaker';
import { AUTHORIZATION_SERVICE, EXTERNAL_PROCESSOR_SERVICE } from './protos';

export const POLICY_COMPONENT = 'middlebox.policy';
export const ETCD_COMPONENT = 'middlebox.etcd';
const SERVING_SERVICES = ['', AUTHORIZATION_SERVICE, EXTERNAL_PROCESSOR_SERVICE];

export class ServerHealth {
  private readonly impl = new HealthImplementation();
  private draining = false;

  constructor(
    private readonly policies: PolicySource,
    private readonly breaker?: EtcdBreaker,
  ) {
    this.refresh();
    policies.onChange(() => this.refresh());
    breaker?.onTransition(() => this.refresh());
  }

  addToServer(server: ServiceHost): void {
    // HealthImplementation only calls addService (check: unary, watch: server-streaming), which
    // every ServiceHost has; its signature names grpc-js's Server.
    this.impl.addToServer(server as grpc.Server);
  }

  /** SIGTERM: every service NOT_SERVING so that Envoy and Kubernetes stop sending new work. */
  drain(): void {
    this.draining = true;
    this.refresh();
  }

  /** What service "" says, as the admin port's /readyz reports it: serving, and if not, why. */
  readiness(): { ready: boolean; reason?: 'draining' | 'policy_not_loaded' } {
    if (this.draining) return { ready: false, reason: 'draining' };
    // Serving needs a policy in force; a refused update does not stop serving (the last good one holds).
    return this.policies.status().loaded ? { ready: true } : { ready: false, reason: 'policy_not_loaded' };
  }

  refresh(): void {
    const status = this.policies.status();
    const serving: ServingStatus = this.readiness().ready ? 'SERVING' : 'NOT_SERVING';
    for (const s of SERVING_SERVICES) this.impl.setStatus(s, serving);
    this.impl.setStatus(POLICY_COMPONENT, status.loaded && status.rejected.length === 0 ? 'SERVING' : 'NOT_SERVING');
    this.impl.setStatus(ETCD_COMPONENT, status.connected && !this.breaker?.isDegraded ? 'SERVING' : 'NOT_SERVING');
  }
}
