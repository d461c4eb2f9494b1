// envoy.service.ext_proc.v3.ExternalProcessor/Process: one bidirectional stream per HTTP request.
// Per-stream state is explicit: the request headers come first and are decided (firewall → rate
// limit → NAT); then bodies, trailers and the response headers may follow, each answered once, in
// order. A message out of order, or one that is none of the six kinds, ends that stream with
// INVALID_ARGUMENT and a log line; other streams are not affected. In observability mode Envoy does
// not wait for answers, so none are sent.
//
// Once nothing more is wanted from a request (after a denial, after the response headers, or after
// the request headers when nothing needs translating back) the server closes the stream cleanly:
// Envoy then goes on without consulting it (bodies and trailers would only be answered CONTINUE),
// and it need not reset the stream itself, which under load would run into HTTP/2 rapid-reset
// protection and have new streams refused.
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { requestChanges, responseChanges } from '../../middlebox/nat/engine';
import { decide, type DecisionPorts } from '../../middlebox/pipeline';
import type { HeaderValue, RequestAttributes, Verdict } from '../../middlebox/types';
import { DecisionLog } from '../../observability/decision-log';
import type { Logger } from '../../observability/logger';
import type { DecisionMetrics } from '../../observability/metrics';
import type { PolicySource } from '../../state/port';
import { DEFAULT_TRANSLATION_LIMITS, type TranslationLimits } from '../authz/request';
import { DECISION_HEADER, denialBody, OWN_HEADER_PREFIX, SHADOW_DENY_HEADER } from '../authz/response';
import {
  HeaderAppend,
  HeaderSendMode,
  type ExtProcHeaderOption,
  type HeaderMutation,
  type ProcessingRequest,
  type ProcessingResponse,
} from '../envoy-types';
import { HeaderCollector } from '../headers';
import { externalProcessorService, RpcCode } from '../protos';
import type { DuplexCall, ServiceHost } from '../transport';
import { AFTER_EXT_AUTHZ_HEADER, INBOUND_LISTENER_HEADER, translateRequestHeaders } from './request';

export interface ExternalProcessorDeps {
  policies: PolicySource;
  ports: DecisionPorts;
  logger: Logger;
  limits?: TranslationLimits;
  metrics?: DecisionMetrics;
  /** Which decisions get a log line (default: denials, every one). */
  decisionLog?: DecisionLog;
}

type Phase = 'awaiting_request_headers' | 'request' | 'response' | 'finished';

interface StreamState {
  phase: Phase;
  decisionId?: string;
  verdict?: Verdict;
  /** The authority the client asked for, for translating responses back. */
  virtualHost?: string;
  /** Nothing more is wanted from this request: close the stream after the answer. */
  done?: boolean;
  /** ext_authz decided the request before this filter (see AFTER_EXT_AUTHZ_HEADER): translate only. */
  afterAuthz: boolean;
  /** The inbound listener's stream (see INBOUND_LISTENER_HEADER): no NAT. */
  inbound: boolean;
}

class StreamError extends Error {}

const STATE_UNAVAILABLE: Verdict = { allow: false, status: 503, reason: 'state_unavailable' };

export class ExternalProcessorService {
  private readonly limits: TranslationLimits;
  private readonly decisionLog: DecisionLog;

  constructor(private readonly deps: ExternalProcessorDeps) {
    this.decisionLog = deps.decisionLog ?? new DecisionLog(deps.logger);
    this.limits = deps.limits ?? DEFAULT_TRANSLATION_LIMITS;
  }

  addToServer(server: ServiceHost): void {
    server.addService(externalProcessorService(), { Process: this.process });
  }

