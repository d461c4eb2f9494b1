// `serve --listen unix:PATH`: what is already at PATH. A socket file left by a killed process is
// taken over; a regular file, or a socket another process still listens on, is refused and left
// alone. The socket file goes with the server.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startServer } from '../../src/grpc/server';
import { HealthClient } from '../../src/lab/middlebox';
import { silentLogger } from '../../src/observability/logger';
import { MemoryNatTable } from '../../src/state/nat/memory';
import { StaticPolicySource } from '../../src/state/port';
import { LocalRateLimitStore } from '../../src/state/ratelimit/local';
import { snapshot } from '../harness/policy';

function serve(listen: string) {
  return startServer({
    listen,
    policies: new StaticPolicySource(snapshot({})),
    ports: { rateLimits: new LocalRateLimitStore({ replicas: () => 1 }), nat: new MemoryNatTable() },
    logger: silentLogger(),
  });
}

describe('serve on a unix socket: what is already at its path', function () {
  this.timeout(20_000);
  let dir: string;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-unix-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('refuses a path that holds a regular file, and leaves the file alone', async () => {
    const file = path.join(dir, 'notes.txt');
    fs.writeFileSync(file, 'keep me');
    await assert.rejects(serve(`unix:${file}`), /exists and is not a socket/);
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');
  });

  it('refuses a socket another process listens on, which keeps serving', async () => {
    const sock = path.join(dir, 'busy.sock');
    // (The check connects and hangs up at once: its socket may see a reset.)
    const other = net.createServer((s) => s.on('error', () => undefined).end('other'));
    await new Promise<void>((resolve) => other.listen(sock, resolve));
    try {
      await assert.rejects(serve(`unix:${sock}`), /another process listens on/);
      const answer = await new Promise<string>((resolve, reject) => {
        let got = '';
        net.connect(sock).on('data', (d) => (got += d)).on('end', () => resolve(got)).on('error', reject);
      });
      assert.equal(answer, 'other');
    } finally {
      await new Promise((r) => other.close(r));
    }
  });

  it('refuses a socket whose listener does not accept now (a full backlog), though connecting to it fails', async () => {
    const sock = path.join(dir, 'full.sock');
    // A listener that never accepts, with the smallest backlog: the second connection gets EAGAIN.
    const script = 'import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1]); s.listen(0)\nprint("ready", flush=True)\ntime.sleep(30)\n';
    const listener = spawn('python3', ['-c', script, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
    const clients: net.Socket[] = [];
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the listener did not start within 10 s')), 10_000);
        listener.stdout.once('data', () => (clearTimeout(timer), resolve()));
        listener.once('exit', (code) => (clearTimeout(timer), reject(new Error(`the listener exited (${code})`))));
        listener.once('error', (e) => (clearTimeout(timer), reject(new Error(`python3 could not be started: ${e.message}`))));
      });
      clients.push(await new Promise<net.Socket>((resolve, reject) => {
        const c = net.connect(sock, () => resolve(c));
        c.once('error', reject);
      }));
      await assert.rejects(serve(`unix:${sock}`), /another process listens on .*connecting to it failed with EAGAIN/);
      assert.ok(fs.lstatSync(sock).isSocket(), 'its socket file is still there');
    } finally {
      for (const c of clients) c.destroy();
      listener.kill('SIGKILL');
    }
  });

  it('takes over a socket file left by a killed process, and removes its own at shutdown', async () => {
    const sock = path.join(dir, 'stale.sock');
    // A process that binds the path and is killed: its socket file stays behind.
    const code = `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`;
    assert.throws(() => execFileSync(process.execPath, ['-e', code], { timeout: 10_000 }));
    assert.ok(fs.lstatSync(sock).isSocket(), 'a stale socket file');
    const server = await serve(`unix:${sock}`);
    const health = new HealthClient(`unix:${sock}`);
    try {
      assert.equal(await health.check(''), 'SERVING');
    } finally {
      health.close();
      await server.shutdown({ delayMs: 0, drainMs: 1000 });
    }
    assert.equal(fs.existsSync(sock), false);
  });
});
