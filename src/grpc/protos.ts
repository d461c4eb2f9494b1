import { existsSync } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';

// Envoy's API protos ship inside @grpc/grpc-js-xds; they are loaded from there, never copied.
const XDS_DEPS = path.join(path.dirname(require.resolve('@grpc/grpc-js-xds/package.json')), 'deps');
const INCLUDE_DIRS = ['envoy-api', 'googleapis', 'xds', 'protoc-gen-validate'].map((d) => path.join(XDS_DEPS, d));

// keepCase: field names as on the wire (no camelCase conversion per message); enums as numbers and
// longs as numbers avoid string conversions on the hot path; defaults off keeps decoded objects small.
const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: Number,
  defaults: false,
  oneofs: true,
  includeDirs: INCLUDE_DIRS,
};

export const AUTHORIZATION_SERVICE = 'envoy.service.auth.v3.Authorization';
export const EXTERNAL_PROCESSOR_SERVICE = 'envoy.service.ext_proc.v3.ExternalProcessor';

let cache: grpc.GrpcObject | undefined;

/** The gRPC object for Envoy's external authorization and external processing APIs. Loaded once. */
export function envoyApi(): grpc.GrpcObject {
  if (!cache) {
    const def = protoLoader.loadSync(
      ['envoy/service/auth/v3/external_auth.proto', 'envoy/service/ext_proc/v3/external_processor.proto'],
      LOADER_OPTIONS,
    );
    cache = grpc.loadPackageDefinition(def);
  }
  return cache;
}

export function authorizationService(): grpc.ServiceDefinition {
  const api = envoyApi() as any;
  return api.envoy.service.auth.v3.Authorization.service as grpc.ServiceDefinition;
}

/** Client constructor, for tests and tools that talk to the server as Envoy would. */
export function authorizationClient(): grpc.ServiceClientConstructor {
  const api = envoyApi() as any;
  return api.envoy.service.auth.v3.Authorization as grpc.ServiceClientConstructor;
}

export function externalProcessorService(): grpc.ServiceDefinition {
  const api = envoyApi() as any;
  return api.envoy.service.ext_proc.v3.ExternalProcessor.service as grpc.ServiceDefinition;
}

export function externalProcessorClient(): grpc.ServiceClientConstructor {
  const api = envoyApi() as any;
  return api.envoy.service.ext_proc.v3.ExternalProcessor as grpc.ServiceClientConstructor;
}

/** google.rpc.Code values used in responses. */
export const RpcCode = { OK: 0, INVALID_ARGUMENT: 3, PERMISSION_DENIED: 7, RESOURCE_EXHAUSTED: 8, INTERNAL: 13, UNAVAILABLE: 14 } as const;

/**
 * Encoders for Authorization/Check, the call every request makes, without proto-loader's object
 * conversions: the request is decoded into protobufjs message objects (read as CheckRequest: unset
 * scalars read as their defaults, unset messages as null, int64 as Long), and the response, built by
 * authz/response.ts with the field names and enum numbers protobufjs expects, is encoded as it is.
 * Each saves a full copy of the message per request (5 % of a replica's CPU in a profile). The
 * results are checked against proto-loader's own in test/unit/authz-codec.test.ts.
 */
export interface CheckCodec {
  decodeRequest(bytes: Buffer): unknown;
  encodeResponse(message: unknown): Buffer;
}

let checkCodec: CheckCodec | undefined;

export function fastCheckCodec(): CheckCodec {
  if (!checkCodec) {
    // proto-loader has registered the well-known protos it adds (descriptor.proto among them).
    envoyApi();
    const root = new protobuf.Root();
    const resolve = root.resolvePath;
    root.resolvePath = (origin, target) => {
      if (path.isAbsolute(target)) return target;
      for (const dir of INCLUDE_DIRS) {
        const full = path.join(dir, target);
        if (existsSync(full)) return full;
      }
      return resolve(origin, target);
    };
    root.loadSync('envoy/service/auth/v3/external_auth.proto', { keepCase: true }).resolveAll();
    const request = root.lookupType('envoy.service.auth.v3.CheckRequest');
    const response = root.lookupType('envoy.service.auth.v3.CheckResponse');
    checkCodec = {
      decodeRequest: (bytes) => request.decode(bytes),
      encodeResponse: (message) => {
        // In Node protobufjs writes into a Buffer already; anything else is wrapped, not copied.
        const out = response.encode(message as protobuf.Message).finish();
        return Buffer.isBuffer(out) ? out : Buffer.from(out.buffer, out.byteOffset, out.byteLength);
      },
    };
  }
  return checkCodec;
}

/** Authorization with Check on the fast codec: what the server registers. */
export function fastAuthorizationService(): grpc.ServiceDefinition {
  const codec = fastCheckCodec();
  const def = authorizationService();
  return {
    ...def,
    Check: { ...def.Check!, requestDeserialize: codec.decodeRequest, responseSerialize: codec.encodeResponse },
  };
}
