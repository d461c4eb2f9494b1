// A real multi-member etcd cluster on loopback, for tests that need quorum: free client and peer
// ports for every member, a data dir each, short raft timings so that elections take well under a
// second, and per-member failure moves (stop, kill, freeze, restart on the same data) to take members
// away and bring them back. The single-member EtcdProcess stays the default lab etcd.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { etcdEnv, etcdExecutable, isHealthy } from './etcd';
import { freePort, waitFor } from './ports';
import { LabChild, makeTempDir, removeTempDir, retryWhileAddressInUse } from './processes';

export interface EtcdClusterOptions {
  /** Number of members; default 3. */
  members?: number;
  /** Append each member's output to `<logDir>/etcd-<name>.log` instead of keeping its last lines in memory. */
  logDir?: string;
}

const HOST = '127.0.0.1';
const READY_TIMEOUT_MS = 20_000;
/** How long one probe (health, status, read) of one member may take. */
const PROBE_TIMEOUT_MS = 1000;
/** Lines of each member's output quoted in an error. */
const ERROR_TAIL_LINES = 40;

/** etcd's raft timings in ms: a leader is missed after 500 ms, so an election ends within about a second. */
const HEARTBEAT_MS = 50;
const ELECTION_TIMEOUT_MS = 500;

/**
 * One member of an EtcdCluster. It keeps its ports and data dir for the cluster's lifetime, so a
 * restarted member comes back as the same member: etcd finds its WAL in the data dir, ignores the
 * --initial-cluster* flags and catches up from the leader.
 */
export class EtcdMember {
  private child: LabChild | undefined;
  private frozen = false;

  constructor(
    readonly index: number,
    readonly name: string,
    private readonly clientPort: number,
    private readonly peerPort: number,
    readonly dataDir: string,
    private readonly initialCluster: string,
    private readonly token: string,
    private readonly logFile: string | undefined,
  ) {}

  /** Client URL, e.g. "http://127.0.0.1:40123". */
  get endpoint(): string {
    return `http://${HOST}:${this.clientPort}`;
  }

  get peerUrl(): string {
    return `http://${HOST}:${this.peerPort}`;
  }

  get pid(): number {
    if (!this.child) throw new Error(`etcd ${this.name} was never started`);
    return this.child.pid;
  }

  get running(): boolean {
    return this.child?.running ?? false;
  }

  /** Running and not frozen: may answer. */
  get live(): boolean {
    return this.running && !this.frozen;
  }

  /** The last lines this member printed. */
  output(): string {
    return this.child?.output() ?? '';
  }

  /** Starts the process; does not wait. Used by EtcdCluster.start and restart(). */
  launch(): void {
    if (this.running) throw new Error(`etcd ${this.name} is already running`);
    this.frozen = false;
    this.child = LabChild.spawn({
      name: `etcd ${this.name}`,
      command: etcdExecutable(),
      args: [
        '--name', this.name,
        '--data-dir', this.dataDir,
        '--listen-client-urls', this.endpoint,
        '--advertise-client-urls', this.endpoint,
        '--listen-peer-urls', this.peerUrl,
        '--initial-advertise-peer-urls', this.peerUrl,
        // Only read on the first start; with a data dir from before, etcd rejoins from its WAL.
        '--initial-cluster', this.initialCluster,
        '--initial-cluster-state', 'new',
        '--initial-cluster-token', this.token,
        '--heartbeat-interval', String(HEARTBEAT_MS),
        '--election-timeout', String(ELECTION_TIMEOUT_MS),
        // etcd 3.4's default logger is deprecated and says so on every start.
        '--logger', 'zap',
      ],
      env: etcdEnv(),
      logFile: this.logFile,
    });
  }

  /** /health says true: this member is up and the cluster has a leader and quorum. */
  async healthy(): Promise<boolean> {
    if (!this.running) return false;
    try {
      return await isHealthy(this.endpoint);
    } catch {
      return false;
    }
  }

