// Envoy's ext_authz filter with http_service: the same decision as the gRPC Check, asked as a plain
// HTTP/1.1 request. Envoy sends the client request's method, path (behind HTTP_AUTHZ_PATH_PREFIX)
// and headers, plus one header it fills from the connection (HTTP_AUTHZ_PEER_HEADER); any status but
// 200 is a denial, which Envoy hands to the client with its body and the headers it is told to copy.
// Envoy and the replica together spend a quarter to a third less CPU per request on this call than on a
// gRPC one, and one Envoy passes 1.4-2.0 x the requests (README, "Measured numbers"). The calls are
// served by ./http1: Node's HTTP parser without node:http's per-request objects.
import { parseRequestIp } from '../../middlebox/ip';
import type { Endpoint, Verdict } from '../../middlebox/types';
import type { Logger } from '../../observability/logger';
import { SENT_LIST } from '../../policy/headers';
import { HeaderCollector } from '../headers';
import type { TransportTls } from '../transport';
import { headersTooLarge, hostWithoutPort, pathWithoutQuery, type Translation, type TranslationLimits } from './request';
import { DECISION_HEADER, denialBody, OWN_HEADER_PREFIX, SHADOW_DENY_HEADER } from './response';
import { Http1Server, type Http1Request, type Http1Response } from './http1';
import { clientOwnHeaders, type Decision } from './service';

/** Envoy's path_prefix: the call for GET /a?b is GET /ext_authz/a?b. */
export const HTTP_AUTHZ_PATH_PREFIX = '/ext_authz';

/** Health of the listener, for Envoy's HTTP health checks: 200 while serving, 503 otherwise. */
export const HTTP_AUTHZ_HEALTH_PATH = '/healthz';

/**
 * What the call's headers cannot carry otherwise: the connection's addresses, the client request's
 * own content-length (the call has its own), the list of headers the sidecar sends when it sends
 * only some (`hdrs=`, bootstrap authzHeaders; policy/headers.ts) and the peer certificate's URI SAN.
 * Envoy renders it from the httpAuthzPeerValue template and it replaces any header of that name the
 * client sent (on the call; on the request itself the answer has Envoy remove it), so that nothing
 * in it comes from the client. The fixed `src=`, `dst=`, `len=` and `uri=` parts keep the value from
 * ever being empty: Envoy drops an empty header to add, which would let the client's own through.
 */
export const HTTP_AUTHZ_PEER_HEADER = 'x-middlebox-ext-authz-peer';

/**
 * The peer header's template. `sentHeaders`: the comma-separated list (names have no space or %),
 * right after the addresses, before anything the client's request fills in.
 */
export function httpAuthzPeerValue(sentHeaders?: string): string {
  const hdrs = sentHeaders === undefined ? '' : ` hdrs=${sentHeaders}`;
  return `src=%DOWNSTREAM_REMOTE_ADDRESS% dst=%DOWNSTREAM_LOCAL_ADDRESS%${hdrs} len=%REQ(CONTENT-LENGTH)% uri=%DOWNSTREAM_PEER_URI_SAN%`;
}

/**
 * Response headers Envoy must copy: to the request going upstream when allowed, to the client's
 * response when allowed (rate-limit headers), and to the denial the client gets.
 */
export const HTTP_AUTHZ_UPSTREAM_HEADER_PREFIX = OWN_HEADER_PREFIX;
export const HTTP_AUTHZ_CLIENT_HEADER_PREFIXES = ['ratelimit-'];
export const HTTP_AUTHZ_DENIAL_HEADERS = ['content-type', 'retry-after'];

/** Envoy's header that names request headers to remove before the request goes upstream. */
const HEADERS_TO_REMOVE = 'x-envoy-auth-headers-to-remove';

/**
 * Headers of the call itself rather than of the client's request (Envoy's HTTP client adds
 * x-envoy-internal and x-envoy-expected-rq-timeout-ms; the client's content-length comes in the
 * peer header). Host becomes :authority, as Envoy's gRPC Check has it.
 */
