// The init container's script: iptables (nat table) rules that send the pod's TCP traffic through
// Envoy. Pure: the same settings always give the same script, so golden files pin it.
//
//   PREROUTING -> MIDDLEBOX_INBOUND: captured inbound ports, of connections addressed to the pod,
//                                    REDIRECT to Envoy's inbound listener.
//   OUTPUT     -> MIDDLEBOX_OUTPUT:  Envoy's own traffic (its UID), loopback, excluded ports and
//                                    CIDRs RETURN; everything else REDIRECTs to the outbound listener.
// Only IPv4 TCP is captured; UDP, e.g. DNS, is never touched. Envoy's listeners are IPv4, so TCP over
// IPv6 is refused instead (ip6tables, filter table), as far as capture would take it: inbound to
// the captured ports, outbound but for Envoy's UID, loopback and the excluded ports. Without that,
// a dual-stack pod's IPv6 address would be a way around the firewall. The IPv6 rules are only
// installed where the pod has IPv6 on an interface other than loopback (nearly every pod: a
// link-local address is enough); where it has, and ip6tables fails, the script fails: the pod does
// not start rather than start unguarded. So the init image needs sh, iptables and ip6tables.
//
// Safe to run again in the same network namespace, as Kubernetes may re-run an init container (it
// is retried after a failure part-way, for one): the chains are created or else emptied, and the
// jumps into them are added only when missing, so a second run leaves exactly the same rules.
import ipaddr from 'ipaddr.js';

export const CHAINS = { inbound: 'MIDDLEBOX_INBOUND', outbound: 'MIDDLEBOX_OUTPUT', inbound6: 'MIDDLEBOX_INBOUND6', outbound6: 'MIDDLEBOX_OUTPUT6' } as const;

export interface CaptureSettings {
  envoyUid: number;
  inboundPort: number;
  outboundPort: number;
  /** Inbound ports sent to Envoy, or '*' for every port not in excludeInboundPorts. */
  includeInboundPorts: number[] | '*';
  excludeInboundPorts: number[];
  excludeOutboundPorts: number[];
  /** IPv4 CIDRs, e.g. "10.96.0.0/12". */
  excludeOutboundCidrs: string[];
}

export function captureScript(s: CaptureSettings): string {
  for (const p of [s.inboundPort, s.outboundPort]) checkPort(p);
  if (!Number.isInteger(s.envoyUid) || s.envoyUid <= 0) throw new Error(`envoy UID must be a positive integer, got ${s.envoyUid}`);
  [...s.excludeInboundPorts, ...s.excludeOutboundPorts, ...(s.includeInboundPorts === '*' ? [] : s.includeInboundPorts)].forEach(checkPort);
  const cidrs = s.excludeOutboundCidrs.map(normaliseCidr);
  const nat = (rule: string) => `iptables -t nat ${rule}`;
  const lines = ['set -eu', ...[CHAINS.inbound, CHAINS.outbound].map((c) => `${nat(`-N ${c}`)} 2>/dev/null || ${nat(`-F ${c}`)}`)];
  // A jump into a chain, added once: `-C` fails when the rule is not there yet.
  const jump = (rule: string) => `${nat(`-C ${rule}`)} 2>/dev/null || ${nat(`-A ${rule}`)}`;

  // Inbound.
  const toInbound = `-j REDIRECT --to-ports ${s.inboundPort}`;
  if (s.includeInboundPorts === '*') {
    for (const p of unique(s.excludeInboundPorts)) lines.push(nat(`-A ${CHAINS.inbound} -p tcp --dport ${p} -j RETURN`));
    lines.push(nat(`-A ${CHAINS.inbound} -p tcp ${toInbound}`));
  } else {
    const excluded = new Set(s.excludeInboundPorts);
    for (const p of unique(s.includeInboundPorts).filter((p) => !excluded.has(p))) {
      lines.push(nat(`-A ${CHAINS.inbound} -p tcp --dport ${p} ${toInbound}`));
    }
  }
  // Only connections addressed to the pod itself: one a neighbour sends through the pod to some other
  // address would otherwise be taken in too, and the middlebox would see that address as its
  // destination (a `to` rule's input, chosen by the client).
  lines.push(jump(`PREROUTING -p tcp -m addrtype --dst-type LOCAL -j ${CHAINS.inbound}`));

  // Outbound. Envoy's own connections (to the app, the middlebox, original destinations) must
  // never come back to Envoy: that is what the UID match is for.
  lines.push(nat(`-A ${CHAINS.outbound} -m owner --uid-owner ${s.envoyUid} -j RETURN`));
  lines.push(nat(`-A ${CHAINS.outbound} -o lo -j RETURN`));
  for (const p of unique(s.excludeOutboundPorts)) lines.push(nat(`-A ${CHAINS.outbound} -p tcp --dport ${p} -j RETURN`));
  for (const c of unique(cidrs)) lines.push(nat(`-A ${CHAINS.outbound} -d ${c} -j RETURN`));
  lines.push(nat(`-A ${CHAINS.outbound} -p tcp -j REDIRECT --to-ports ${s.outboundPort}`));
  lines.push(jump(`OUTPUT -p tcp -j ${CHAINS.outbound}`));
  lines.push(...refuseIpv6(s));
  return `${lines.join('\n')}\n`;
}