  /** SIGTERM, SIGKILL after 3 s; keeps the data dir (the cluster removes it in stop()). */
  async stop(): Promise<void> {
    await this.child?.stop(3000);
    this.frozen = false;
  }

  /** SIGKILL, keeping the data dir: a crash. */
  async kill(): Promise<void> {
    await this.child?.kill();
    this.frozen = false;
  }

  /** SIGSTOP: the member keeps its connections but answers nothing, to clients or peers; resolves once it is stopped. */
  async freeze(): Promise<void> {
    if (!this.running) throw new Error(`etcd ${this.name} is not running`);
    this.frozen = true;
    await this.child!.suspend();
  }

  /** SIGCONT after freeze(). */
  thaw(): void {
    this.child?.signal('SIGCONT');
    this.frozen = false;
  }

  /**
   * Starts the member again on the same ports and data dir (stopping it first if it still runs);
   * it rejoins the cluster as the same member. By default waits until its /health is true, which
   * needs a quorum: when restoring several members, pass `{ wait: false }` for all but the last.
   */
  async restart(opts: { wait?: boolean } = {}): Promise<void> {
    await this.stop();
    if (opts.wait === false) {
      this.launch();
      return;
    }
    await retryWhileAddressInUse(async () => {
      this.launch();
      await this.waitHealthy(READY_TIMEOUT_MS);
    });
  }

  /** Waits until /health is true; on timeout or exit kills the member and fails with its output. */
  waitHealthy(timeoutMs = READY_TIMEOUT_MS): Promise<void> {
    if (!this.child) return Promise.reject(new Error(`etcd ${this.name} was never started`));
    return this.child.waitReady(() => this.healthy(), timeoutMs, `etcd ${this.name} to report healthy at ${this.endpoint}/health`);
  }