const CALL_HEADERS = new Set([HTTP_AUTHZ_PEER_HEADER, 'content-length', 'x-envoy-internal', 'x-envoy-expected-rq-timeout-ms', 'host']);

/** Any byte outside ASCII: Node reads header bytes as latin1, Envoy's gRPC Check as UTF-8. */
const NON_ASCII = /[^\x00-\x7f]/;

/** The HTTP ext_authz call → RequestAttributes, as translateCheckRequest does for a CheckRequest. */
export function translateHttpCheck(req: Http1Request, limits: TranslationLimits): Translation {
  const url = req.url;
  if (!url.startsWith(HTTP_AUTHZ_PATH_PREFIX)) {
    return { ok: false, status: 400, reason: 'missing_attributes', message: `path ${JSON.stringify(url.slice(0, 100))} is not under ${HTTP_AUTHZ_PATH_PREFIX}` };
  }
  // One pass over the raw headers: Node's req.headers object is never built.
  const raw = req.rawHeaders;
  let peerValue: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]!.length === HTTP_AUTHZ_PEER_HEADER.length && raw[i]!.toLowerCase() === HTTP_AUTHZ_PEER_HEADER) peerValue = raw[i + 1];
  }
  const peer = parsePeer(peerValue);
  if (!peer) {
    return { ok: false, status: 400, reason: 'missing_attributes', message: `no valid ${HTTP_AUTHZ_PEER_HEADER} header: is Envoy's http_service rendered by \`middlebox envoy bootstrap\`?` };
  }
  const source = endpoint(peer.src, peer.uri);
  if (!source) return { ok: false, status: 400, reason: 'invalid_source_address', message: `source address ${JSON.stringify(peer.src)} is not an IP address` };
  const destination = endpoint(peer.dst, '');
  if (!destination) return { ok: false, status: 400, reason: 'invalid_destination_address', message: `destination address ${JSON.stringify(peer.dst)} is not an IP address` };

  const path = url.slice(HTTP_AUTHZ_PATH_PREFIX.length) || '/';
  const method = req.method;
  const collector = new HeaderCollector(limits.maxHeaderBytes);
  let authority = '';
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    let value = raw[i + 1]!;
    if (NON_ASCII.test(value)) value = Buffer.from(value, 'latin1').toString('utf8');
    if (name === 'host') authority = value;
    if (CALL_HEADERS.has(name)) continue;
    if (!collector.add(name, value)) return { ok: false, status: 431, reason: 'headers_too_large', message: headersTooLarge(limits) };
  }
  const headers = collector.map;
  if (peer.len) headers.set('content-length', peer.len);
  // The pseudo-headers Envoy's gRPC Check carries in its header map, so that a rule on them means
  // the same over either protocol (:scheme excepted: use x-forwarded-proto).
  headers.set(':authority', authority);
  headers.set(':method', method);
  headers.set(':path', path);
  return {
    ok: true,
    request: {
      protocol: 'http',
      source,
      destination,
      method: method.toUpperCase(),
      host: hostWithoutPort(authority),
      path: pathWithoutQuery(path),
      headers,
      requestId: headers.get('x-request-id') || undefined,
    },
    ...(peer.hdrs !== undefined ? { sentHeaders: peer.hdrs } : {}),
  };
}

interface Peer {
  src: string;
  dst: string;
  /** The client request's content-length ('' without one). */
  len: string;
  /** The peer certificate's first URI SAN, as Envoy's gRPC Check gives it ('' without one). */
  uri: string;
  /** The headers the sidecar sends, when it sends only some (comma-separated). */
  hdrs?: string;
}

/**
 * `src=ADDR dst=ADDR [hdrs=LIST] len=N uri=SANS` (each may be empty; the SANs are the rest of the
 * value). Envoy fills in the addresses and the list; the client's request, the length and the SANs.
 */
