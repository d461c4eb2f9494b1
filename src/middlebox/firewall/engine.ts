// The firewall decision.
//
// Every policy with a firewall whose selector matches the request is evaluated, in snapshot order
// (policy name). Within a policy the rules are ordered and the first matching rule decides; when
// none matches, the policy's default does. A deny from any enforced policy denies the request, and
// the first one in order is the one reported (403; rule "default" for a default deny).
//
// Shadow policies and shadow rules decide and log but never change the outcome:
// - in a `shadow: true` policy, a deny is recorded in shadowDenials and evaluation goes on with the
//   next policy as if the policy had allowed;
// - a matching `shadow: true` deny rule is recorded and evaluation goes on with the next rule, as if
//   the shadow rule were not there (so adding a shadow rule cannot weaken the rules after it). A
//   shadow allow rule records nothing.
// Shadow denials recorded before an enforced deny are reported with it; later ones are not looked for.
//
// With no deny, the request is allowed, naming the first enforced allow rule that matched, if any.
import { UnsentHeaderRead } from '../../policy/headers';
import type { CompiledFirewallRule, PolicySnapshot } from '../../policy/types';
import type { RequestAttributes, ShadowDenial, Verdict } from '../types';

const DENY_STATUS = 403;
const DEFAULT_RULE = 'default';

export function decideFirewall(snapshot: PolicySnapshot, req: RequestAttributes): Verdict {
  // Allocated only when a shadow deny happens, so the common allow path builds just the verdict.
  let shadowDenials: ShadowDenial[] | undefined;
  let allowPolicy: string | undefined;
  let allowRule: string | undefined;

  const policies = snapshot.policies;
  for (let p = 0; p < policies.length; p++) {
    const policy = policies[p];
    const firewall = policy.firewall;
    if (firewall === undefined || !policy.selector(req)) continue;

    let decidingRule: CompiledFirewallRule | undefined;
    const rules = firewall.rules;
    for (let r = 0; r < rules.length; r++) {
      const rule = rules[r];
      let matches: boolean;
      try {
        matches = rule.matches(req);
      } catch (e) {
        // A shadow rule never changes the outcome: one that needs a header the sidecar did not send does not match.
        if (e instanceof UnsentHeaderRead && (rule.shadow || policy.shadow)) continue;
        throw UnsentHeaderRead.at(e, policy.name, rule.name);
      }
      if (!matches) continue;
      if (!rule.shadow) {
        decidingRule = rule;
        break;
      }
      if (rule.action === 'deny') {
        (shadowDenials ??= []).push(shadowDenial(policy.name, rule.name));
      }
    }

    const action = decidingRule === undefined ? firewall.defaultAction : decidingRule.action;
    const ruleName = decidingRule === undefined ? DEFAULT_RULE : decidingRule.name;
    if (action === 'allow') {
      if (decidingRule !== undefined && allowPolicy === undefined && !policy.shadow) {
        allowPolicy = policy.name;
        allowRule = decidingRule.name;
      }
      continue;
    }
    if (policy.shadow) {
      (shadowDenials ??= []).push(shadowDenial(policy.name, ruleName));
      continue;
    }
    const denial: Verdict = {
      allow: false,
      status: DENY_STATUS,
      middlebox: 'firewall',
      policy: policy.name,
      rule: ruleName,
      reason: decidingRule === undefined ? 'firewall_default_deny' : 'firewall_rule_deny',
    };
    if (shadowDenials !== undefined) denial.shadowDenials = shadowDenials;
    return denial;
  }

  const verdict: Verdict = { allow: true, reason: 'allowed' };
  if (allowPolicy !== undefined) {
    verdict.policy = allowPolicy;
    verdict.rule = allowRule;
  }
  if (shadowDenials !== undefined) verdict.shadowDenials = shadowDenials;
  return verdict;
}

function shadowDenial(policy: string, rule: string): ShadowDenial {
  return { middlebox: 'firewall', policy, rule, status: DENY_STATUS };
}
