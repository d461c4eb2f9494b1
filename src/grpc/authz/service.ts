// envoy.service.auth.v3.Authorization/Check: translate → decide → respond → one decision log line.
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { decide, type DecisionPorts } from '../../middlebox/pipeline';
import type { RequestAttributes, Verdict } from '../../middlebox/types';
import { DecisionLog } from '../../observability/decision-log';
import type { Logger } from '../../observability/logger';
import type { DecisionMetrics } from '../../observability/metrics';
import { GuardedHeaders, headerGuard, SENT_HEADERS_HEADER, UnsentHeaderRead, unsentHeaderVerdict } from '../../policy/headers';
import type { PolicySource } from '../../state/port';
import type { CheckRequest, CheckResponse } from '../envoy-types';
import { fastAuthorizationService, RpcCode } from '../protos';
import type { ServiceHost, UnaryCall, UnaryCallbackOf } from '../transport';
import { checkResponse, OWN_HEADER_PREFIX } from './response';
import { DEFAULT_TRANSLATION_LIMITS, translateCheckRequest, type Translation, type TranslationLimits } from './request';

export interface AuthorizationDeps {
  policies: PolicySource;
  ports: DecisionPorts;
  logger: Logger;
  limits?: TranslationLimits;
  metrics?: DecisionMetrics;
  /** Which decisions get a log line (default: denials, every one). */
  decisionLog?: DecisionLog;
}

/** One decision: the request as translated (absent when it was refused untranslated), the verdict, its id. */
export interface Decision {
  request?: RequestAttributes;
  verdict: Verdict;
  decisionId: string;
}

export interface CheckOutcome {
  response: CheckResponse;
  verdict: Verdict;
  decisionId: string;
}

/** When shared state cannot answer, the request is refused (503) rather than decided blindly. */
const STATE_UNAVAILABLE: Verdict = { allow: false, status: 503, reason: 'state_unavailable' };

/** How often a headers_not_sent refusal is logged per sidecar list and rule: it holds until the sidecar is re-rendered. */
const UNSENT_WARN_EVERY_MS = 60_000;

export class AuthorizationService {
  private readonly limits: TranslationLimits;
  private readonly decisionLog: DecisionLog;
  /** Header and sent list → when its refusal was last logged. */
  private readonly unsentWarned = new Map<string, number>();

  constructor(private readonly deps: AuthorizationDeps) {
    this.limits = deps.limits ?? DEFAULT_TRANSLATION_LIMITS;
    this.decisionLog = deps.decisionLog ?? new DecisionLog(deps.logger);
  }

  addToServer(server: ServiceHost): void {
    server.addService(fastAuthorizationService(), { Check: this.check });
  }

  /** The whole decision for one CheckRequest; synchronous unless a limit asks shared state. */
  readonly decideCheck = (msg: CheckRequest, sentHeaders?: string): CheckOutcome | Promise<CheckOutcome> => {
    const started = performance.now();
    const translation = translateCheckRequest(msg, this.limits);
    if (translation.ok && sentHeaders !== undefined) translation.sentHeaders = sentHeaders;
    const decision = this.decideTranslated(translation, started);
    return decision instanceof Promise ? decision.then(checkOutcome) : checkOutcome(decision);
  };

  /**
   * Decides a request already translated from its protocol (gRPC Check, or the HTTP ext_authz
   * call in ./http): one decision log line and one metrics sample whatever carried it.
   */
  decideTranslated(translation: Translation, started = performance.now()): Decision | Promise<Decision> {
    if (!translation.ok) {
      const decisionId = randomUUID();
      const verdict: Verdict = { allow: false, status: translation.status, reason: translation.reason };
      const seconds = (performance.now() - started) / 1000;
      this.decisionLog.refused(decisionId, verdict, translation.message, seconds * 1000);
      this.deps.metrics?.decided('ext_authz', verdict, seconds);
      return { verdict, decisionId };
    }
    const req = translation.request;
    const decisionId = req.requestId || randomUUID();
    const snapshot = this.deps.policies.snapshot();
    const guard = snapshot && translation.sentHeaders !== undefined ? headerGuard(snapshot, translation.sentHeaders) : undefined;
    let verdict: Verdict | Promise<Verdict>;
    try {
      // Guarded only while the sidecar's list and the rules disagree: otherwise the request as it came.
      verdict = decide(snapshot, guard ? { ...req, headers: new GuardedHeaders(req.headers, guard) } : req, this.deps.ports, Date.now());
    } catch (e) {
      if (!(e instanceof UnsentHeaderRead)) throw e;
      this.warnUnsent(translation.sentHeaders!, e);
      return this.record(req, decisionId, unsentHeaderVerdict(e), started);
    }
    if (verdict instanceof Promise) {
      return verdict.then(
        (v) => this.record(req, decisionId, v, started),
        (e: Error) => {
          this.deps.logger.error({ decision: decisionId, err: e.message }, 'shared state did not answer');
          return this.record(req, decisionId, STATE_UNAVAILABLE, started);
        },
      );
    }
    return this.record(req, decisionId, verdict, started);
  }

  private warnUnsent(sentList: string, e: UnsentHeaderRead): void {
    const key = `${e.policy}/${e.rule}\n${sentList}`;
    const now = Date.now();
    const last = this.unsentWarned.get(key);
    if (last !== undefined && now - last < UNSENT_WARN_EVERY_MS) return;
    if (this.unsentWarned.size >= 64) this.unsentWarned.clear();
    this.unsentWarned.set(key, now);
    this.deps.logger.warn(
      { header: e.read.name, policy: e.policy, rule: e.rule, sent: sentList },
      `refusing requests that reach rule ${e.policy}/${e.rule} (403 headers_not_sent): it reads header ${e.read.name}, which this sidecar's Envoy does not send; render its bootstrap with it in --authz-headers (\`middlebox policy headers\` lists them)`,
    );
  }

  private record(req: RequestAttributes, decisionId: string, verdict: Verdict, started: number): Decision {
    const seconds = (performance.now() - started) / 1000;
    this.decisionLog.record(req, decisionId, verdict, seconds * 1000);
    this.deps.metrics?.decided('ext_authz', verdict, seconds);
    return { request: req, verdict, decisionId };
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
      const outcome = this.decideCheck(call.request, sentHeadersOf(call));
      if (outcome instanceof Promise) outcome.then((o) => callback(null, o.response), fail);
      else callback(null, outcome.response);
    } catch (e) {
      fail(e);
    }
  };
}

/** The sidecar's sent-header list, from the call's gRPC metadata (set by the bootstrap's initial_metadata). */
function sentHeadersOf(call: UnaryCall<CheckRequest>): string | undefined {
  const value = call.metadata?.get(SENT_HEADERS_HEADER)[0];
  return typeof value === 'string' ? value : undefined;
}

function checkOutcome({ request, verdict, decisionId }: Decision): CheckOutcome {
  const response = request
    ? checkResponse(verdict, decisionId, request.protocol, clientOwnHeaders(request.headers))
    : checkResponse(verdict, decisionId, 'http');
  return { response, verdict, decisionId };
}

const NONE: readonly string[] = [];

/** x-middlebox-* names the client sent: those the verdict does not set are removed upstream. */
export function clientOwnHeaders(headers: ReadonlyMap<string, string>): readonly string[] {
  let found: string[] | undefined;
  for (const name of headers.keys()) {
    if (name.startsWith(OWN_HEADER_PREFIX)) (found ??= []).push(name);
  }
  return found ?? NONE;
}
