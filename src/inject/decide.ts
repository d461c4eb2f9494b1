// Whether a pod gets a sidecar. Pure: the pod's annotations and its namespace's labels decide.
import { ANNOTATIONS, NAMESPACE_LABEL, NAMESPACE_LABEL_ENABLED, STATUS_INJECTED } from './config';
import type { Pod } from './types';

export interface Decision {
  inject: boolean;
  reason: string;
}

/**
 * In order: an already injected pod is left alone (idempotence); `middlebox.io/inject: "false"`
 * always wins; `"true"` opts in; otherwise the namespace label `middlebox.io/injection=enabled`.
 * Pods on the host network are never injected: their iptables rules would be the node's.
 */
export function injectionRequired(pod: Pod, namespaceLabels: Record<string, string> = {}): Decision {
  const annotations = pod.metadata?.annotations ?? {};
  if (annotations[ANNOTATIONS.status] === STATUS_INJECTED) {
    return { inject: false, reason: `already injected (${ANNOTATIONS.status}: ${STATUS_INJECTED})` };
  }
  const optIn = annotations[ANNOTATIONS.inject];
  if (optIn !== undefined && optIn !== 'true' && optIn !== 'false') {
    return { inject: false, reason: `${ANNOTATIONS.inject} must be "true" or "false", got ${JSON.stringify(optIn)}` };
  }
  if (optIn === 'false') return { inject: false, reason: `pod opts out (${ANNOTATIONS.inject}: "false")` };
  if (pod.spec?.hostNetwork === true) return { inject: false, reason: 'pod uses the host network' };
  if (optIn === 'true') return { inject: true, reason: `pod opts in (${ANNOTATIONS.inject}: "true")` };
  if (namespaceLabels[NAMESPACE_LABEL] === NAMESPACE_LABEL_ENABLED) {
    return { inject: true, reason: `namespace is labelled ${NAMESPACE_LABEL}=${NAMESPACE_LABEL_ENABLED}` };
  }
  return { inject: false, reason: `neither the pod (${ANNOTATIONS.inject}) nor the namespace (${NAMESPACE_LABEL}) asks for injection` };
}
