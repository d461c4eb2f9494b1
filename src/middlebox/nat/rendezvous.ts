// Rendezvous (highest random weight) hashing: every replica that knows the same pool picks the same
// backend for a flow without asking anyone, and taking a backend out moves only its own flows.
import { createHash } from 'node:crypto';

export function rendezvous(flow: string, pool: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestWeight = -1n;
  for (const backend of pool) {
    const weight = createHash('sha256').update(backend).update('\u0000').update(flow).digest().readBigUInt64BE(0);
    if (weight > bestWeight) {
      bestWeight = weight;
      best = backend;
    }
  }
  return best;
}
