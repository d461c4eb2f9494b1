// Open-loop HTTP load at a fixed rate, one sample per response. The `loadtest` package sends one
// request every 1000/rate ms from a drift-correcting timer whatever is still in flight (a new
// keep-alive connection is opened when every open one is busy), so the offered rate does not sag
// when the server slows down. See bench/README.md for why not autocannon.
import { loadTest, type LoadTestResult } from 'loadtest';

export interface Sample {
  /** Date.now() when the response had arrived. */
  at: number;
  /**
   * When the request was handed to Node's HTTP client: `at` minus its response time, which is
   * measured on the monotonic clock to a fraction of a ms. NaN where loadtest reports no result
   * (a connection failure, a timeout, a response stream that broke).
   */
  sent: number;
  /** HTTP status; 0 for a connection failure or timeout without a response. */
  status: number;
}

export interface OpenLoopOptions {
  /** The load is split evenly over these URLs (one generator each, running side by side). */
  urls: string[];
  /** Requests per second over all URLs. */
  rate: number;
  durationMs: number;
  /** Per-request timeout. */
  timeoutMs: number;
  onSample?: (s: Sample) => void;
}

type RequestFn = (params: unknown, callback: (res: unknown) => void) => { labels?: { sentPerfMs: number } };

export async function openLoop(opts: OpenLoopOptions): Promise<Sample[]> {
  const samples: Sample[] = [];
  // Each request carries its send time on the monotonic clock, which loadtest hands back with its
  // result (`labels`): loadtest's own requestElapsed is cut down to whole ms. Windows and events
  // are on Date.now(), so `at` is too, and `sent` is `at` minus the precise response time.
  const requestGenerator = (_options: unknown, params: unknown, request: RequestFn, callback: (res: unknown) => void) => {
    const sentPerfMs = performance.now();
    const req = request(params, callback);
    req.labels = { sentPerfMs };
    return req;
  };
  const record = (error: unknown, result: LoadTestResult | undefined) => {
    const at = Date.now();
    const sentPerfMs = (result as { labels?: { sentPerfMs?: unknown } } | undefined)?.labels?.sentPerfMs;
    const s: Sample = {
      at,
      sent: typeof sentPerfMs === 'number' ? at - (performance.now() - sentPerfMs) : NaN,
      status: result?.statusCode ?? 0,
    };
    samples.push(s);
    opts.onSample?.(s);
  };
  const perUrl = opts.rate / opts.urls.length;
  // A request count rather than a duration ends the run, so that loadtest stops sending at the end
  // and still reports every response in flight (at maxSeconds it would drop them unreported).
  // maxSeconds and the guard only bound a run that cannot finish.
  const maxRequests = Math.round((perUrl * opts.durationMs) / 1000);
  const maxSeconds = (opts.durationMs + opts.timeoutMs) / 1000 + 2;
  const guardMs = maxSeconds * 1000 + 5000;
  let guard: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    guard = setTimeout(() => reject(new Error(`load generator still running after ${guardMs} ms`)), guardMs);
  });
  try {
    await Promise.race([
      Promise.all(
        opts.urls.map((url) =>
          loadTest({
            url,
            requestsPerSecond: perUrl,
            maxRequests,
            maxSeconds,
            agentKeepAlive: true,
            timeout: opts.timeoutMs,
            quiet: true,
            statusCallback: record,
            requestGenerator,
          }),
        ),
      ),
      timedOut,
    ]);
  } finally {
    clearTimeout(guard);
  }
  return samples;
}
