// Open-loop HTTP load at a fixed rate, one sample per response. The `loadtest` package sends one
// request every 1000/rate ms from a drift-correcting timer whatever is still in flight (a new
// keep-alive connection is opened when every open one is busy), so the offered rate does not sag
// when the server slows down. See bench/README.md for why not autocannon.
import { loadTest, type LoadTestResult } from 'loadtest';

export interface Sample {
  /** When the response had arrived: epoch ms, to a fraction of a ms. */
  at: number;
  /** When the request was handed to Node's HTTP client, on the same clock; NaN for a connection failure. */
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

/** Epoch ms to a fraction of a ms (loadtest's own requestElapsed is whole ms, cut down). */
const now = (): number => performance.timeOrigin + performance.now();

type RequestFn = (params: unknown, callback: (res: unknown) => void) => { labels?: { sentMs: number } };

export async function openLoop(opts: OpenLoopOptions): Promise<Sample[]> {
  const samples: Sample[] = [];
  // Each request carries its send time, which loadtest hands back with its result (`labels`).
  const requestGenerator = (_options: unknown, params: unknown, request: RequestFn, callback: (res: unknown) => void) => {
    const sentMs = now();
    const req = request(params, callback);
    req.labels = { sentMs };
    return req;
  };
  const record = (error: unknown, result: LoadTestResult | undefined) => {
    const at = now();
    const sentMs = (result as { labels?: { sentMs?: unknown } } | undefined)?.labels?.sentMs;
    const s: Sample = {
      at,
      sent: typeof sentMs === 'number' ? sentMs : NaN,
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