export function parsePeer(value: string | string[] | undefined): Peer | undefined {
  if (typeof value !== 'string' || !value.startsWith('src=')) return undefined;
  const dst = value.indexOf(' dst=');
  const len = value.indexOf(' len=', dst);
  const uri = value.indexOf(' uri=', len);
  if (dst < 0 || len < 0 || uri < 0) return undefined;
  const hdrs = value.indexOf(' hdrs=', dst);
  const withList = hdrs >= 0 && hdrs < len;
  const length = value.slice(len + 5, uri);
  if (length !== '' && !/^\d{1,15}$/.test(length)) return undefined;
  // Envoy joins several URI SANs with ",", which a URI cannot contain unescaped.
  const sans = value.slice(uri + 5);
  const comma = sans.indexOf(',');
  const peer: Peer = { src: value.slice(4, dst), dst: value.slice(dst + 5, withList ? hdrs : len), len: length, uri: comma < 0 ? sans : sans.slice(0, comma) };
  if (withList) {
    const list = value.slice(hdrs + 6, len);
    if (!SENT_LIST.test(list)) return undefined;
    peer.hdrs = list;
  }
  return peer;
}

/** host:port or [v6]:port; empty for no address. Undefined when present but not an IP. */
function endpoint(address: string, principal: string): Endpoint | undefined {
  const result: Endpoint = {};
  if (principal) result.principal = principal;
  if (!address) return result;
  const colon = address.lastIndexOf(':');
  const host = colon > 0 ? address.slice(0, colon) : address;
  const ip = parseRequestIp(host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host);
  if (!ip) return undefined;
  result.ip = ip;
  const port = colon > 0 ? Number(address.slice(colon + 1)) : NaN;
  if (Number.isInteger(port) && port > 0 && port <= 65535) result.port = port;
  return result;
}

/**
 * Verdict → the call's answer. Allowed: 200 with the upstream headers (x-middlebox-*), the
 * client's response headers (ratelimit-*) and the client's own x-middlebox-* names to remove.
 * Denied: the denial's status, headers and JSON body, as the gRPC Check's denied_response.
 * Only headers Envoy reads: no Date, Connection or Keep-Alive, which Envoy would parse and match on
 * every call (HTTP/1.1 connections persist without them).
 */
export function httpCheckResponse(verdict: Verdict, decisionId: string, clientOwnHeaders: readonly string[]): Http1Response {
  const headers: string[] = [DECISION_HEADER, decisionId];
  for (const h of verdict.headers ?? []) headers.push(h.key, h.value);
  if (verdict.allow) {
    if (verdict.shadowDenials?.length) {
      const d = verdict.shadowDenials[0]!;
      headers.push(SHADOW_DENY_HEADER, `${d.middlebox}/${d.policy}/${d.rule}`);
    }
    for (const h of verdict.responseHeaders ?? []) headers.push(h.key, h.value);
    // The peer header as the client may have sent it rides on the request itself (Envoy replaced
    // it on the call only): always removed, like every x-middlebox-* name the answer does not set.
    const remove = [HTTP_AUTHZ_PEER_HEADER];
    for (const name of clientOwnHeaders) if (!setsHeader(headers, name)) remove.push(name);
    headers.push(HEADERS_TO_REMOVE, remove.join(','));
    return { status: 200, headers };
  }
  headers.push('content-type', 'application/json');
  return { status: verdict.status ?? 403, headers, body: denialBody(verdict, decisionId) };
}

function setsHeader(flat: readonly string[], name: string): boolean {
  for (let i = 0; i < flat.length; i += 2) if (flat[i] === name) return true;
  return false;
}

export interface HttpAuthzListenerOptions {
  /** host:port or unix:/path, parsed by the caller. */
  where: { host: string; port: number } | { path: string };
  tls?: TransportTls;
  limits: TranslationLimits;
  /** The decision, shared with the gRPC Check. */
  /** `started`: when the call arrived (performance.now()), for the decision's duration. */
  decide(translation: Translation, started: number): Decision | Promise<Decision>;
  /** What /healthz says: serving, or why not. */
  readiness(): { ready: boolean; reason?: string };
  logger: Logger;
}

