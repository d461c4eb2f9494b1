// The request as the decision engines see it, whatever protocol carried it (ext_authz HTTP,
// ext_authz network filter, ext_proc). Translation from Envoy's messages lives in grpc/.

export type Family = 4 | 6;

/** An IP address parsed once per request: IPv4-mapped IPv6 addresses are unmapped to IPv4. */
export interface IpAddress {
  family: Family;
  /** 4 or 16 bytes, network order. */
  bytes: Uint8Array;
  /** Canonical text form (what logs and rate-limit keys use). */
  text: string;
}

export interface Endpoint {
  ip?: IpAddress;
  port?: number;
  /** SPIFFE id (URI SAN) of the peer certificate, when Envoy reports one. */
  principal?: string;
}

export interface RequestAttributes {
  /** 'http' for HTTP requests, 'tcp' for connections seen by Envoy's network ext_authz filter. */
  protocol: 'http' | 'tcp';
  source: Endpoint;
  destination: Endpoint;
  /** Upper-case HTTP method; absent for tcp. */
  method?: string;
  /** Lower-case host without port; absent for tcp. */
  host?: string;
  /** Path without query string; absent for tcp. */
  path?: string;
  /** Lower-case header names; absent for tcp. */
  headers: ReadonlyMap<string, string>;
  /** Envoy's x-request-id when present. */
  requestId?: string;
}

export type Middlebox = 'firewall' | 'ratelimit' | 'nat';

export interface HeaderValue {
  key: string;
  value: string;
}

/** What one engine (or the whole pipeline) decided. */
export interface Verdict {
  allow: boolean;
  /** HTTP status for a denial (403 firewall, 429 rate limit, 400/431 bad input). */
  status?: number;
  middlebox?: Middlebox;
  policy?: string;
  rule?: string;
  /** Short snake_case reason; doubles as a metric label. */
  reason: string;
  /** Headers to add to the upstream request (allow) or to the denial response (deny). */
  headers?: HeaderValue[];
  /** Headers to add to the response the client gets when the request is allowed (ratelimit-*). */
  responseHeaders?: HeaderValue[];
  /** Denials that a shadow policy or rule would have made: logged, never enforced. */
  shadowDenials?: ShadowDenial[];
  /** Where NAT sends an allowed request. */
  nat?: NatDecision;
}

export interface NatDecision {
  policy: string;
  rule: string;
  /** ip:port ([v6]:port) of the chosen backend. */
  backend: string;
  /** The affinity key, when the rule has one and the request carried it. */
  flow?: string;
  rewriteHost: boolean;
  sourceAs?: string;
}

export interface ShadowDenial {
  middlebox: Middlebox;
  policy: string;
  rule: string;
  status: number;
}
