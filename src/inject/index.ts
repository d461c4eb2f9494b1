// Sidecar injection: decide (pure), patch (pure), and the Kubernetes objects that carry pods.
export * from './config';
export * from './decide';
export * from './patch';
export * from './workloads';
export type * from './types';
