// grpc.health.v1.Health with per-component status. Service names:
//   ""                                    the whole server (what Kubernetes probes ask)
//   "envoy.service.auth.v3.Authorization" what Envoy's active health check asks (ext_authz)
//   "envoy.service.ext_proc.v3.ExternalProcessor"  the same for ext_proc
//   "middlebox.policy"                    NOT_SERVING while a stored policy is refused (the last
//                                         good one stays in force) or before the first load
//   "middlebox.etcd"                      NOT_SERVING while the policy watch is disconnected or the
//                                         etcd breaker is not closed: the replica is degraded, deciding
//                                         from local state (the server itself stays SERVING)
import * as grpc from '@grpc/grpc-js';
import type { ServiceHost } from './transport';
import { service as HEALTH_SERVICE, type ServingStatus } from 'grpc-health-check';
import type { PolicySource } from '../state/port';
import type { EtcdBreaker } from '../state/resilient/breaker';
import { AUTHORIZATION_SERVICE, EXTERNAL_PROCESSOR_SERVICE } from './protos';

export const POLICY_COMPONENT = 'middlebox.policy';
export const ETCD_COMPONENT = 'middlebox.etcd';
const SERVING_SERVICES = ['', AUTHORIZATION_SERVICE, EXTERNAL_PROCESSOR_SERVICE];

/** Watch streams open at once, all clients together; past it a Watch is refused (RESOURCE_EXHAUSTED). */
export const DEFAULT_MAX_HEALTH_WATCHES = 1000;

type Status = ServingStatus | 'SERVICE_UNKNOWN';

/** What the handlers use of a call (the transport's, as grpc-js's). */
interface UnaryCall {
  request: { service?: string };
}
interface WatchCall extends UnaryCall {
  write(message: { status: Status }): unknown;
  end(): void;
  on(event: 'cancelled', listener: () => void): unknown;
  emit(event: 'error', status: Partial<grpc.StatusObject>): unknown;
}
type Callback = (err: Partial<grpc.StatusObject> | null, value?: unknown) => void;

export class ServerHealth {
  private readonly statuses = new Map<string, ServingStatus>();
  /**
   * Open Watch calls. Only these: a name a client watched holds nothing once its call has gone. An
   * unknown name is kept as undefined (no status is ever set for it).
   */
  private readonly watches = new Set<{ service: string | undefined; call: WatchCall }>();
  private draining = false;
  private closed = false;

  constructor(
    private readonly policies: PolicySource,
    private readonly breaker?: EtcdBreaker,
    private readonly maxWatches = DEFAULT_MAX_HEALTH_WATCHES,
  ) {
    this.refresh();
    policies.onChange(() => this.refresh());
    breaker?.onTransition(() => this.refresh());
  }

  /** Watch calls open now. */
  get watching(): number {
    return this.watches.size;
  }

  /** The service names open Watch calls hold (an unknown one is not held). */
  watchedNames(): string[] {
    return [...this.watches].flatMap((w) => (w.service === undefined ? [] : [w.service]));
  }

  addToServer(server: ServiceHost): void {
    server.addService(HEALTH_SERVICE as unknown as grpc.ServiceDefinition, {
      check: (call: UnaryCall, callback: Callback) => {
        const status = this.statuses.get(call.request.service ?? '');
        if (status) callback(null, { status });
        else callback({ code: grpc.status.NOT_FOUND, details: 'unknown service' });
      },
      // The status now, then each change, until the client goes or the server stops (close()). An
      // unknown name gets SERVICE_UNKNOWN and stays open, as the protocol asks.
      watch: (call: WatchCall) => {
        const service = call.request.service ?? '';
        const status: Status = this.statuses.get(service) ?? 'SERVICE_UNKNOWN';
        if (this.closed) {
          call.write({ status });
          call.end();
          return;
        }
        if (this.watches.size >= this.maxWatches) {
          call.emit('error', { code: grpc.status.RESOURCE_EXHAUSTED, details: `${this.maxWatches} health watches open already` });
          return;
        }
        // A name with no status never gets one (the names are fixed): it is not kept, whatever its size
        // (nor by the call, which lives as long as the Watch).
        const known = this.statuses.has(service);
        if (!known) call.request.service = undefined;
        const watch = { service: known ? service : undefined, call };
        this.watches.add(watch);
        call.on('cancelled', () => this.watches.delete(watch));
        call.write({ status });
      },
      list: (_call: unknown, callback: Callback) => {
        callback(null, { statuses: Object.fromEntries([...this.statuses].map(([name, status]) => [name, { status }])) });
      },
    });
  }

  /** SIGTERM: every service NOT_SERVING so that Envoy and Kubernetes stop sending new work. */
  drain(): void {
    this.draining = true;
    this.refresh();
  }

  /**
   * The server is about to wait for its calls to finish: Watch calls, which never do, are ended
   * (with the last status sent), so that they do not hold the shutdown until its drain time is up.
   */
  close(): void {
    this.closed = true;
    for (const { call } of this.watches) call.end();
    this.watches.clear();
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
    for (const s of SERVING_SERVICES) this.set(s, serving);
    this.set(POLICY_COMPONENT, status.loaded && status.rejected.length === 0 ? 'SERVING' : 'NOT_SERVING');
    this.set(ETCD_COMPONENT, status.connected && !this.breaker?.isDegraded ? 'SERVING' : 'NOT_SERVING');
  }

  /** Watchers hear of a change, not of every refresh. */
  private set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const w of this.watches) if (w.service === service) w.call.write({ status });
  }
}
