// ProcessingRequest (request headers) → RequestAttributes. Envoy sends the connection's attributes
// (configured as request_attributes in the filter) with the first message.
import { parseRequestIp } from '../../middlebox/ip';
import type { Endpoint, RequestAttributes } from '../../middlebox/types';
import { headersTooLarge, hostWithoutPort, pathWithoutQuery, type Translation, type TranslationLimits } from '../authz/request';
import type { ProcessingRequest, ProtoStruct } from '../envoy-types';
import { HeaderCollector } from '../headers';

/** The attribute namespace Envoy's ext_proc filter reports under. */
export const ATTRIBUTES_KEY = 'envoy.filters.http.ext_proc';

/**
 * gRPC metadata the bootstrap sets (initial_metadata, which a client cannot forge) on an ext_proc
 * filter that runs after ext_authz on the same listener: the request was decided there, so this
 * stream only translates (NAT). Without it, firewall and rate limits would be decided twice and a
 * limit charged two tokens per request.
 */
export const AFTER_EXT_AUTHZ_HEADER = 'x-middlebox-ext-proc-after-ext-authz';
/**
 * gRPC initial metadata of the inbound listener's ext_proc stream: its route goes to the app, so
 * NAT (which picks where a request goes) cannot apply, and must not rewrite its headers.
 */
export const INBOUND_LISTENER_HEADER = 'x-middlebox-ext-proc-inbound';

/** What the rendered bootstrap asks Envoy to send; see src/envoy/bootstrap.ts. */
export const REQUEST_ATTRIBUTES = [
  'source.address',
  'source.port',
  'destination.address',
  'destination.port',
  'connection.uri_san_peer_certificate',
  'request.id',
];

export function translateRequestHeaders(msg: ProcessingRequest, limits: TranslationLimits): Translation {
  const collector = new HeaderCollector(limits.maxHeaderBytes);
  if (!collector.addAll(msg.request_headers?.headers?.headers)) {
    return { ok: false, status: 431, reason: 'headers_too_large', message: headersTooLarge(limits) };
  }
  const headers = collector.map;
  const attrs = msg.attributes?.[ATTRIBUTES_KEY];
  // Without the connection's attributes a CIDR rule could never match: refuse rather than guess.
  if (!text(attrs, 'source.address')) {
    return { ok: false, status: 400, reason: 'missing_attributes', message: 'no source.address attribute (configure request_attributes on the ext_proc filter)' };
  }
  const source = endpoint(attrs, 'source');
  if (!source) return { ok: false, status: 400, reason: 'invalid_source_address', message: 'source.address is not an IP address' };
  const destination = endpoint(attrs, 'destination');
  if (!destination) return { ok: false, status: 400, reason: 'invalid_destination_address', message: 'destination.address is not an IP address' };
  const principal = text(attrs, 'connection.uri_san_peer_certificate');
  if (principal) source.principal = principal;
  return {
    ok: true,
    request: {
      protocol: 'http',
      source,
      destination,
      method: (headers.get(':method') || 'GET').toUpperCase(),
      host: hostWithoutPort(headers.get(':authority') || headers.get('host') || ''),
      path: pathWithoutQuery(headers.get(':path') || '/'),
      headers,
      requestId: text(attrs, 'request.id') || headers.get('x-request-id') || undefined,
    } satisfies RequestAttributes,
  };
}

function text(attrs: ProtoStruct | undefined, name: string): string | undefined {
  const v = attrs?.fields?.[name];
  if (!v) return undefined;
  // protobufjs decodes google.protobuf.Value with its own (camelCase) names whatever keepCase says.
  const str = v.stringValue ?? v.string_value;
  if (str !== undefined) return str;
  const num = v.numberValue ?? v.number_value;
  return num !== undefined ? String(num) : undefined;
}

/** `source.address` is "ip:port" ("[v6]:port"); an absent destination leaves the endpoint empty. */
function endpoint(attrs: ProtoStruct | undefined, side: 'source' | 'destination'): Endpoint | undefined {
  const address = text(attrs, `${side}.address`);
  if (!address) return {};
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:]+):(\d+)$/.exec(address);
  const ip = parseRequestIp(m ? m[1]! : address);
  if (!ip) return undefined;
  const port = Number(text(attrs, `${side}.port`) ?? (m ? m[2] : undefined));
  return Number.isInteger(port) && port > 0 ? { ip, port } : { ip };
}
