import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

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
