// IP addresses and CIDR ranges: parsed from text once (policy load, request intake), then compared
// as bytes on the request path.
import ipaddr from 'ipaddr.js';
import type { Family, IpAddress } from './types';

/** A network range; host bits below the prefix are zero. */
export interface Cidr {
  family: Family;
  /** 4 or 16 bytes, network order. */
  bytes: Uint8Array;
  prefix: number;
  /** Canonical text form, e.g. 10.0.0.0/8 or 2001:db8::/32. */
  text: string;
}

interface RawAddress {
  family: Family;
  bytes: Uint8Array;
}

const MAPPED_PREFIX_BITS = 96;

/**
 * Parses an IPv4 or IPv6 address. Brackets ("[::1]") and an IPv6 zone id ("%eth0") are dropped, and
 * IPv4-mapped IPv6 addresses become IPv4, so a v4 client is the same client whichever socket family
 * Envoy reports. IPv4 must be four decimal parts: the shorthand and octal forms some parsers accept
 * ("10", "010.1.1.1") would silently name a different address than the author meant.
 */
export function parseIp(text: string): IpAddress | undefined {
  const raw = parseRawAddress(text);
  if (raw === undefined) return undefined;
  const bytes = isMapped(raw.bytes) ? raw.bytes.slice(12) : raw.bytes;
  const family: Family = bytes.length === 4 ? 4 : 6;
  return { family, bytes, text: formatBytes(bytes) };
}

/**
 * parseIp for addresses on the request path (the peers Envoy reports): a client sends many
 * requests, so each distinct text is parsed once. At most REQUEST_IP_CACHE entries; a full cache
 * starts over, which costs only re-parsing. Parsed addresses are shared: never modify one.
 */
export function parseRequestIp(text: string): IpAddress | undefined {
  const hit = requestIps.get(text);
  if (hit !== undefined) return hit ?? undefined;
  const ip = parseIp(text);
  if (requestIps.size >= REQUEST_IP_CACHE) requestIps.clear();
  requestIps.set(text, ip ?? null);
  return ip;
}

const REQUEST_IP_CACHE = 4096;
const requestIps = new Map<string, IpAddress | null>();

/**
 * Parses "address/prefix" or a bare address (a single-host range). Host bits are cleared, as routers
 * do. An IPv4-mapped IPv6 range of /96 or narrower is the IPv4 range it maps, because request
 * addresses are unmapped before matching.
 */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.lastIndexOf('/');
  const raw = parseRawAddress(slash < 0 ? text : text.slice(0, slash));
  if (raw === undefined) return undefined;
  let bytes = raw.bytes;
  let prefix = bytes.length * 8;
  if (slash >= 0) {
    const prefixText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(prefixText)) return undefined;
    prefix = Number(prefixText);
    if (prefix > bytes.length * 8) return undefined;
  }
  if (isMapped(bytes) && prefix >= MAPPED_PREFIX_BITS) {
    bytes = bytes.slice(12);
    prefix -= MAPPED_PREFIX_BITS;
  } else {
    bytes = bytes.slice();
  }
  clearHostBits(bytes, prefix);
  const family: Family = bytes.length === 4 ? 4 : 6;
  return { family, bytes, prefix, text: `${formatBytes(bytes)}/${prefix}` };
}

/**
 * A set of ranges compiled to 32-bit words, so membership is a few integer comparisons per range.
 * IPv4 ranges also match IPv4-mapped IPv6 addresses; IPv6 ranges (::/0 included) match IPv6 only.
 */
export class CidrSet {
  /** Pairs of [network, mask]. */
  private readonly v4: Uint32Array;
  /** Groups of eight words: network[0..3], mask[0..3]. */
  private readonly v6: Uint32Array;

  constructor(cidrs: Iterable<Cidr>) {
    const v4: number[] = [];
    const v6: number[] = [];
    for (const cidr of cidrs) {
      if (cidr.family === 4) {
        v4.push(word(cidr.bytes, 0), maskWord(cidr.prefix));
      } else {
        for (let i = 0; i < 4; i++) v6.push(word(cidr.bytes, i * 4));
        for (let i = 0; i < 4; i++) v6.push(maskWord(cidr.prefix - i * 32));
      }
    }
    this.v4 = Uint32Array.from(v4);
    this.v6 = Uint32Array.from(v6);
  }

