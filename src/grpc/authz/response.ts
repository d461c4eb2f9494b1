// Verdict → CheckResponse.
import type { Verdict } from '../../middlebox/types';
import { RpcCode } from '../protos';
import { HeaderAppend, type CheckResponse, type HeaderValueOption } from '../envoy-types';

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

/**
 * `clientOwnHeaders`: x-middlebox-* names the client sent; those the verdict does not overwrite
 * are removed before the request goes upstream.
 */
export function checkResponse(verdict: Verdict, decisionId: string, protocol: 'http' | 'tcp', clientOwnHeaders: readonly string[] = []): CheckResponse {
  if (protocol === 'tcp') {
    // The network filter only reads the status: anything but OK closes the connection.
    return verdict.allow
      ? { status: { code: RpcCode.OK } }
      : { status: { code: RpcCode.PERMISSION_DENIED, message: `${verdict.reason}: ${verdict.policy ?? ''}/${verdict.rule ?? ''}` } };
  }
  if (verdict.allow) {
    const headers: HeaderValueOption[] = [overwrite('x-middlebox-decision', decisionId)];
    for (const h of verdict.headers ?? []) headers.push(overwrite(h.key, h.value));
    if (verdict.shadowDenials?.length) {
      const d = verdict.shadowDenials[0]!;
      headers.push(overwrite('x-middlebox-shadow-deny', `${d.middlebox}/${d.policy}/${d.rule}`));
    }
    const ok: NonNullable<CheckResponse['ok_response']> = { headers };
    const remove = clientOwnHeaders.filter((name) => !headers.some((h) => h.header.key === name));
    if (remove.length) ok.headers_to_remove = remove;
    if (verdict.responseHeaders?.length) ok.response_headers_to_add = verdict.responseHeaders.map((h) => overwrite(h.key, h.value));
    return { status: { code: RpcCode.OK }, ok_response: ok };
  }
  const headers: HeaderValueOption[] = [
    overwrite('content-type', 'application/json'),
    overwrite('x-middlebox-decision', decisionId),
  ];
  for (const h of verdict.headers ?? []) headers.push(overwrite(h.key, h.value));
  return {
    status: { code: RpcCode.PERMISSION_DENIED },
    denied_response: { status: { code: verdict.status ?? 403 }, headers, body: denialBody(verdict, decisionId) },
  };
}
