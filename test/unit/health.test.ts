// grpc.health.v1.Health on the production transport, asked by a grpc-js client: Check, Watch and
// what a Watch costs once its client has gone.
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { ServerHealth } from '../../src/grpc/health';
import { waitFor } from '../../src/lab/ports';
import { startServer } from '../../src/grpc/server';
import { GrpcTransport } from '../../src/grpc/transport';
import { silentLogger } from '../../src/observability/logger';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { StaticPolicySource } from '../../src/state/port';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { snapshot } from '../harness/policy';

type HealthStub = grpc.Client & Record<string, any>;

function client(address: string): HealthStub {
  const Ctor = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
  return new Ctor(address, grpc.credentials.createInsecure()) as HealthStub;
}

/** A Watch call and what it has received so far; `ended` settles with the call's status code. */
function watch(stub: HealthStub, service: string) {
  const call = stub.Watch({ service }, { deadline: Date.now() + 10_000 }) as grpc.ClientReadableStream<{ status: string }>;
  const statuses: string[] = [];
  call.on('data', (m: { status: string }) => statuses.push(m.status));
  const ended = new Promise<number>((resolve) => {
    call.on('error', (e: grpc.ServiceError) => resolve(e.code));
    call.on('status', (s: grpc.StatusObject) => resolve(s.code));
  });
  return { call, statuses, ended };
}

/** Waits up to 2 s for `cond`, failing with `what`. */
const until = (what: string, cond: () => boolean): Promise<void> => waitFor(cond, { timeoutMs: 2000, intervalMs: 10, what });

describe('ServerHealth', function () {
  this.timeout(15_000);
  let server: GrpcTransport;
  let health: ServerHealth;
  let stub: HealthStub;

  beforeEach(async () => {
    server = new GrpcTransport({ maxReceiveMessageBytes: 1 << 20, maxSendMessageBytes: 1 << 20 });
    health = new ServerHealth(new StaticPolicySource(snapshot({})), undefined, 3);
    health.addToServer(server);
    const port = await server.listen({ host: '127.0.0.1', port: 0 });
    stub = client(`127.0.0.1:${port}`);
  });

  afterEach(() => {
    stub?.close();
    server?.forceShutdown();
  });

  it('answers Check for the server and its components, NOT_FOUND for any other name', async () => {
    const check = (service: string) =>
      new Promise<string | number>((resolve) => stub.Check({ service }, (err: grpc.ServiceError | null, res: { status: string }) => resolve(err ? err.code : res.status)));
    assert.equal(await check(''), 'SERVING');
    assert.equal(await check('middlebox.policy'), 'SERVING');
    assert.equal(await check('no.such.service'), grpc.status.NOT_FOUND);
  });

  it('Watch sends the status, then each change; close() ends it', async () => {
    const w = watch(stub, '');
    await until('the first status', () => w.statuses.length === 1);
    health.refresh(); // no change, nothing sent
    health.drain();
    await until('NOT_SERVING after drain()', () => w.statuses.length === 2);
    assert.deepEqual(w.statuses, ['SERVING', 'NOT_SERVING']);
    assert.equal(health.watching, 1);
    health.close();
    assert.equal(await w.ended, grpc.status.OK);
    assert.equal(health.watching, 0);
  });

  it('keeps nothing of a Watch whose client has gone, whatever name it asked for', async () => {
    for (let i = 0; i < 20; i++) {
      const w = watch(stub, `unknown-${i}-${'x'.repeat(10_000)}`);
      await until('SERVICE_UNKNOWN', () => w.statuses.length === 1);
      assert.deepEqual(w.statuses, ['SERVICE_UNKNOWN']);
      assert.deepEqual(health.watchedNames(), [], 'an open Watch of an unknown name does not hold the name');
      w.call.cancel();
      await w.ended;
      await until('the watch is dropped', () => health.watching === 0);
    }
  });

  it('refuses a Watch past the cap of open ones', async () => {
    const open = [0, 1, 2].map(() => watch(stub, ''));
    await until('three watches', () => open.every((w) => w.statuses.length === 1));
    const refused = watch(stub, '');
    assert.equal(await refused.ended, grpc.status.RESOURCE_EXHAUSTED);
    open[0]!.call.cancel();
    await until('one closed', () => health.watching === 2);
    const again = watch(stub, '');
    await until('a watch is taken once there is room', () => again.statuses.length === 1);
    for (const w of [...open, again]) w.call.cancel();
  });
});

describe('startServer shutdown with a health Watch open', function () {
  this.timeout(10_000);

  it('ends the Watch and finishes without waiting out the drain time', async () => {
    const warnings: string[] = [];
    const logger = silentLogger();
    logger.warn = ((_: unknown, msg?: string) => void warnings.push(String(msg))) as typeof logger.warn;
    const server = await startServer({
      listen: '127.0.0.1:0',
      policies: new StaticPolicySource(snapshot({})),
      ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() },
      logger,
    });
    const stub = client(server.address);
    try {
      const w = watch(stub, '');
      await until('the first status', () => w.statuses.length === 1);
      // A drain time longer than this test's timeout: a Watch that held the shutdown would fail it.
      await server.shutdown({ delayMs: 0, drainMs: 30_000 });
      assert.equal(await w.ended, grpc.status.OK);
      assert.deepEqual(w.statuses, ['SERVING', 'NOT_SERVING']);
      assert.deepEqual(warnings, []);
    } finally {
      stub.close();
    }
  });
});