  private readonly process = (call: DuplexCall<ProcessingRequest, ProcessingResponse>): void => {
    const state: StreamState = {
      phase: 'awaiting_request_headers',
      afterAuthz: call.metadata?.get(AFTER_EXT_AUTHZ_HEADER)[0] !== undefined,
      inbound: call.metadata?.get(INBOUND_LISTENER_HEADER)[0] !== undefined,
    };
    // Answers must leave in the order the messages came, though a decision may wait for etcd.
    let queue: Promise<void> = Promise.resolve();
    call.on('data', (msg: ProcessingRequest) => {
      queue = queue.then(async () => {
        if (state.phase === 'finished') return;
        try {
          const answer = await this.handle(state, msg);
          if (answer && !msg.observability_mode && !call.cancelled) call.write(answer);
          if (state.done) {
            state.phase = 'finished';
            if (!call.writableEnded) call.end();
          }
        } catch (e) {
          state.phase = 'finished';
          const refused = e instanceof StreamError;
          this.deps.logger[refused ? 'warn' : 'error']({ decision: state.decisionId, err: (e as Error).message }, 'ext_proc stream ended');
          call.emit('error', {
            code: refused ? RpcCode.INVALID_ARGUMENT : RpcCode.INTERNAL,
            details: refused ? (e as Error).message : 'internal error processing the request',
          });
        }
      });
    });
    call.on('end', () => {
      void queue.then(() => {
        if (!call.writableEnded) call.end();
      });
    });
    call.on('error', () => undefined);
  };

  /** One message in, at most one answer out. */
  private async handle(state: StreamState, msg: ProcessingRequest): Promise<ProcessingResponse | undefined> {
    const kind = msg.request;
    switch (kind) {
      case 'request_headers':
        expect(state, 'awaiting_request_headers', kind);
        return this.onRequestHeaders(state, msg);
      case 'request_body':
        expect(state, 'request', kind);
        return { request_body: { response: {} } };
      case 'request_trailers':
        expect(state, 'request', kind);
        return { request_trailers: {} };
      case 'response_headers':
        if (state.phase === 'awaiting_request_headers') {
          // A local reply: an earlier filter (ext_authz denying, say) or Envoy itself answered
          // before the request reached this filter. Nothing was decided here, so nothing is
          // translated: it goes to the client as it is.
          state.phase = 'response';
          state.done = true;
          return { response_headers: { response: {} } };
        }
        if (state.phase !== 'request') throw new StreamError('response_headers arrived twice');
        state.phase = 'response';
        state.done = true;
        return { response_headers: { response: { header_mutation: this.responseMutation(state, msg) } } };
      case 'response_body':
        expect(state, 'response', kind);
        return { response_body: { response: {} } };
      case 'response_trailers':
        expect(state, 'response', kind);
        return { response_trailers: {} };
      default:
        throw new StreamError('ProcessingRequest carries none of request_headers, request_body, request_trailers, response_headers, response_body, response_trailers');
    }
  }