  /** POST to this member's v3 JSON gateway, with a deadline. */
  async gateway<T>(route: string, body: object, timeoutMs = PROBE_TIMEOUT_MS): Promise<T> {
    const res = await fetch(`${this.endpoint}/v3/${route}`, {
      method: 'POST',
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    if (!res.ok) throw new Error(`etcd ${this.name} /v3/${route}: ${res.status} ${await res.text()}`);
    return (await res.json()) as T;
  }
}

interface StatusResponse {
  header?: { member_id?: string; revision?: string };
  leader?: string;
}

/** A range over the single key "\0": a cheap read whose header carries the revision. */
const PROBE_RANGE = { key: Buffer.from('\0').toString('base64') };

export class EtcdCluster {
  private stopped = false;

  private constructor(
    private readonly members: EtcdMember[],
    /** The --initial-cluster-token, unique per cluster. */
    readonly token: string,
  ) {}

  static async start(opts: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    const count = opts.members ?? 3;
    if (!Number.isInteger(count) || count < 1) throw new Error(`an etcd cluster needs at least one member, not ${count}`);

    // The OS may hand out a port twice since each probe socket is closed at once: insist on distinct ones.
    const ports = new Set<number>();
    while (ports.size < 2 * count) ports.add(await freePort(HOST));
    const [clientPorts, peerPorts] = [[...ports].slice(0, count), [...ports].slice(count)];
    const names = Array.from({ length: count }, (_, i) => `m${i + 1}`);
    const initialCluster = names.map((name, i) => `${name}=http://${HOST}:${peerPorts[i]}`).join(',');
    const token = `middlebox-lab-${process.pid}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;

    const members = names.map(
      (name, i) =>
        new EtcdMember(
          i,
          name,
          clientPorts[i]!,
          peerPorts[i]!,
          makeTempDir(`middlebox-etcd-${name}-`),
          initialCluster,
          token,
          opts.logDir ? path.join(opts.logDir, `etcd-${name}.log`) : undefined,
        ),
    );
    const cluster = new EtcdCluster(members, token);
    try {
      // All at once: no member can become healthy before a quorum of them runs.
      for (const m of members) m.launch();
      await cluster.waitAllHealthy(READY_TIMEOUT_MS);
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  /** Client URLs of all members, in member order (running or not). */
  get endpoints(): string[] {
    return this.members.map((m) => m.endpoint);
  }

  get size(): number {
    return this.members.length;
  }

  /** Member `i`, counted from 0 (its name is m<i+1>). */
  member(i: number): EtcdMember {
    const m = this.members[i];
    if (!m) throw new Error(`no etcd member ${i} (the cluster has ${this.members.length}, counted from 0)`);
    return m;
  }

  healthy(i: number): Promise<boolean> {
    return this.member(i).healthy();
  }

  /**
   * The cluster can commit: a linearizable read (which needs the leader to confirm its leadership
   * with a quorum) through some live member answers within 1 s.
   */
  async hasQuorum(): Promise<boolean> {
    const live = this.members.filter((m) => m.live);
    if (live.length === 0) return false;
    try {
      await Promise.any(live.map((m) => m.gateway('kv/range', PROBE_RANGE)));
      return true;
    } catch {
      return false;
    }
  }

  /** Index of the member that is leader now, as the live members see it; undefined if none answers or there is none. */
  async leader(): Promise<number | undefined> {
    const live = this.members.filter((m) => m.live);
    const statuses = await Promise.all(
      live.map((m) => m.gateway<StatusResponse>('maintenance/status', {}).then((s) => ({ m, s }), () => undefined)),
    );
    const byId = new Map<string, EtcdMember>();
    for (const r of statuses) if (r?.s.header?.member_id) byId.set(r.s.header.member_id, r.m);
    for (const r of statuses) {
      const leader = r?.s.leader && byId.get(r.s.leader);
      if (leader) return leader.index;
    }
    return undefined;
  }

  /**
   * The store's current revision, read linearizably through a live member. Every write transaction
   * raises it by one (lease grants and keep-alives do not).
   */
  async revision(): Promise<number> {
    const live = this.members.filter((m) => m.live);
    if (live.length === 0) throw new Error('no etcd member is running');
    const body = await Promise.any(live.map((m) => m.gateway<StatusResponse>('kv/range', PROBE_RANGE))).catch((e: AggregateError) => {
      throw new Error(`no etcd member answered a read: ${e.errors.map((x: Error) => x.message).join('; ')}`);
    });
    const revision = Number(body.header?.revision);
    if (!Number.isFinite(revision)) throw new Error(`etcd /v3/kv/range: no revision in ${JSON.stringify(body)}`);
    return revision;
  }

  /**
   * Waits until every member reports healthy. On timeout or when a member exits, fails with every
   * member's last output (the reason is usually in one of them). Does not stop anything.
   */
  async waitAllHealthy(timeoutMs = READY_TIMEOUT_MS): Promise<void> {
    const what = `all ${this.members.length} etcd members to report healthy`;
    let exited: EtcdMember | undefined;
    try {
      await waitFor(
        async () => {
          exited = this.members.find((m) => !m.running);
          if (exited) return true;
          const health = await Promise.all(this.members.map((m) => m.healthy()));
          return health.every(Boolean);
        },
        { timeoutMs, what, intervalMs: 100 },
      );
      if (exited) throw new Error(`etcd ${exited.name} is not running (exited or stopped) while waiting for ${what}`);
    } catch (err) {
      const health = await Promise.all(this.members.map(async (m) => `${m.name}: ${m.running ? ((await m.healthy()) ? 'healthy' : 'unhealthy') : 'not running'}`));
      throw new Error(`${(err as Error).message} (${health.join(', ')})\n${this.outputs()}`);
    }
  }

  /** Every member's last lines, headed by its name and endpoint, for error messages. */
  outputs(): string {
    return this.members
      .map((m) => `--- last output of etcd ${m.name} (${m.endpoint}) ---\n${m.output().split('\n').slice(-ERROR_TAIL_LINES).join('\n')}`)
      .join('\n');
  }

  /** Stops every member and removes the data dirs. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.all(this.members.map((m) => m.stop()));
    for (const m of this.members) removeTempDir(m.dataDir);
  }
}
