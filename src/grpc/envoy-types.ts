// The decoded shapes of the Envoy messages this server reads and writes, as @grpc/proto-loader
// produces them with keepCase, numeric enums and oneofs. Only the fields used here are listed;
// everything is optional because proto3 senders may leave anything out.

export interface SocketAddress {
  address?: string;
  port_value?: number;
}

export interface Address {
  socket_address?: SocketAddress;
  pipe?: { path?: string };
  address?: string;
}

export interface Peer {
  address?: Address;
  principal?: string;
  service?: string;
}

export interface HeaderValue {
  key?: string;
  value?: string;
  raw_value?: Buffer;
}

export interface HttpRequestAttributes {
  id?: string;
  method?: string;
  headers?: Record<string, string>;
  header_map?: { headers?: HeaderValue[] };
  path?: string;
  host?: string;
  scheme?: string;
  protocol?: string;
}

export interface CheckRequest {
  attributes?: {
    source?: Peer;
    destination?: Peer;
    request?: { http?: HttpRequestAttributes };
  };
}

/** config.core.v3.HeaderValueOption.HeaderAppendAction */
export const HeaderAppend = { APPEND_IF_EXISTS_OR_ADD: 0, ADD_IF_ABSENT: 1, OVERWRITE_IF_EXISTS_OR_ADD: 2 } as const;

export interface HeaderValueOption {
  header: { key: string; value: string };
  append_action?: number;
}

export interface CheckResponse {
  status: { code: number; message?: string };
  denied_response?: { status: { code: number }; headers: HeaderValueOption[]; body: string };
  ok_response?: { headers: HeaderValueOption[]; headers_to_remove?: string[]; response_headers_to_add?: HeaderValueOption[] };
}
