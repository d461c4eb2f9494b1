// The part of the `loadtest` package (npm, ESM, no bundled types) that the benchmarks use.
declare module 'loadtest' {
  export interface LoadTestResult {
    statusCode: number;
    headers: Record<string, string | string[] | undefined>;
    body: string;
    /** Milliseconds from sending the request to the end of the response. */
    requestElapsed?: number;
  }

  export interface LoadTestOptions {
    url: string;
    /** Open loop: one request every 1000/requestsPerSecond ms, whatever is still in flight. */
    requestsPerSecond?: number;
    maxSeconds?: number;
    maxRequests?: number;
    concurrency?: number;
    agentKeepAlive?: boolean;
    /** Per-request timeout in milliseconds. */
    timeout?: number;
    method?: string;
    headers?: Record<string, string>;
    quiet?: boolean;
    /** Called once per finished request; `result` is missing when the connection itself failed. */
    statusCallback?: (error: unknown, result: LoadTestResult | undefined) => void;
  }

  export interface LoadTestSummary {
    totalRequests: number;
    totalErrors: number;
    effectiveRps: number;
    meanLatencyMs: number;
    /** Latency percentiles in whole milliseconds, keyed 50, 90, 95, 99. */
    percentiles: Record<string, number | false>;
    /** Responses by status code ("-1" for errors). */
    errorCodes: Record<string, number>;
  }

  export function loadTest(options: LoadTestOptions): Promise<LoadTestSummary>;
}
