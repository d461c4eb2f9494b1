// How a fallback's work gets written to etcd once it answers again: one pass at a time (two at once
// could write the same thing twice), and, after a failure that did not open the breaker (so no
// closing will announce recovery), a pass shortly.
import type { EtcdBreaker } from './breaker';

/** After a failure that did not open the breaker, how soon a pass runs. */
const WRITE_BACK_DELAY_MS = 500;

export class WriteBack<T> {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<T> | undefined;

  constructor(
    private readonly breaker: EtcdBreaker,
    private readonly pass: () => Promise<T>,
  ) {}

  /** Runs a pass, or joins the one under way. */
  run(): Promise<T> {
    this.running ??= this.pass().finally(() => (this.running = undefined));
    return this.running;
  }

  /** A pass in WRITE_BACK_DELAY_MS, unless one is already due or the breaker is open by then. */
  soon(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.breaker.isDegraded) void this.run();
    }, WRITE_BACK_DELAY_MS);
    this.timer.unref();
  }
}
