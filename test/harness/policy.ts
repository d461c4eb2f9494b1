// Policy snapshots for engine tests, from flow-YAML specs.
import assert from 'node:assert/strict';
import { compileSnapshot } from '../../src/policy/compile';
import { formatPolicyError, parsePolicies } from '../../src/policy/parse';
import type { PolicySnapshot } from '../../src/policy/types';

/** One policy document per `name: spec` entry (spec in flow YAML), compiled into a snapshot. */
export function snapshot(policies: Record<string, string>, generation = 1): PolicySnapshot {
  const text = Object.entries(policies)
    .map(([name, spec]) => `apiVersion: middlebox.io/v1alpha1\nkind: Policy\nmetadata: { name: ${name} }\nspec: ${spec}\n`)
    .join('---\n');
  // No policy at all is a snapshot of its own (a file saying nothing is refused by the parser).
  if (text === '') return compileSnapshot([], generation);
  const { documents, errors } = parsePolicies(text, 'test.yaml');
  assert.deepEqual(errors.map(formatPolicyError), []);
  return compileSnapshot(documents, generation);
}

/** The smallest policy a test can tell apart from Envoy failing closed: /admin/* denied by rule no-admin, the rest allowed. */
export const NO_ADMIN_POLICY = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: shop }
spec:
  firewall:
    default: allow
    rules:
      - { name: no-admin, action: deny, paths: ["/admin/*"] }
`;
