// The part of the `loadtest` package (npm, ESM, no bundled types) that the benchmarks use.
declare module 'loadtest' {
  export interface LoadTestResult {
    statusCode: number;
    headers: Record<string, string | string[] | undefined>;
    body: string;
    /** Milliseconds from sending the request to the end of the response, cut down to whole ms. */
    requestElapsed?: number;
    /** The `labels` a requestGenerator put on the request, handed back. */
    labels?: Record<string, unknown>;
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
    /**
     * Makes each request: called with the options, the request's parameters, Node's
     * http.request and the response callback; returns the request (not yet ended).
     */
    requestGenerator?: (options: unknown, params: any, request: any, callback: (res: any) => void) => any;
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