  private async onRequestHeaders(state: StreamState, msg: ProcessingRequest): Promise<ProcessingResponse> {
    const started = performance.now();
    const translation = translateRequestHeaders(msg, this.limits);
    if (!translation.ok) {
      state.decisionId = randomUUID();
      state.done = true;
      const refused: Verdict = { allow: false, status: translation.status, reason: translation.reason };
      const seconds = (performance.now() - started) / 1000;
      this.decisionLog.refused(state.decisionId, refused, translation.message, seconds * 1000);
      this.deps.metrics?.decided('ext_proc', refused, seconds);
      return immediate(refused, state.decisionId);
    }
    const req = translation.request;
    // After ext_authz, the request carries its decision's id (ext_authz removed any a client sent).
    const afterAuthz = state.afterAuthz;
    state.decisionId = (afterAuthz && req.headers.get(DECISION_HEADER)) || req.requestId || randomUUID();
    state.virtualHost = req.headers.get(':authority') || req.headers.get('host') || req.host;
    let verdict: Verdict;
    try {
      verdict = await decide(this.deps.policies.snapshot(), req, this.deps.ports, Date.now(), { nat: !state.inbound, natOnly: afterAuthz });
    } catch (e) {
      this.deps.logger.error({ decision: state.decisionId, err: (e as Error).message }, 'shared state did not answer');
      verdict = STATE_UNAVAILABLE;
    }
    state.verdict = verdict;
    const seconds = (performance.now() - started) / 1000;
    // After ext_authz, a request this stream only lets through was decided (and logged) there.
    if (!afterAuthz || verdict.nat || !verdict.allow) {
      this.decisionLog.record(req, state.decisionId, verdict, seconds * 1000);
      this.deps.metrics?.decided('ext_proc', verdict, seconds);
    }
    if (!verdict.allow) {
      state.done = true;
      return immediate(verdict, state.decisionId);
    }
    state.phase = 'request';
    const changes = requestChanges(verdict.nat, req);
    const set = [...changes.set];
    const remove = [...changes.remove];
    // ext_authz set the decision's headers and removed those a client sent; otherwise this does.
    if (!afterAuthz) {
      set.push({ key: DECISION_HEADER, value: state.decisionId }, ...(verdict.headers ?? []));
      if (verdict.shadowDenials?.length) {
        const d = verdict.shadowDenials[0]!;
        set.push({ key: SHADOW_DENY_HEADER, value: `${d.middlebox}/${d.policy}/${d.rule}` });
      }
      remove.push(...clientOwnHeaders(req, set));
    }
    const answer: ProcessingResponse = {
      request_headers: { response: { header_mutation: mutation(set, remove), clear_route_cache: changes.clearRouteCache } },
    };
    // Nothing to do on the way back: spare Envoy the round trip (needs allow_mode_override), and end.
    if (!verdict.nat && !verdict.responseHeaders?.length) {
      answer.mode_override = { response_header_mode: HeaderSendMode.SKIP };
      state.done = true;
    }
    return answer;
  }

  private responseMutation(state: StreamState, msg: ProcessingRequest): HeaderMutation {
    const set: HeaderValue[] = [...(state.verdict?.responseHeaders ?? [])];
    const nat = state.verdict?.nat;
    if (nat && state.virtualHost) {
      const headers = new HeaderCollector(this.limits.maxHeaderBytes);
      headers.addAll(msg.response_headers?.headers?.headers);
      set.push(...responseChanges(nat, state.virtualHost, headers.map));
    }
    return mutation(set, []);
  }

}

function expect(state: StreamState, phase: Phase, kind: string): void {
  if (state.phase !== phase) throw new StreamError(`${kind} arrived out of order (stream is at ${state.phase})`);
}

function option(h: HeaderValue): ExtProcHeaderOption {
  return { header: { key: h.key, raw_value: Buffer.from(h.value) }, append_action: HeaderAppend.OVERWRITE_IF_EXISTS_OR_ADD };
}

function mutation(set: HeaderValue[], remove: string[]): HeaderMutation {
  const m: HeaderMutation = {};
  if (set.length) m.set_headers = set.map(option);
  if (remove.length) m.remove_headers = remove;
  return m;
}

function immediate(verdict: Verdict, decisionId: string): ProcessingResponse {
  const headers: HeaderValue[] = [
    { key: 'content-type', value: 'application/json' },
    { key: DECISION_HEADER, value: decisionId },
    ...(verdict.headers ?? []),
  ];
  return {
    immediate_response: {
      status: { code: verdict.status ?? 403 },
      headers: mutation(headers, []),
      body: Buffer.from(denialBody(verdict, decisionId)),
      details: `middlebox_${verdict.reason}`,
    },
  };
}

/** x-middlebox-* headers a client sent that the middlebox does not set itself. */
function clientOwnHeaders(req: RequestAttributes, set: HeaderValue[]): string[] {
  const out: string[] = [];
  for (const name of req.headers.keys()) {
    if (name.startsWith(OWN_HEADER_PREFIX) && !set.some((h) => h.key === name)) out.push(name);
  }
  return out;
}

