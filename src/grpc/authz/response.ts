// Verdict → CheckResponse.
import type { Verdict } from '../../middlebox/types';
import { RpcCode } from '../protos';
import { HeaderAppend, type CheckResponse, type HeaderValueOption, type ProtoStruct, type StructValue } from '../envoy-types';

/** Upstream headers are always overwritten, so a client can never supply its own x-middlebox-*. */
function overwrite(key: string, value: string): HeaderValueOption {
  return { header: { key, value }, append_action: HeaderAppend.OVERWRITE_IF_EXISTS_OR_ADD };
}

export function denialBody(verdict: Verdict, decisionId: string): string {
  return JSON.stringify({
    error: errorName(verdict.status ?? 403),
    reason: verdict.reason,
    middlebox: verdict.middlebox,
    policy: verdict.policy,
    rule: verdict.rule,
    decision: decisionId,
  });
}

function errorName(status: number): string {
  switch (status) {
    case 400: return 'bad_request';
    case 403: return 'forbidden';
    case 429: return 'too_many_requests';
    case 431: return 'request_header_fields_too_large';
    case 503: return 'unavailable';
    default: return 'denied';
  }
}

/** Header names the middlebox owns: a client may never hand them to the app. */
export const OWN_HEADER_PREFIX = 'x-middlebox-';

/** The id of a decision, on every answer: joins Envoy's access log, the app and the decision log. */
export const DECISION_HEADER = 'x-middlebox-decision';

/** On an allowed request that a shadow rule would have denied: which one (middlebox/policy/rule). */
export const SHADOW_DENY_HEADER = 'x-middlebox-shadow-deny';

/**
 * `clientOwnHeaders`: x-middlebox-* names the client sent; those the verdict does not overwrite
 * are removed before the request goes upstream.
 */
export function checkResponse(verdict: Verdict, decisionId: string, protocol: 'http' | 'tcp', clientOwnHeaders: readonly string[] = []): CheckResponse {
  const dynamic_metadata = decisionMetadata(verdict, decisionId);
  if (protocol === 'tcp') {
    // The network filter reads the status (anything but OK closes the connection) and the metadata.
    return verdict.allow
      ? { status: { code: RpcCode.OK }, dynamic_metadata }
      : { status: { code: RpcCode.PERMISSION_DENIED, message: `${verdict.reason}: ${verdict.policy ?? ''}/${verdict.rule ?? ''}` }, dynamic_metadata };
  }
  if (verdict.allow) {
    const headers: HeaderValueOption[] = [overwrite(DECISION_HEADER, decisionId)];
    for (const h of verdict.headers ?? []) headers.push(overwrite(h.key, h.value));
    if (verdict.shadowDenials?.length) {
      const d = verdict.shadowDenials[0]!;
      headers.push(overwrite(SHADOW_DENY_HEADER, `${d.middlebox}/${d.policy}/${d.rule}`));
    }
    const ok: NonNullable<CheckResponse['ok_response']> = { headers };
    const remove = clientOwnHeaders.filter((name) => !headers.some((h) => h.header.key === name));
    if (remove.length) ok.headers_to_remove = remove;
    if (verdict.responseHeaders?.length) ok.response_headers_to_add = verdict.responseHeaders.map((h) => overwrite(h.key, h.value));
    return { status: { code: RpcCode.OK }, ok_response: ok, dynamic_metadata };
  }
  const headers: HeaderValueOption[] = [
    overwrite('content-type', 'application/json'),
    overwrite(DECISION_HEADER, decisionId),
  ];
  for (const h of verdict.headers ?? []) headers.push(overwrite(h.key, h.value));
  return {
    status: { code: RpcCode.PERMISSION_DENIED },
    denied_response: { status: { code: verdict.status ?? 403 }, headers, body: denialBody(verdict, decisionId) },
    dynamic_metadata,
  };
}

/**
 * The decision as the filter's dynamic metadata: `decision_id` (the id in the middlebox's decision
 * log), `verdict`, `reason` and, for a rule's decision, `middlebox`, `policy` and `rule`. Envoy's
 * access log reads them as %DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%.
 */
export function decisionMetadata(verdict: Verdict, decisionId: string): ProtoStruct {
  const fields: Record<string, StructValue> = {
    decision_id: { stringValue: decisionId },
    verdict: { stringValue: verdict.allow ? 'allow' : 'deny' },
    reason: { stringValue: verdict.reason },
  };
  if (verdict.middlebox) fields.middlebox = { stringValue: verdict.middlebox };
  if (verdict.policy) fields.policy = { stringValue: verdict.policy };
  if (verdict.rule) fields.rule = { stringValue: verdict.rule };
  return { fields };
}
