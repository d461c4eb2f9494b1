// What the rate-limit benchmarks share: the one global limit they measure, and the wait until it
// is in force on every replica.
import type { Consistency, PolicyDocument } from '../src/policy/types';
import { parsePolicies } from '../src/policy/parse';
import { waitFor } from '../src/lab/ports';

export function policyDocs(mode: Consistency, limit: number): PolicyDocument[] {
  // headers: true lets the bench see when the rule is in force on every replica (ratelimit-limit).
  const text = [
    'apiVersion: middlebox.io/v1alpha1',
    'kind: Policy',
    'metadata: { name: bench }',
    'spec:',
    '  rateLimits:',
    `    - { name: global, limit: ${limit}, per: 1s, algorithm: fixed-window, consistency: ${mode}, headers: true }`,
    '',
  ].join('\n');
  const parsed = parsePolicies(text, 'bench-policy.yaml');
  if (parsed.errors.length > 0 || parsed.documents.length !== 1) {
    throw new Error(`bench policy does not validate: ${JSON.stringify(parsed.errors)}`);
  }
  return parsed.documents;
}

/** Polls through Envoy until 2×N answers in a row carry ratelimit-limit: the rule is in force on every replica. */
export async function waitPolicyInForce(url: string, replicas: number): Promise<void> {
  let streak = 0;
  await waitFor(
    async () => {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      streak = res.headers.has('ratelimit-limit') || res.status === 429 ? streak + 1 : 0;
      return streak >= 2 * replicas;
    },
    { timeoutMs: 10_000, intervalMs: 20, what: `the rate limit to be in force on ${replicas} replica(s)` },
  );
}
