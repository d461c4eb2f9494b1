// Which request headers a policy's ext_authz decision reads, and what happens when a sidecar whose
// Envoy sends only some of them (`envoy bootstrap --authz-headers`) meets a rule that reads one it
// left out. Envoy spends a good part of an ext_authz call copying and matching headers; a sidecar
// that sends only what the rules read passes more requests. A rule must never decide as if such a
// header were absent, so a request that reaches an enforced rule reading one is refused instead
// (HeaderGuard); requests no such rule looks at, and shadow rules, are not affected.
import type { Verdict } from '../middlebox/types';
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
 * Always in a sidecar's list: the pseudo-headers a rule may name that both transports carry (over
 * HTTP ext_authz the replica rebuilds them from the call), the request id the decision log uses,
 * and the content length.
 */
export const ALWAYS_SENT: readonly string[] = [':authority', ':method', ':path', 'content-length', 'x-request-id'];

/** A header rules read: the first rule (in evaluation order) that reads it, and whether any enforced one does. */
export interface HeaderRead {
  name: string;
  policy: string;
  rule: string;
  /** Read by a rule that is not shadow, in a policy that is not shadow. */
  enforced: boolean;
}

/**
 * The request headers that firewall rules (`headers`) and rate limits (`by: header:<name>`) read,
 * lower-cased, sorted by name. NAT's `affinity: header:<name>` is read over ext_proc, which always
 * carries every header, so it is not listed.
 */
