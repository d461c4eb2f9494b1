// Request attributes for engine and matcher tests, built from a few named fields.
import { parseIp } from '../../src/middlebox/ip';
import type { RequestAttributes } from '../../src/middlebox/types';

export interface RequestShape {
  protocol?: 'http' | 'tcp';
  /** Source address; null for none. */
  from?: string | null;
  to?: string;
  port?: number;
  principal?: string;
  method?: string;
  host?: string;
  path?: string;
  headers?: Record<string, string>;
}

/** An HTTP request from 198.51.100.7 to 10.0.0.5:8080, GET shop.local/, unless told otherwise. */
export function request(shape: RequestShape = {}): RequestAttributes {
  const protocol = shape.protocol ?? 'http';
  const http = protocol === 'http';
  const from = shape.from === undefined ? '198.51.100.7' : shape.from;
  return {
    protocol,
    source: { ip: from === null ? undefined : parseIp(from), principal: shape.principal },
    destination: { ip: parseIp(shape.to ?? '10.0.0.5'), port: shape.port ?? 8080 },
    method: http ? (shape.method ?? 'GET') : undefined,
    host: http ? (shape.host ?? 'shop.local') : undefined,
    path: http ? (shape.path ?? '/') : undefined,
    headers: new Map(Object.entries(shape.headers ?? {})),
  };
}
