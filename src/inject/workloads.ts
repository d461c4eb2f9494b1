// Kubernetes objects that carry a pod: a Pod itself, or the pod template of a workload. The
// injector works on pods; this finds the pod in an object and puts the injected one back.
import type { InjectConfig } from './config';
import { injectionRequired, type Decision } from './decide';
import { injectPod, isInjected, staleSidecar } from './patch';
import type { Pod } from './types';

/** Kinds whose spec.template is a pod template. */
export const TEMPLATE_KINDS = ['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job'] as const;

type K8sObject = Record<string, any>;

export interface InjectedObject {
  object: unknown;
  /** Undefined for objects that carry no pod (printed unchanged). */
  decision?: Decision;
  /** An injected pod whose sidecar differs from what the settings would inject now: how (patch.staleSidecar). */
  stale?: string;
}

/** Where the pod sits in the object, or undefined when the object carries none. */
function podPath(obj: K8sObject): string[] | undefined {
  if (obj.kind === 'Pod') return [];
  if ((TEMPLATE_KINDS as readonly string[]).includes(obj.kind)) return ['spec', 'template'];
  if (obj.kind === 'CronJob') return ['spec', 'jobTemplate', 'spec', 'template'];
  return undefined;
}

export function injectObject(object: unknown, namespaceLabels: Record<string, string>, config: InjectConfig): InjectedObject {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) return { object };
  const obj = object as K8sObject;
  const where = podPath(obj);
  if (where === undefined) return { object };
  let holder: K8sObject | undefined = obj;
  for (const key of where) holder = holder?.[key];
  if (!holder || typeof holder !== 'object') throw new Error(`${obj.kind} ${obj.metadata?.name ?? ''} has no ${where.join('.')}`.replace('  ', ' '));
  // A template's metadata carries the pod's annotations; a workload's own annotations do not count.
  const pod: Pod = { metadata: holder.metadata, spec: holder.spec };
  const decision = injectionRequired(pod, namespaceLabels);
  // An injected template still gets the sidecar label if it lacks it (injectPod adds only that).
  if (!decision.inject && !isInjected(pod)) return { object, decision };
  const stale = staleSidecar(pod, config);
  const injected = injectPod(pod, config);
  const out = structuredClone(obj);
  let target: K8sObject = out;
  for (const key of where) target = target[key];
  target.metadata = injected.metadata;
  target.spec = injected.spec;
  return { object: out, decision, ...(stale ? { stale } : {}) };
}
