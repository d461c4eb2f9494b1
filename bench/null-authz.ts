// A gRPC Authorization server that answers every Check with OK without reading it: the floor of
// ext_authz on this machine (Envoy's side of the call plus a gRPC stream in Node), against which
// the middlebox's own cost shows. Same transport as `middlebox serve`; no decoding, no decision.
// With --http, also a bare Node HTTP/1.1 server answering every call 200: the floor of ext_authz
// over HTTP (Envoy's http_service), as `serve --http-authz-listen` is asked. With --http2, the same
// over HTTP/2 without TLS (bench/envoy-authz-cost.ts: what HTTP/2 to the server would change).
//
//   node dist/bench/null-authz.js <host:port> [--http <host:port>] [--http2 <host:port>]
//   (started by bench/latency.ts and bench/envoy-authz-cost.ts; prints "listening")
import http from 'node:http';
import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { authorizationService, AUTHORIZATION_SERVICE, RpcCode } from '../src/grpc/protos';
import { GrpcTransport } from '../src/grpc/transport';

function main(argv: string[]): void {
  const m = /^([\d.]+):(\d+)$/.exec(argv[0] ?? '');
  const address = (flag: string) => (argv.includes(flag) ? /^([\d.]+):(\d+)$/.exec(argv[argv.indexOf(flag) + 1] ?? '') : undefined);
  const httpAt = address('--http');
  const http2At = address('--http2');
  if (!m || httpAt === null || http2At === null || argv.includes('--help')) {
    process.stderr.write('usage: node dist/bench/null-authz.js <ipv4:port> [--http <ipv4:port>] [--http2 <ipv4:port>]\n');
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
  const httpListening = httpAt
    ? new Promise<void>((resolve, reject) => {
        // Keep-alive longer than Envoy's idle timeout, as the middlebox's HTTP listener does.
        const h = http.createServer({ keepAliveTimeout: 10 * 60_000, noDelay: true }, (_req, res) => {
          res.writeHead(200, ['content-length', '0']);
          res.end();
        });
        h.once('error', reject);
        h.listen(Number(httpAt[2]), httpAt[1]!, resolve);
      })
    : Promise.resolve();
  const http2Listening = http2At
    ? new Promise<void>((resolve, reject) => {
        const h = http2.createServer((_req, res) => {
          res.writeHead(200, { 'content-length': '0' });
          res.end();
        });
        h.once('error', reject);
        h.listen(Number(http2At[2]), http2At[1]!, resolve);
      })
    : Promise.resolve();
  Promise.all([server.listen({ host: m[1]!, port: Number(m[2]) }), httpListening, http2Listening]).then(
    () => process.stdout.write('listening\n'),
    (e: Error) => {
      process.stderr.write(`null-authz: cannot listen on ${argv[0]}: ${e.message}\n`);
      process.exit(1);
    },
  );
  process.on('SIGTERM', () => process.exit(0));
}

main(process.argv.slice(2));