  contains(ip: IpAddress): boolean {
    const b = ip.bytes;
    if (ip.family === 4) return this.containsV4(word(b, 0));
    if (isMapped(b)) return this.containsV4(word(b, 12));
    const w0 = word(b, 0);
    const w1 = word(b, 4);
    const w2 = word(b, 8);
    const w3 = word(b, 12);
    const v6 = this.v6;
    for (let i = 0; i < v6.length; i += 8) {
      if (
        (w0 & v6[i + 4]) >>> 0 === v6[i] &&
        (w1 & v6[i + 5]) >>> 0 === v6[i + 1] &&
        (w2 & v6[i + 6]) >>> 0 === v6[i + 2] &&
        (w3 & v6[i + 7]) >>> 0 === v6[i + 3]
      ) {
        return true;
      }
    }
    return false;
  }

  private containsV4(address: number): boolean {
    const v4 = this.v4;
    for (let i = 0; i < v4.length; i += 2) {
      if ((address & v4[i + 1]) >>> 0 === v4[i]) return true;
    }
    return false;
  }
}

function parseRawAddress(text: string): RawAddress | undefined {
  let address = text;
  const bracketed = address.startsWith('[') && address.endsWith(']');
  if (bracketed) address = address.slice(1, -1);
  if (!address.includes(':')) {
    if (bracketed || !ipaddr.IPv4.isValidFourPartDecimal(address)) return undefined;
    return { family: 4, bytes: Uint8Array.from(ipaddr.IPv4.parse(address).octets) };
  }
  const zone = address.indexOf('%');
  if (zone >= 0) address = address.slice(0, zone);
  const hex = embeddedIpv4AsHex(address);
  if (hex === undefined || !ipaddr.IPv6.isValid(hex)) return undefined;
  return { family: 6, bytes: Uint8Array.from(ipaddr.IPv6.parse(hex).toByteArray()) };
}

/**
 * Rewrites a trailing dotted quad ("::ffff:1.2.3.4") as two hex groups. ipaddr.js reads the
 * deprecated "::1.2.3.4" as IPv4-mapped, which would turn a v6 address into a v4 one, and accepts
 * octal-looking quads; doing the conversion here keeps both exact.
 */
function embeddedIpv4AsHex(address: string): string | undefined {
  if (!address.includes('.')) return address;
  const lastColon = address.lastIndexOf(':');
  const quad = address.slice(lastColon + 1);
  if (!ipaddr.IPv4.isValidFourPartDecimal(quad)) return undefined;
  const [a, b, c, d] = ipaddr.IPv4.parse(quad).octets;
  const high = ((a << 8) | b).toString(16);
  const low = ((c << 8) | d).toString(16);
  return `${address.slice(0, lastColon + 1)}${high}:${low}`;
}

function isMapped(bytes: Uint8Array): boolean {
  if (bytes.length !== 16) return false;
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

function clearHostBits(bytes: Uint8Array, prefix: number): void {
  for (let i = 0; i < bytes.length; i++) {
    const bits = prefix - i * 8;
    if (bits <= 0) bytes[i] = 0;
    else if (bits < 8) bytes[i] &= (0xff << (8 - bits)) & 0xff;
  }
}

function formatBytes(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join('.');
  const parts: number[] = [];
  for (let i = 0; i < 16; i += 2) parts.push((bytes[i] << 8) | bytes[i + 1]);
  return new ipaddr.IPv6(parts).toRFC5952String();
}

function word(bytes: Uint8Array, offset: number): number {
  return (
    ((bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3]) >>> 0
  );
}

/** Mask for the first `bits` bits of a 32-bit word; bits outside 0..32 are clamped. */
function maskWord(bits: number): number {
  if (bits <= 0) return 0;
  if (bits >= 32) return 0xffffffff;
  return (0xffffffff << (32 - bits)) >>> 0;
}

/** "10.0.0.5:5432", "[2001:db8::1]:443", or the address alone without a port. */
export function hostPort(ip: string, port: number | undefined): string {
  if (port === undefined) return ip;
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}
