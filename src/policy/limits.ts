// Bounds on one policy: its size in bytes, and the entries of each of its rule lists. Past them a
// policy is refused like any invalid one, with the place and the setting named: `policy
// validate|apply` print it, and a replica keeps the last good version of a stored policy. Give
// `serve` and `policy` the same settings, so that what apply stores every replica accepts.
import { BOUNDS, settingName } from '../settings';

export interface PolicyLimits {
  /**
   * Bytes of one policy text (a file, standard input, a value stored in etcd), and of each policy
   * as stored in etcd (JSON, defaults filled in and YAML aliases expanded).
   */
  maxPolicyBytes: number;
  /** Entries of each of spec.firewall.rules, spec.rateLimits and spec.nat, per policy. */
  maxRulesPerPolicy: number;
}

export const DEFAULT_POLICY_LIMITS: Readonly<PolicyLimits> = {
  // Below etcd's default request limit (1.5 MiB), so that a policy at the limit can be stored.
  maxPolicyBytes: 1024 * 1024,
  maxRulesPerPolicy: 1000,
};

/** The message for a text over maxPolicyBytes (reported at line 1, column 1). */
export function textTooLarge(bytes: number, limits: PolicyLimits): string {
  return `too large: ${bytes} bytes, more than ${limits.maxPolicyBytes} (${settingName(BOUNDS.maxPolicyBytes)}); split it into smaller policies`;
}

/** The message for a text found over maxPolicyBytes while reading it (its size unknown: the rest is not read). */
export function textOverLimit(limits: PolicyLimits): string {
  return `too large: more than ${limits.maxPolicyBytes} bytes (${settingName(BOUNDS.maxPolicyBytes)}); split it into smaller policies`;
}

/** The message for a policy whose stored (JSON) form is over maxPolicyBytes. */
export function storedTooLarge(name: string, bytes: number, limits: PolicyLimits): string {
  return `policy "${name}" is ${bytes} bytes as stored in etcd (JSON, aliases expanded), more than ${limits.maxPolicyBytes} (${settingName(BOUNDS.maxPolicyBytes)}); split it into smaller policies`;
}

/** The message at the first entry of a rule list past maxRulesPerPolicy. */
export function tooManyRules(what: string, count: number, limits: PolicyLimits): string {
  return `more than ${limits.maxRulesPerPolicy} ${what} in one policy (${count} given; ${settingName(BOUNDS.maxRulesPerPolicy)}); split them over several policies`;
}
