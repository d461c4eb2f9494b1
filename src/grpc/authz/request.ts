// CheckRequest → RequestAttributes. Bad input becomes a located refusal, never an exception.
import { parseIp, parseRequestIp } from '../../middlebox/ip';
import type { Endpoint, RequestAttributes } from '../../middlebox/types';
import type { Address, CheckRequest, HttpRequestAttributes, Peer } from '../envoy-types';
import { HeaderCollector } from '../headers';

export interface TranslationLimits {
  /** Total bytes of header names and values examined per request. */
  maxHeaderBytes: number;
}

/** 64 KiB: Envoy's own default cap on a request's headers (max_request_headers_kb 60) fits. */
export const DEFAULT_TRANSLATION_LIMITS: Readonly<TranslationLimits> = { maxHeaderBytes: 64 * 1024 };

/** The detail logged with a 431 headers_too_large refusal (ext_authz and ext_proc alike). */
export function headersTooLarge(limits: TranslationLimits): string {
  return `request headers exceed ${limits.maxHeaderBytes} bytes (--max-header-bytes)`;
}

export type Translation =
  | {
      ok: true;
      request: RequestAttributes;
      /** The sidecar's list of the headers its Envoy sends (policy/headers.ts); absent: all of them. */
      sentHeaders?: string;
    }
  | { ok: false; status: number; reason: TranslationReason; message: string };

export type TranslationReason = 'missing_attributes' | 'invalid_source_address' | 'invalid_destination_address' | 'headers_too_large';

const NO_HEADERS: ReadonlyMap<string, string> = new Map();

export function translateCheckRequest(msg: CheckRequest, limits: TranslationLimits = DEFAULT_TRANSLATION_LIMITS): Translation {
  const attrs = msg.attributes;
  if (!attrs || (!attrs.source && !attrs.destination && !attrs.request)) {
    return refuse(400, 'missing_attributes', 'CheckRequest has no attributes');
  }
  const source = endpoint(attrs.source);
  if (!source) return refuse(400, 'invalid_source_address', `source address ${describe(attrs.source?.address)} is not an IP address`);
  const destination = endpoint(attrs.destination);
  if (!destination) {
    return refuse(400, 'invalid_destination_address', `destination address ${describe(attrs.destination?.address)} is not an IP address`);
  }

  const http = attrs.request?.http;
  if (!http) {
    // Envoy's network ext_authz filter: a TCP connection, no HTTP attributes.
    return { ok: true, request: { protocol: 'tcp', source, destination, headers: NO_HEADERS } };
  }
  const headers = headerMap(http, limits.maxHeaderBytes);
  if (!headers) return refuse(431, 'headers_too_large', headersTooLarge(limits));
  const authority = http.host || headers.get(':authority') || headers.get('host') || '';
  const rawPath = http.path || headers.get(':path') || '/';
  return {
    ok: true,
    request: {
      protocol: 'http',
      source,
      destination,
      method: (http.method || headers.get(':method') || 'GET').toUpperCase(),
      host: hostWithoutPort(authority),
      path: pathWithoutQuery(rawPath),
      headers,
      requestId: http.id || headers.get('x-request-id') || undefined,
    },
  };
}

function refuse(status: number, reason: TranslationReason, message: string): Translation {
  return { ok: false, status, reason, message };
}

/**
 * An absent peer or address is allowed (the matchers then simply do not match on it); an address
 * that is present but not an IP is refused, so that a CIDR deny rule can never be skipped by it.
 * Unix-socket peers (pipe) have no IP.
 */
function endpoint(peer: Peer | undefined): Endpoint | undefined {
  const result: Endpoint = {};
  if (peer?.principal) result.principal = peer.principal;
  const sock = peer?.address?.socket_address;
  if (sock && (sock.address || sock.port_value)) {
    const ip = parseRequestIp(sock.address ?? '');
    if (!ip) return undefined;
    result.ip = ip;
    if (sock.port_value) result.port = sock.port_value;
  }
  return result;
}

function describe(addr: Address | undefined): string {
  return JSON.stringify(addr?.socket_address?.address ?? '');
}

function headerMap(http: HttpRequestAttributes, maxBytes: number): Map<string, string> | undefined {
  const headers = new HeaderCollector(maxBytes);
  if (http.headers) {
    for (const name in http.headers) if (!headers.add(name, http.headers[name] ?? '')) return undefined;
  }
  // Envoy sends header_map instead of headers when encode_raw_headers is set.
  return headers.addAll(http.header_map?.headers) ? headers.map : undefined;
}

export function hostWithoutPort(authority: string): string {
  let host = authority.trim().toLowerCase();
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    if (end < 0) return host;
    // An IPv6 literal, in the canonical form policies are compiled to ("[0:0::1]" is "::1").
    const inner = host.slice(1, end);
    return parseIp(inner)?.text ?? inner;
  }
  const colon = host.lastIndexOf(':');
  if (colon >= 0 && host.indexOf(':') === colon) host = host.slice(0, colon);
  return host.endsWith('.') ? host.slice(0, -1) : host;
}

export function pathWithoutQuery(path: string): string {
  const q = path.search(/[?#]/);
  return q >= 0 ? path.slice(0, q) : path;
}
