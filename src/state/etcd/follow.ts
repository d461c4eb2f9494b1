// Load everything under a key prefix, then follow a watch from the revision that was loaded, so
// that no change falls between the two. An unreachable etcd is retried with backoff until it
// answers or the follower is closed; a watch that etcd ends (its revision compacted) starts over
// with a fresh load. Used by the policy store, the NAT table and membership.
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { Logger } from '../../observability/logger';
import { withDeadline } from './client';

export interface FollowHandlers {
  /** Every key under the prefix, once, before any watch event. */
  loaded(kvs: IKeyValue[], revision: string): void;
  put(kv: IKeyValue): void;
  delete(kv: IKeyValue): void;
  /** The watch lost or regained its connection (it resumes by itself). */
  connection?(connected: boolean): void;
}

export class PrefixFollower {
  private watcher: Watcher | undefined;
  private closed = false;

  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    private readonly logger: Logger,
    /** For log lines: "policies", "NAT table". */
    private readonly what: string,
  ) {}

  /** Resolves once loaded and watching (or when closed first). */
  async start(handlers: FollowHandlers, loadTimeoutMs = 3000): Promise<void> {
    let backoff = 200;
    while (!this.closed) {
      try {
        const res = await withDeadline(`${this.what} load`, loadTimeoutMs, () => this.client.getAll().prefix(this.prefix).exec());
        // Closed while loading (a shutdown during a restart): nothing more is delivered.
        if (this.closed) return;
        handlers.loaded(res.kvs, res.header.revision);
        const watcher = await this.client.watch().prefix(this.prefix).startRevision(String(BigInt(res.header.revision) + 1n)).create();
        if (this.closed) {
          await watcher.cancel().catch(() => undefined);
          return;
        }
        this.watcher = watcher;
        watcher
          .on('put', (kv) => {
            if (this.watcher === watcher) handlers.put(kv);
          })
          .on('delete', (kv) => {
            if (this.watcher === watcher) handlers.delete(kv);
          })
          .on('disconnected', () => {
            this.logger.warn(`${this.what}: watch disconnected from etcd; keeping what is known`);
            handlers.connection?.(false);
          })
          .on('connected', () => handlers.connection?.(true))
          .on('error', (err) => {
            // etcd ended the watch (the revision it would resume from was compacted while the
            // connection was down, say): it delivers nothing more. Load everything again and
            // watch from there, or this replica would keep a table that never changes.
            if (this.watcher !== watcher || this.closed) return;
            this.watcher = undefined;
            this.logger.error({ err: err.message }, `${this.what}: etcd ended the watch; loading everything again`);
            handlers.connection?.(false);
            // (No cancel: etcd has ended this watch already, and etcd3 would wait for its answer.)
            void this.start(handlers, loadTimeoutMs);
          });
        handlers.connection?.(true);
        return;
      } catch (e) {
        this.logger.warn({ err: (e as Error).message, retryInMs: backoff }, `cannot load ${this.what} from etcd; retrying`);
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.watcher?.cancel().catch(() => undefined);
  }
}
