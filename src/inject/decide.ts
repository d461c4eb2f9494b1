// Whether a pod gets a sidecar. Pure: the pod's annotations and its namespace's labels decide.
import { ANNOTATIONS, NAMESPACE_LABEL, NAMESPACE_LABEL_ENABLED, STATUS_INJECTED } from './config';
import type { Pod } from './types';

export interface Decision {
  inject: boolean;
  reason: string;
  /** The pod's own say is neither "true" nor "false": most likely a typo of an opt-in, worth a warning. */
  malformed?: boolean;
}

/**
 * In order: an already injected pod is left alone (idempotence); `middlebox.io/inject: "false"`
 * always wins; `"true"` opts in; otherwise the namespace label `middlebox.io/injection=enabled`.
 * The pod may say it as an annotation or as a label (the label is what the webhook's objectSelector
 * sees); when both are set, "false" in either wins.
 * Pods on the host network are never injected: their iptables rules would be the node's.
 */
export function injectionRequired(pod: Pod, namespaceLabels: Record<string, string> = {}): Decision {
  const annotations = pod.metadata?.annotations ?? {};
  if (annotations[ANNOTATIONS.status] === STATUS_INJECTED) {
    return { inject: false, reason: `already injected (${ANNOTATIONS.status}: ${STATUS_INJECTED})` };
  }
  const said = [
    { where: 'annotation', value: annotations[ANNOTATIONS.inject] },
    { where: 'label', value: pod.metadata?.labels?.[ANNOTATIONS.inject] },
  ].filter((s): s is { where: string; value: string } => s.value !== undefined);
  for (const { where, value } of said) {
    if (value !== 'true' && value !== 'false') {
      return { inject: false, malformed: true, reason: `${ANNOTATIONS.inject} (${where}) must be "true" or "false", got ${JSON.stringify(value)}` };
    }
  }
  const out = said.find((s) => s.value === 'false');
  if (out) return { inject: false, reason: `pod opts out (${out.where} ${ANNOTATIONS.inject}: "false")` };
  if (pod.spec?.hostNetwork === true) return { inject: false, reason: 'pod uses the host network' };
  const optIn = said.find((s) => s.value === 'true');
  if (optIn) return { inject: true, reason: `pod opts in (${optIn.where} ${ANNOTATIONS.inject}: "true")` };
  if (namespaceLabels[NAMESPACE_LABEL] === NAMESPACE_LABEL_ENABLED) {
    return { inject: true, reason: `namespace is labelled ${NAMESPACE_LABEL}=${NAMESPACE_LABEL_ENABLED}` };
  }
  return { inject: false, reason: `neither the pod (${ANNOTATIONS.inject}) nor the namespace (${NAMESPACE_LABEL}) asks for injection` };
}
