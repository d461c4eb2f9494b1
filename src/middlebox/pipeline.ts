// One decision pipeline for every protocol adapter: request attributes → firewall → verdict.
// Rate limit and NAT join here in order as they arrive.
import type { PolicySnapshot } from '../policy/types';
import { decideFirewall } from './firewall/engine';
import type { RequestAttributes, Verdict } from './types';

const NOT_LOADED: Verdict = { allow: false, status: 503, reason: 'policy_not_loaded' };

/** Fail closed until the replica knows its policy: no snapshot is not the same as no policy. */
export function decide(snapshot: PolicySnapshot | undefined, req: RequestAttributes): Verdict {
  if (!snapshot) return NOT_LOADED;
  return decideFirewall(snapshot, req);
}
