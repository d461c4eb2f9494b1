// Which request headers a policy's ext_authz decision reads, and whether a sidecar whose Envoy sends
// only some of them (`envoy bootstrap --authz-headers`) sends all of those. Envoy spends a good part
// of an ext_authz call copying and matching headers; a sidecar that sends only what the rules read
// passes more requests, and a replica refuses rather than decide without a header a rule reads.
import type { PolicyDocument, PolicySnapshot } from './types';

/**
 * The gRPC metadata key of the ext_authz call that lists the request headers the sidecar's Envoy
 * sends (`envoy bootstrap --authz-headers`; over HTTP the list rides in the peer header, `hdrs=`).
 * Absent: Envoy sends them all. Neither can come from the client.
 */
export const SENT_HEADERS_HEADER = 'x-middlebox-ext-authz-headers';

/** Names the middlebox itself gives meaning to: always sent, whatever the list says. */
export const ALWAYS_SENT_PREFIX = 'x-middlebox-';

/**
 * Always in a sidecar's list: the pseudo-headers a rule may name (over HTTP ext_authz the replica
 * rebuilds them from the call), the request id the decision log uses, and the content length.
 */
export const ALWAYS_SENT: readonly string[] = [':authority', ':method', ':path', 'content-length', 'x-request-id'];

/** A header a rule reads, and the first rule (policy/rule) that reads it. */
export interface HeaderRead {
  name: string;
  rule: string;
}

/**
 * The request headers that firewall rules (`headers`) and rate limits (`by: header:<name>`) read,
 * lower-cased, sorted, each with the first rule that reads it. NAT's `affinity: header:<name>` is
 * read over ext_proc, which always carries every header, so it is not listed.
 */
export function headersReadBy(docs: readonly PolicyDocument[]): HeaderRead[] {
  const found = new Map<string, string>();
  const add = (name: string, rule: string) => {
    const n = name.toLowerCase();
    if (!found.has(n)) found.set(n, rule);
  };
  for (const doc of docs) {
    const policy = doc.metadata.name;
    for (const rule of doc.spec.firewall?.rules ?? []) {
      for (const h of rule.headers ?? []) add(h.name, `${policy}/${rule.name}`);
    }
    for (const limit of doc.spec.rateLimits ?? []) {
      for (const by of limit.by) if (by.startsWith('header:')) add(by.slice('header:'.length), `${policy}/${limit.name}`);
    }
  }
  return [...found].map(([name, rule]) => ({ name, rule })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Header names as `--authz-headers` and the sent-list header give them: comma-separated. */
export function parseHeaderList(text: string): string[] {
  return text
    .split(',')
    .map((n) => n.trim().toLowerCase())
    .filter((n) => n !== '');
}

/** A comma-separated list as an operator writes it: the names, and those that are not header names. */
export function readHeaderList(text: string): { names: string[]; bad: string[] } {
  const names = parseHeaderList(text);
  return { names, bad: names.filter((n) => !isHeaderName(n)) };
}

/** A header name Envoy can match and render: an HTTP token, lower-case; `:` only to open a pseudo-header. */
export function isHeaderName(name: string): boolean {
  // No `%`: the list is rendered into a header value, where Envoy reads %...% as a command.
  return /^:?[a-z0-9!#$&'*+.^_`|~-]+$/.test(name);
}

interface SnapshotHeaders {
  read: readonly HeaderRead[];
  /** Sent-list header value → the headers read but not in it (few distinct values: one per bootstrap). */
  missing: Map<string, readonly HeaderRead[]>;
}

const perSnapshot = new WeakMap<PolicySnapshot, SnapshotHeaders>();
const NONE: readonly HeaderRead[] = [];
/** Distinct sent lists remembered per snapshot; past it, each new one is worked out again (still correct). */
const MAX_LISTS = 64;

/**
 * The headers `snapshot`'s rules read that a sidecar sending only `sentList` (the value of
 * SENT_HEADERS_HEADER) leaves out. Worked out once per snapshot and list: a request pays a map look-up.
 */
export function unsentHeaders(snapshot: PolicySnapshot, sentList: string): readonly HeaderRead[] {
  let s = perSnapshot.get(snapshot);
  if (!s) {
    s = { read: headersReadBy(snapshot.policies.map((p) => p.document)), missing: new Map() };
    perSnapshot.set(snapshot, s);
  }
  const known = s.missing.get(sentList);
  if (known) return known;
  if (s.read.length === 0) return NONE;
  const sent = new Set(parseHeaderList(sentList));
  const missing = s.read.filter((h) => !sent.has(h.name) && !h.name.startsWith(ALWAYS_SENT_PREFIX));
  const result = missing.length ? missing : NONE;
  if (s.missing.size < MAX_LISTS) s.missing.set(sentList, result);
  return result;
}