export interface HttpAuthzListener {
  /** Bound port (0 for a unix socket). */
  port: number;
  setSecureContext(tls: TransportTls): void;
  /** Stops accepting, lets calls in flight finish, cuts them after `drainMs`. */
  close(drainMs: number): Promise<void>;
}

/**
 * Idle keep-alive connections are closed by Envoy first (its idle_timeout in the bootstrap is
 * shorter), never by the server: a server closing a connection just as Envoy sends a call on it
 * would cost that request a failed authorization.
 */
export const HTTP_AUTHZ_KEEP_ALIVE_MS = 10 * 60_000;

/** A call must arrive whole within this; Envoy sends each at once. */
const REQUEST_TIMEOUT_MS = 10_000;

const INTERNAL_ERROR: Http1Response = { status: 500, headers: ['content-type', 'application/json'], body: '{"error":"internal","detail":"internal error deciding the request"}' };

export async function startHttpAuthzListener(opts: HttpAuthzListenerOptions): Promise<HttpAuthzListener> {
  const server = new Http1Server({
    ...(opts.tls ? { tls: opts.tls } : {}),
    // --max-header-bytes decides, with the same 431 headers_too_large as over gRPC; the parser's own
    // limit, a little higher for the request line and the call's own headers, refuses with a bare 431.
    maxHeaderBytes: opts.limits.maxHeaderBytes + 16 * 1024,
    keepAliveMs: HTTP_AUTHZ_KEEP_ALIVE_MS,
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
    handler: (req) => handle(req, opts),
    onConnectionError: (e) => opts.logger.debug({ err: e.message }, 'HTTP ext_authz connection error'),
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    const done = () => {
      server.server.off('error', reject);
      server.server.on('error', (e: Error) => opts.logger.warn({ err: e.message }, 'HTTP ext_authz listener error'));
      resolve();
    };
    if ('path' in opts.where) server.server.listen(opts.where.path, done);
    else server.server.listen(opts.where.port, opts.where.host.replace(/^\[(.*)\]$/, '$1'), done);
  });
  const address = server.server.address();
  return {
    port: typeof address === 'object' && address ? address.port : 0,
    setSecureContext: (tls) => server.setSecureContext(tls),
    close: (drainMs) => server.close(drainMs, () => opts.logger.warn({ drainMs }, 'HTTP ext_authz calls did not finish in time; cutting them off')),
  };
}

function handle(req: Http1Request, opts: HttpAuthzListenerOptions): Http1Response | Promise<Http1Response> {
  const url = req.url;
  if (url === HTTP_AUTHZ_HEALTH_PATH || !url.startsWith(HTTP_AUTHZ_PATH_PREFIX)) {
    // Only Envoy's health checks come here; anything else is a misconfigured caller.
    const known = url === HTTP_AUTHZ_HEALTH_PATH;
    const r = opts.readiness();
    const body = JSON.stringify(known ? { status: r.ready ? 'SERVING' : 'NOT_SERVING', ...(r.reason ? { reason: r.reason } : {}) } : { error: 'not_found', detail: `ext_authz calls go under ${HTTP_AUTHZ_PATH_PREFIX}` });
    return { status: known ? (r.ready ? 200 : 503) : 404, headers: ['content-type', 'application/json'], body };
  }
  const fail = (e: unknown): Http1Response => {
    // A bug must cost one request a clear error, never the process.
    opts.logger.error({ err: e }, 'check failed');
    return INTERNAL_ERROR;
  };
  try {
    const started = performance.now();
    const decision = opts.decide(translateHttpCheck(req, opts.limits), started);
    return decision instanceof Promise ? decision.then(answer, fail) : answer(decision);
  } catch (e) {
    return fail(e);
  }
}

function answer({ request, verdict, decisionId }: Decision): Http1Response {
  return httpCheckResponse(verdict, decisionId, request ? clientOwnHeaders(request.headers) : []);
}
