// envoy.service.auth.v3.Authorization/Check: translate → decide → respond → one decision log line.
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { decide, type DecisionPorts } from '../../middlebox/pipeline';
import type { RequestAttributes, Verdict } from '../../middlebox/types';
import { DecisionLog } from '../../observability/decision-log';
import type { Logger } from '../../observability/logger';
import type { DecisionMetrics } from '../../observability/metrics';
import type { PolicySource } from '../../state/port';
import type { CheckRequest, CheckResponse } from '../envoy-types';
import { fastAuthorizationService, RpcCode } from '../protos';
import type { ServiceHost, UnaryCall, UnaryCallbackOf } from '../transport';
import { checkResponse, OWN_HEADER_PREFIX } from './response';
import { DEFAULT_TRANSLATION_LIMITS, translateCheckRequest, type TranslationLimits } from './request';

export interface AuthorizationDeps {
  policies: PolicySource;
  ports: DecisionPorts;
  logger: Logger;
  limits?: TranslationLimits;
  metrics?: DecisionMetrics;
  /** Which decisions get a log line (default: denials, every one). */
  decisionLog?: DecisionLog;
}

export interface CheckOutcome {
  response: CheckResponse;
  verdict: Verdict;
  decisionId: string;
}

/** When shared state cannot answer, the request is refused (503) rather than decided blindly. */
const STATE_UNAVAILABLE: Verdict = { allow: false, status: 503, reason: 'state_unavailable' };

export class AuthorizationService {
  private readonly limits: TranslationLimits;
  private readonly decisionLog: DecisionLog;

  constructor(private readonly deps: AuthorizationDeps) {
    this.limits = deps.limits ?? DEFAULT_TRANSLATION_LIMITS;
    this.decisionLog = deps.decisionLog ?? new DecisionLog(deps.logger);
  }

  addToServer(server: ServiceHost): void {
    server.addService(fastAuthorizationService(), { Check: this.check });
  }

  /** The whole decision for one CheckRequest; synchronous unless a limit asks shared state. */
  readonly decideCheck = (msg: CheckRequest): CheckOutcome | Promise<CheckOutcome> => {
    const started = performance.now();
    const translation = translateCheckRequest(msg, this.limits);
    if (!translation.ok) {
      const decisionId = randomUUID();
      const verdict: Verdict = { allow: false, status: translation.status, reason: translation.reason };
      this.deps.logger.info({ decision: decisionId, reason: translation.reason, detail: translation.message }, 'request refused');
      this.deps.metrics?.decided('ext_authz', verdict, (performance.now() - started) / 1000);
      return { response: checkResponse(verdict, decisionId, 'http'), verdict, decisionId };
    }
    const req = translation.request;
    const decisionId = req.requestId || randomUUID();
    const verdict = decide(this.deps.policies.snapshot(), req, this.deps.ports, Date.now());
    if (verdict instanceof Promise) {
      return verdict.then(
        (v) => this.respond(req, decisionId, v, started),
        (e: Error) => {
          this.deps.logger.error({ decision: decisionId, err: e.message }, 'shared state did not answer');
          return this.respond(req, decisionId, STATE_UNAVAILABLE, started);
        },
      );
    }
    return this.respond(req, decisionId, verdict, started);
  };

  private respond(req: RequestAttributes, decisionId: string, verdict: Verdict, started: number): CheckOutcome {
    const seconds = (performance.now() - started) / 1000;
    this.decisionLog.record(req, decisionId, verdict, seconds * 1000);
    this.deps.metrics?.decided('ext_authz', verdict, seconds);
    return { response: checkResponse(verdict, decisionId, req.protocol, clientOwnHeaders(req.headers)), verdict, decisionId };
  }


  private readonly check = (
    call: UnaryCall<CheckRequest>,
    callback: UnaryCallbackOf<CheckResponse>,
  ): void => {
    const fail = (e: unknown) => {
      // A bug must cost one request a clear error, never the process.
      this.deps.logger.error({ err: e }, 'check failed');
      callback({ code: RpcCode.INTERNAL, details: 'internal error deciding the request' });
    };
    try {
      const outcome = this.decideCheck(call.request);
      if (outcome instanceof Promise) outcome.then((o) => callback(null, o.response), fail);
      else callback(null, outcome.response);
    } catch (e) {
      fail(e);
    }
  };
}

const NONE: readonly string[] = [];

function clientOwnHeaders(headers: ReadonlyMap<string, string>): readonly string[] {
  let found: string[] | undefined;
  for (const name of headers.keys()) {
    if (name.startsWith(OWN_HEADER_PREFIX)) (found ??= []).push(name);
  }
  return found ?? NONE;
}
