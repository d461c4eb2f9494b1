import assert from 'node:assert/strict';
import { CidrSet, parseCidr, parseIp } from '../../src/middlebox/ip';
import type { IpAddress } from '../../src/middlebox/types';

function ip(text: string): IpAddress {
  const parsed = parseIp(text);
  assert.ok(parsed, `test address ${text} should parse`);
  return parsed;
}

function set(...cidrs: string[]): CidrSet {
  return new CidrSet(
    cidrs.map((text) => {
      const cidr = parseCidr(text);
      assert.ok(cidr, `test CIDR ${text} should parse`);
      return cidr;
    }),
  );
}

/** An IPv4-mapped IPv6 address as a caller might build it without parseIp's unmapping. */
function mappedRaw(a: number, b: number, c: number, d: number): IpAddress {
  const bytes = new Uint8Array(16);
  bytes.set([0xff, 0xff, a, b, c, d], 10);
  return { family: 6, bytes, text: `::ffff:${a}.${b}.${c}.${d}` };
}

describe('parseIp', () => {
  it('parses IPv4 into four bytes', () => {
    const addr = ip('192.0.2.1');
    assert.equal(addr.family, 4);
    assert.deepEqual([...addr.bytes], [192, 0, 2, 1]);
    assert.equal(addr.text, '192.0.2.1');
  });

  it('parses IPv6 into sixteen bytes with canonical text', () => {
    const addr = ip('2001:DB8:0:0:0:0:0:1');
    assert.equal(addr.family, 6);
    assert.equal(addr.bytes.length, 16);
    assert.deepEqual([...addr.bytes.slice(0, 4)], [0x20, 0x01, 0x0d, 0xb8]);
    assert.equal(addr.bytes[15], 1);
    assert.equal(addr.text, '2001:db8::1');
  });

  it('unmaps IPv4-mapped IPv6, dotted or hex', () => {
    for (const text of ['::ffff:1.2.3.4', '::ffff:102:304', '0:0:0:0:0:ffff:1.2.3.4']) {
      const addr = ip(text);
      assert.equal(addr.family, 4, text);
      assert.deepEqual([...addr.bytes], [1, 2, 3, 4], text);
      assert.equal(addr.text, '1.2.3.4', text);
    }
  });

  it('keeps the deprecated IPv4-compatible form as IPv6', () => {
    const addr = ip('::1.2.3.4');
    assert.equal(addr.family, 6);
    assert.equal(addr.text, '::102:304');
  });

  it('strips brackets and zone ids', () => {
    assert.equal(ip('[2001:db8::1]').text, '2001:db8::1');
    assert.equal(ip('fe80::1%eth0').text, 'fe80::1');
    assert.equal(ip('[fe80::1%25eth0]').text, 'fe80::1');
  });

  it('refuses what is not an address', () => {
    for (const text of ['', '1.2.3', '10', '010.1.1.1', '1.2.3.256', '1.2.3.4.5', 'example.com', '[1.2.3.4]', '1::2::3', '::ffff:1.2', ' 1.2.3.4']) {
      assert.equal(parseIp(text), undefined, JSON.stringify(text));
    }
  });
});

describe('parseCidr', () => {
  it('parses ranges and clears host bits', () => {
    assert.deepEqual(parseCidr('10.1.2.3/8'), { family: 4, bytes: Uint8Array.from([10, 0, 0, 0]), prefix: 8, text: '10.0.0.0/8' });
    assert.equal(parseCidr('192.0.2.7/31')?.text, '192.0.2.6/31');
    assert.equal(parseCidr('2001:db8:ffff::1/33')?.text, '2001:db8:8000::/33');
  });

  it('reads a bare address as a single host', () => {
    assert.equal(parseCidr('192.0.2.7')?.text, '192.0.2.7/32');
    assert.equal(parseCidr('2001:db8::7')?.text, '2001:db8::7/128');
  });

  it('turns IPv4-mapped IPv6 ranges into IPv4 ranges', () => {
    const cidr = parseCidr('::ffff:10.0.0.0/104');
    assert.equal(cidr?.family, 4);
    assert.equal(cidr?.text, '10.0.0.0/8');
    assert.equal(parseCidr('::ffff:0:0/96')?.text, '0.0.0.0/0');
    assert.equal(parseCidr('::ffff:1.2.3.4')?.text, '1.2.3.4/32');
  });

  it('refuses bad prefixes and addresses', () => {
    for (const text of ['10.0.0.0/33', '::/129', '10.0.0.0/', '/8', '10.0.0.0/-1', '10.0.0.0/8/8', '10.0.0/8', 'x/8', '10.0.0.0/1e1']) {
      assert.equal(parseCidr(text), undefined, text);
    }
  });
});