export function headersReadBy(docs: readonly PolicyDocument[]): HeaderRead[] {
  const found = new Map<string, HeaderRead>();
  const add = (name: string, policy: string, rule: string, enforced: boolean) => {
    const n = name.toLowerCase();
    const known = found.get(n);
    if (known) known.enforced ||= enforced;
    else found.set(n, { name: n, policy, rule, enforced });
  };
  for (const doc of docs) {
    const policy = doc.metadata.name;
    const shadowPolicy = doc.spec.shadow === true;
    for (const rule of doc.spec.firewall?.rules ?? []) {
      for (const h of rule.headers ?? []) add(h.name, policy, rule.name, !shadowPolicy && rule.shadow !== true);
    }
    for (const limit of doc.spec.rateLimits ?? []) {
      for (const by of limit.by) {
        if (by.startsWith('header:')) add(by.slice('header:'.length), policy, limit.name, !shadowPolicy && limit.shadow !== true);
      }
    }
  }
  return [...found.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Header names as `--authz-headers` and the sent lists give them: comma-separated. */
export function parseHeaderList(text: string): string[] {
  return text
    .split(',')
    .map((n) => n.trim().toLowerCase())
    .filter((n) => n !== '');
}

/** What a name in a list may be, for error messages. */
export const HEADER_NAME_RULE = 'HTTP token characters, no % (a leading : for a pseudo-header)';

/** The complaint about names that are not header names. */
export function notHeaderNames(bad: readonly string[]): string {
  return `not a header name: ${bad.map((n) => JSON.stringify(n)).join(', ')} (${HEADER_NAME_RULE})`;
}

/** A comma-separated list as an operator writes it: the names, and those that are not header names. */
export function readHeaderList(text: string): { names: string[]; bad: string[] } {
  const names = parseHeaderList(text);
  return { names, bad: names.filter((n) => !isHeaderName(n)) };
}

/**
 * A header name Envoy can match and render: an HTTP token, lower-case; `:` only to open a
 * pseudo-header. No `%`, which Envoy reads as a command in the header template the list rides in.
 */
export function isHeaderName(name: string): boolean {
  return /^:?[a-z0-9!#$&'*+.^_`|~-]+$/.test(name);
}

/** A sent list as it arrives in the peer header: names and commas only (checked before it is trusted). */
export const SENT_LIST = /^[a-z0-9:!#$&'*+.^_`|~,-]*$/;

/**
 * Thrown when a decision reads a header the sidecar did not send (GuardedHeaders); nothing was
 * decided. The engines name the rule that read it (`at`); without them, the first rule that reads it.
 */
export class UnsentHeaderRead extends Error {
  policy: string;
  rule: string;

  constructor(readonly read: HeaderRead) {
    super(`header ${read.name} was not sent`);
    this.policy = read.policy;
    this.rule = read.rule;
  }

  /** Names the rule being evaluated when `e` was thrown, if it is an UnsentHeaderRead; returns `e`. */
  static at(e: unknown, policy: string, rule: string): unknown {
    if (e instanceof UnsentHeaderRead) {
      e.policy = policy;
      e.rule = rule;
    }
    return e;
  }
}

/**
 * The answer to a request that reached an enforced rule reading a header its sidecar does not send:
 * refused, never decided as if the header were absent. 403, not 5xx: Envoy's HTTP client takes a
 * 5xx for a failed call, which --failure-mode-allow would let through unchecked.
 */
export function unsentHeaderVerdict(e: UnsentHeaderRead): Verdict {
  return { allow: false, status: 403, reason: 'headers_not_sent', policy: e.policy, rule: e.rule };
}

/** The list a sidecar rendered with `--authz-headers names` sends (the bootstrap adds ALWAYS_SENT). */
export function sentListFor(names: readonly string[]): string {
  return [...new Set([...ALWAYS_SENT, ...names])].sort().join(',');
}

/** The headers enforced rules read that one sidecar's list leaves out. */
export interface HeaderGuard {
  unsent: ReadonlyMap<string, HeaderRead>;
}

interface SnapshotHeaders {
  read: readonly HeaderRead[];
  /** Sent list → its guard (null: nothing to guard); few distinct lists, one per bootstrap. */
  guards: Map<string, HeaderGuard | null>;
}

const perSnapshot = new WeakMap<PolicySnapshot, SnapshotHeaders>();
/** Distinct sent lists remembered per snapshot; past it, each new one is worked out again (still correct). */
const MAX_LISTS = 64;

/**
 * What a sidecar sending only `sentList` must not have read for it: the headers enforced rules of
 * `snapshot` read that the list leaves out (x-middlebox-* always counts as sent). Undefined when
 * there are none, which is the case for a sidecar rendered from the policies in force. Worked out
 * once per snapshot and list: a request pays a map look-up.
 */
export function headerGuard(snapshot: PolicySnapshot, sentList: string): HeaderGuard | undefined {
  let s = perSnapshot.get(snapshot);
  if (!s) {
    s = { read: headersReadBy(snapshot.policies.map((p) => p.document)), guards: new Map() };
    perSnapshot.set(snapshot, s);
  }
  const known = s.guards.get(sentList);
  if (known !== undefined) return known ?? undefined;
  const sent = new Set(parseHeaderList(sentList));
  const unsent = new Map<string, HeaderRead>();
  for (const h of s.read) {
    if (h.enforced && !sent.has(h.name) && !h.name.startsWith(ALWAYS_SENT_PREFIX)) unsent.set(h.name, h);
  }
  const guard = unsent.size ? { unsent } : null;
  if (s.guards.size < MAX_LISTS) s.guards.set(sentList, guard);
  return guard ?? undefined;
}

/**
 * A request's headers as the decision sees them when its sidecar left out headers that enforced
 * rules read: reading one of those throws UnsentHeaderRead, before anything is decided or counted
 * (the firewall's matchers and the rate limits' keys read headers before any token is taken).
 */
export class GuardedHeaders implements ReadonlyMap<string, string> {
  constructor(
    private readonly inner: ReadonlyMap<string, string>,
    private readonly guard: HeaderGuard,
  ) {}

  get(name: string): string | undefined {
    this.check(name);
    return this.inner.get(name);
  }

  has(name: string): boolean {
    this.check(name);
    return this.inner.has(name);
  }

  get size(): number {
    return this.inner.size;
  }

  forEach(fn: (value: string, key: string, map: ReadonlyMap<string, string>) => void): void {
    this.inner.forEach((v, k) => fn(v, k, this));
  }

  entries(): MapIterator<[string, string]> {
    return this.inner.entries();
  }

  keys(): MapIterator<string> {
    return this.inner.keys();
  }

  values(): MapIterator<string> {
    return this.inner.values();
  }

  [Symbol.iterator](): MapIterator<[string, string]> {
    return this.inner[Symbol.iterator]();
  }

  private check(name: string): void {
    const read = this.guard.unsent.get(name);
    if (read) throw new UnsentHeaderRead(read);
  }
}