/** The IPv6 part (see the header): refuse what capture would have sent to Envoy, where the pod has IPv6. */
function refuseIpv6(s: CaptureSettings): string[] {
  const filter = (rule: string) => `  ip6tables -t filter ${rule}`;
  const jump = (rule: string) => `${filter(`-C ${rule}`)} 2>/dev/null || ${filter(`-A ${rule}`).trim()}`;
  // Only connection attempts (SYN): replies of allowed connections, either way, pass.
  const refuse = '--syn -j REJECT --reject-with tcp-reset';
  const lines = [
    // /proc/net/if_inet6: one line per IPv6 address, the interface name last. Read by the shell
    // itself: a missing tool in an `if` condition would not stop the script (set -e), only skip this.
    'ipv6=',
    'if [ -r /proc/net/if_inet6 ]; then while read -r _ _ _ _ _ dev; do [ "$dev" = lo ] || ipv6=1; done < /proc/net/if_inet6; fi',
    'if [ -n "$ipv6" ]; then',
    ...[CHAINS.inbound6, CHAINS.outbound6].map((c) => `${filter(`-N ${c}`)} 2>/dev/null || ${filter(`-F ${c}`).trim()}`),
    filter(`-A ${CHAINS.inbound6} -i lo -j RETURN`),
  ];
  if (s.includeInboundPorts === '*') {
    for (const p of unique(s.excludeInboundPorts)) lines.push(filter(`-A ${CHAINS.inbound6} -p tcp --dport ${p} -j RETURN`));
    lines.push(filter(`-A ${CHAINS.inbound6} -p tcp ${refuse}`));
  } else {
    const excluded = new Set(s.excludeInboundPorts);
    for (const p of unique(s.includeInboundPorts).filter((p) => !excluded.has(p))) lines.push(filter(`-A ${CHAINS.inbound6} -p tcp --dport ${p} ${refuse}`));
  }
  lines.push(jump(`INPUT -p tcp -j ${CHAINS.inbound6}`));
  lines.push(filter(`-A ${CHAINS.outbound6} -m owner --uid-owner ${s.envoyUid} -j RETURN`));
  lines.push(filter(`-A ${CHAINS.outbound6} -o lo -j RETURN`));
  for (const p of unique(s.excludeOutboundPorts)) lines.push(filter(`-A ${CHAINS.outbound6} -p tcp --dport ${p} -j RETURN`));
  lines.push(filter(`-A ${CHAINS.outbound6} -p tcp ${refuse}`));
  lines.push(jump(`OUTPUT -p tcp -j ${CHAINS.outbound6}`));
  lines.push('fi');
  return lines;
}

function checkPort(p: number): void {
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`port must be a whole number from 1 to 65535, got ${p}`);
}

/** "10.0.0.1/8" -> "10.0.0.0/8"; a bare IPv4 address is a /32. Only IPv4: the rules are iptables, not ip6tables. */
export function normaliseCidr(text: string): string {
  const withPrefix = text.includes('/') ? text : `${text}/32`;
  let parsed: [ipaddr.IPv4 | ipaddr.IPv6, number];
  try {
    parsed = ipaddr.parseCIDR(withPrefix);
  } catch {
    throw new Error(`not a CIDR: ${JSON.stringify(text)}`);
  }
  const [addr, bits] = parsed;
  if (addr.kind() === 'ipv4' && !ipaddr.IPv4.isValidFourPartDecimal(withPrefix.split('/')[0]!)) {
    throw new Error(`not a CIDR: ${JSON.stringify(text)}`);
  }
  if (addr.kind() !== 'ipv4') throw new Error(`only IPv4 CIDRs can be excluded for now, got ${JSON.stringify(text)}`);
  return `${ipaddr.IPv4.networkAddressFromCIDR(withPrefix).toString()}/${bits}`;
}

function unique<T>(xs: T[]): T[] {
  return [...new Set(xs)];
}