describe('CidrSet', () => {
  it('0.0.0.0/0 matches every IPv4 address, mapped ones included, and no IPv6', () => {
    const all4 = set('0.0.0.0/0');
    assert.ok(all4.contains(ip('0.0.0.0')));
    assert.ok(all4.contains(ip('255.255.255.255')));
    assert.ok(all4.contains(ip('::ffff:203.0.113.9')));
    assert.ok(all4.contains(mappedRaw(203, 0, 113, 9)));
    assert.ok(!all4.contains(ip('2001:db8::1')));
    assert.ok(!all4.contains(ip('::')));
  });

  it('::/0 matches every IPv6 address and no IPv4', () => {
    const all6 = set('::/0');
    assert.ok(all6.contains(ip('::')));
    assert.ok(all6.contains(ip('2001:db8::1')));
    assert.ok(all6.contains(ip('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff')));
    assert.ok(!all6.contains(ip('1.2.3.4')));
    assert.ok(!all6.contains(mappedRaw(1, 2, 3, 4)));
  });

  it('/32 and /128 match exactly one address', () => {
    const host4 = set('192.0.2.7/32');
    assert.ok(host4.contains(ip('192.0.2.7')));
    assert.ok(!host4.contains(ip('192.0.2.6')));
    assert.ok(!host4.contains(ip('192.0.2.8')));
    const host6 = set('2001:db8::7/128');
    assert.ok(host6.contains(ip('2001:db8::7')));
    assert.ok(!host6.contains(ip('2001:db8::6')));
    assert.ok(!host6.contains(ip('2001:db8::1:7')));
  });

  it('/31 matches a pair of addresses', () => {
    const pair = set('192.0.2.6/31');
    assert.ok(pair.contains(ip('192.0.2.6')));
    assert.ok(pair.contains(ip('192.0.2.7')));
    assert.ok(!pair.contains(ip('192.0.2.5')));
    assert.ok(!pair.contains(ip('192.0.2.8')));
  });

  it('matches IPv4 prefixes at the high bit', () => {
    const upper = set('128.0.0.0/1');
    assert.ok(upper.contains(ip('128.0.0.0')));
    assert.ok(upper.contains(ip('255.1.2.3')));
    assert.ok(!upper.contains(ip('127.255.255.255')));
  });

  it('matches IPv6 prefixes in every 32-bit word', () => {
    const net64 = set('2001:db8:0:1::/64');
    assert.ok(net64.contains(ip('2001:db8:0:1:ffff:ffff:ffff:ffff')));
    assert.ok(!net64.contains(ip('2001:db8:0:2::')));
    const net33 = set('2001:db8:8000::/33');
    assert.ok(net33.contains(ip('2001:db8:8000::1')));
    assert.ok(net33.contains(ip('2001:db8:ffff::')));
    assert.ok(!net33.contains(ip('2001:db8:7fff::')));
    const net100 = set('2001:db8::1:0:0/100');
    assert.ok(net100.contains(ip('2001:db8::1:fff:ffff')));
    assert.ok(!net100.contains(ip('2001:db8::1:1000:0')));
    assert.ok(!net100.contains(ip('2001:db8::2:0:0')));
  });

  it('an IPv4 range written as mapped IPv6 matches the IPv4 addresses', () => {
    const ten = set('::ffff:10.0.0.0/104');
    assert.ok(ten.contains(ip('10.9.9.9')));
    assert.ok(ten.contains(mappedRaw(10, 9, 9, 9)));
    assert.ok(!ten.contains(ip('11.0.0.0')));
  });

  it('matches any of several ranges of both families', () => {
    const mixed = set('10.0.0.0/8', '192.168.0.0/16', 'fd00::/8');
    assert.ok(mixed.contains(ip('10.1.1.1')));
    assert.ok(mixed.contains(ip('192.168.3.4')));
    assert.ok(mixed.contains(ip('fd12::1')));
    assert.ok(!mixed.contains(ip('172.16.0.1')));
    assert.ok(!mixed.contains(ip('fe80::1')));
  });

  it('an empty set matches nothing', () => {
    const empty = new CidrSet([]);
    assert.ok(!empty.contains(ip('1.2.3.4')));
    assert.ok(!empty.contains(ip('::1')));
  });
});
