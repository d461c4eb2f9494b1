// A gRPC Authorization server that answers every Check with OK without reading it: the floor of
// ext_authz on this machine (Envoy's side of the call plus a gRPC stream in Node), against which
// the middlebox's own cost shows. Same transport as `middlebox serve`; no decoding, no decision.
//
//   node dist/bench/null-authz.js <host:port>      (started by bench/latency.ts; prints "listening")
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { authorizationService, AUTHORIZATION_SERVICE, RpcCode } from '../src/grpc/protos';
import { GrpcTransport } from '../src/grpc/transport';

function main(argv: string[]): void {
  const m = /^([\d.]+):(\d+)$/.exec(argv[0] ?? '');
  if (!m || argv.includes('--help')) {
    process.stderr.write('usage: node dist/bench/null-authz.js <ipv4:port>\n');
    process.exit(argv.includes('--help') ? 0 : 2);
  }
  const check = authorizationService().Check!;
  // The answer, encoded once: CheckResponse { status { code: OK } }.
  const ok = check.responseSerialize({ status: { code: RpcCode.OK } });
  const server = new GrpcTransport({ maxReceiveMessageBytes: 4 << 20, maxSendMessageBytes: 4 << 20 });
  const unread: grpc.ServiceDefinition = {
    Check: { ...check, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b },
  };
  server.addService(unread, { Check: (_call: unknown, cb: (e: null, v: Buffer) => void) => cb(null, ok) } as grpc.UntypedServiceImplementation);
  new HealthImplementation({ '': 'SERVING', [AUTHORIZATION_SERVICE]: 'SERVING' }).addToServer(server as unknown as grpc.Server);
  server.listen({ host: m[1]!, port: Number(m[2]) }).then(
    () => process.stdout.write('listening\n'),
    (e: Error) => {
      process.stderr.write(`null-authz: cannot listen on ${argv[0]}: ${e.message}\n`);
      process.exit(1);
    },
  );
  process.on('SIGTERM', () => process.exit(0));
}

main(process.argv.slice(2));
