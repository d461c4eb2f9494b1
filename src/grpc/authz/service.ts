// envoy.service.auth.v3.Authorization/Check: translate → decide → respond → one decision log line.
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { decide } from '../../middlebox/pipeline';
import type { Verdict } from '../../middlebox/types';
import type { Logger } from '../../observability/logger';
import type { PolicySource } from '../../state/port';
import type { CheckRequest, CheckResponse } from '../envoy-types';
import { authorizationService } from '../protos';
import { checkResponse, OWN_HEADER_PREFIX } from './response';
import { DEFAULT_TRANSLATION_LIMITS, translateCheckRequest, type TranslationLimits } from './request';

export interface AuthorizationDeps {
  policies: PolicySource;
  logger: Logger;
  limits?: TranslationLimits;
}

export class AuthorizationService {
  private readonly limits: TranslationLimits;

  constructor(private readonly deps: AuthorizationDeps) {
    this.limits = deps.limits ?? DEFAULT_TRANSLATION_LIMITS;
  }

  addToServer(server: grpc.Server): void {
    server.addService(authorizationService(), { Check: this.check });
  }

  /** Exposed for tests: the whole decision for one CheckRequest. */
  readonly decideCheck = (msg: CheckRequest): { response: CheckResponse; verdict: Verdict; decisionId: string } => {
    const translation = translateCheckRequest(msg, this.limits);
    if (!translation.ok) {
      const decisionId = randomUUID();
      const verdict: Verdict = { allow: false, status: translation.status, reason: translation.reason };
      this.deps.logger.info({ decision: decisionId, reason: translation.reason, detail: translation.message }, 'request refused');
      return { response: checkResponse(verdict, decisionId, 'http'), verdict, decisionId };
    }
    const req = translation.request;
    const decisionId = req.requestId || randomUUID();
    const verdict = decide(this.deps.policies.snapshot(), req);
    const log = this.deps.logger;
    if (!verdict.allow || verdict.shadowDenials) {
      log.info(
        {
          decision: decisionId,
          protocol: req.protocol,
          source: req.source.ip?.text,
          method: req.method,
          host: req.host,
          path: req.path,
          allow: verdict.allow,
          status: verdict.status,
          reason: verdict.reason,
          policy: verdict.policy,
          rule: verdict.rule,
          shadow: verdict.shadowDenials,
        },
        verdict.allow ? 'allowed (shadow deny)' : 'denied',
      );
    } else if (log.isLevelEnabled('debug')) {
      log.debug({ decision: decisionId, source: req.source.ip?.text, path: req.path, reason: verdict.reason }, 'allowed');
    }
    return { response: checkResponse(verdict, decisionId, req.protocol, clientOwnHeaders(req.headers)), verdict, decisionId };
  };

  private readonly check = (
    call: grpc.ServerUnaryCall<CheckRequest, CheckResponse>,
    callback: grpc.sendUnaryData<CheckResponse>,
  ): void => {
    try {
      callback(null, this.decideCheck(call.request).response);
    } catch (e) {
      // A bug must cost one request a clear error, never the process.
      this.deps.logger.error({ err: e }, 'check failed');
      callback({ code: grpc.status.INTERNAL, details: 'internal error deciding the request' });
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
