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
  /** Envoy stores it as the ext_authz filter's dynamic metadata (access logs, later filters). */
  dynamic_metadata?: ProtoStruct;
}

// --- ext_proc ---------------------------------------------------------------------------------------

/** google.protobuf.Value as decoded (protobufjs names well-known types' fields in camelCase). */
export interface StructValue {
  stringValue?: string;
  numberValue?: number;
  string_value?: string;
  number_value?: number;
  kind?: string;
}

export interface ProtoStruct {
  fields?: Record<string, StructValue>;
}

export interface HttpHeadersMessage {
  headers?: { headers?: HeaderValue[] };
  end_of_stream?: boolean;
}

export interface ProcessingRequest {
  request_headers?: HttpHeadersMessage;
  response_headers?: HttpHeadersMessage;
  request_body?: { body?: Buffer; end_of_stream?: boolean };
  response_body?: { body?: Buffer; end_of_stream?: boolean };
  request_trailers?: { trailers?: { headers?: HeaderValue[] } };
  response_trailers?: { trailers?: { headers?: HeaderValue[] } };
  /** Which of the above is set (proto-loader oneofs). */
  request?: string;
  attributes?: Record<string, ProtoStruct>;
  observability_mode?: boolean;
}

export interface ExtProcHeaderOption {
  header: { key: string; raw_value: Buffer };
  append_action?: number;
}

export interface HeaderMutation {
  set_headers?: ExtProcHeaderOption[];
  remove_headers?: string[];
}

export interface CommonResponse {
  header_mutation?: HeaderMutation;
  clear_route_cache?: boolean;
}

/** ProcessingMode.HeaderSendMode */
export const HeaderSendMode = { DEFAULT: 0, SEND: 1, SKIP: 2 } as const;

export interface ProcessingResponse {
  request_headers?: { response?: CommonResponse };
  response_headers?: { response?: CommonResponse };
  request_body?: { response?: CommonResponse };
  response_body?: { response?: CommonResponse };
  request_trailers?: { header_mutation?: HeaderMutation };
  response_trailers?: { header_mutation?: HeaderMutation };
  immediate_response?: { status: { code: number }; headers?: HeaderMutation; body?: Buffer; details?: string };
  mode_override?: { response_header_mode?: number };
}
