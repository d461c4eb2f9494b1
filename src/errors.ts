// One catalogue of coded errors. Codes are short snake_case strings that double as metric labels
// and appear in denial bodies and logs.

export type ErrorCode =
  | 'bad_usage'
  | 'bad_listen_address'
  | 'bad_etcd_endpoint'
  | 'policy_invalid'
  | 'policy_not_found'
  | 'etcd_unavailable'
  | 'file_not_found';

export class MiddleboxError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    /** Extra lines shown to the user under the message (e.g. one per policy error). */
    readonly details: string[] = [],
  ) {
    super(message);
    this.name = 'MiddleboxError';
  }
}

export function isMiddleboxError(e: unknown): e is MiddleboxError {
  return e instanceof MiddleboxError;
}
