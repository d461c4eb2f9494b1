// The parts of the rendered bootstrap that NAT depends on: the outbound listener (original_dst,
// ext_proc, ORIGINAL_DST cluster) and ext_proc on the inbound listener.
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import { CLUSTERS, renderBootstrap, renderBootstrapYaml, type BootstrapOptions } from '../../src/envoy/bootstrap';
import { AFTER_EXT_AUTHZ_HEADER, INBOUND_LISTENER_HEADER, REQUEST_ATTRIBUTES } from '../../src/grpc/extproc/request';
import { DESTINATION_HEADER } from '../../src/middlebox/nat/engine';

type Config = Record<string, any>;

const OUTBOUND = { address: '127.0.0.1', port: 15001 };
const EXT_PROC_TYPE = 'type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor';

function render(opts: BootstrapOptions): Config {
  return renderBootstrap(opts) as Config;
}

function listener(b: Config, name: string): Config {
  const l = b.static_resources.listeners.find((x: Config) => x.name === name);
  assert.ok(l, `listener ${name} is rendered`);
  return l;
}

function cluster(b: Config, name: string): Config | undefined {
  return b.static_resources.clusters.find((c: Config) => c.name === name);
}

function hcm(l: Config): Config {
  const filters = l.filter_chains[0].filters;
  assert.equal(filters.length, 1);
  assert.equal(filters[0].name, 'envoy.filters.network.http_connection_manager');
  return filters[0].typed_config;
}

function httpFilterNames(l: Config): string[] {
  return hcm(l).http_filters.map((f: Config) => f.name);
}

function extProc(l: Config): Config {
  const f = hcm(l).http_filters.find((x: Config) => x.name === 'envoy.filters.http.ext_proc');
  assert.ok(f, 'an ext_proc filter');
  return f.typed_config;
}

describe('renderBootstrap with NAT', () => {
  describe('outbound listener', () => {
    const b = render({ outbound: OUTBOUND, middlebox: ['10.0.0.11:9001'], timeoutMs: 100 });
    const out = listener(b, 'outbound_http');

    it('listens where asked with the original_dst listener filter, then tells HTTP from the rest', () => {
      assert.deepEqual(out.address, { socket_address: { address: '127.0.0.1', port_value: 15001 } });
      assert.deepEqual(out.listener_filters, [
        {
          name: 'envoy.filters.listener.original_dst',
          typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst' },
        },
        {
          name: 'envoy.filters.listener.http_inspector',
          typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector' },
        },
      ]);
      // Plain HTTP takes the ext_proc chain; anything else (TLS, a database) is asked about as a
      // connection, then goes on to its original destination. Detection never gives up: a timeout
      // would send a slow-starting HTTP connection past its per-request rules.
      assert.deepEqual(out.filter_chains.map((c: Config) => c.filter_chain_match), [{ application_protocols: ['http/1.0', 'http/1.1', 'h2c'] }]);
      const tcp = out.default_filter_chain.filters as Config[];
      assert.deepEqual(tcp.map((f) => f.name), ['envoy.filters.network.ext_authz', 'envoy.filters.network.tcp_proxy']);
      assert.equal(tcp[0]!.typed_config.grpc_service.envoy_grpc.cluster_name, CLUSTERS.middlebox);
      assert.equal(tcp[0]!.typed_config.failure_mode_allow, false, 'fails closed, as the HTTP chain');
      assert.equal(tcp[1]!.typed_config.cluster, CLUSTERS.outbound);
      assert.equal(tcp[1]!.typed_config.upstream_connect_mode, 'ON_DOWNSTREAM_DATA', 'no upstream connection before the middlebox allows');
      assert.equal(out.listener_filters_timeout, '0s');
      assert.equal(out.continue_on_listener_filters_timeout, undefined);
    });

    it('drops a client\'s destination header, then runs ext_proc, and only ext_proc, before the router', () => {
      assert.deepEqual(httpFilterNames(out), ['envoy.filters.http.header_mutation', 'envoy.filters.http.ext_proc', 'envoy.filters.http.router']);
      assert.ok(!httpFilterNames(out).includes('envoy.filters.http.ext_authz'));
      // Only NAT (through ext_proc) may steer the ORIGINAL_DST cluster, even when ext_proc fails open.
      assert.deepEqual(hcm(out).http_filters[0].typed_config.mutations, { request_mutations: [{ remove: 'x-envoy-original-dst-host' }] });
    });

    it('configures ext_proc for NAT: mutations, attributes, mode override, the middlebox cluster', () => {
      const cfg = extProc(out);
      assert.equal(cfg['@type'], EXT_PROC_TYPE);
      assert.deepEqual(cfg.mutation_rules, { allow_all_routing: true, allow_envoy: true });
      assert.equal(cfg.allow_mode_override, true);
      assert.ok(cfg.request_attributes.includes('source.address'));
      assert.deepEqual(cfg.request_attributes, REQUEST_ATTRIBUTES, 'what the middlebox reads is what Envoy is asked to send');
      assert.equal(cfg.processing_mode.request_header_mode, 'SEND');
      assert.equal(cfg.processing_mode.response_header_mode, 'SEND');
      assert.equal(cfg.processing_mode.request_body_mode, 'NONE');
      assert.equal(cfg.processing_mode.response_body_mode, 'NONE');
      assert.deepEqual(cfg.grpc_service.envoy_grpc, { cluster_name: CLUSTERS.middlebox });
      assert.equal(cfg.grpc_service.timeout, '0.1s');
      assert.match(cfg.grpc_service.retry_policy.retry_on, /connect-failure/);
      assert.equal(cfg.message_timeout, '0.1s');
      assert.equal(cfg.failure_mode_allow, false, 'fails closed by default');
    });

    it('routes everything to an ORIGINAL_DST cluster that reads x-envoy-original-dst-host', () => {
      const vhosts = hcm(out).route_config.virtual_hosts;
      assert.equal(vhosts.length, 1);
      assert.deepEqual(vhosts[0].domains, ['*']);
      assert.deepEqual(vhosts[0].routes, [{ match: { prefix: '/' }, route: { cluster: CLUSTERS.outbound } }]);
      const c = cluster(b, CLUSTERS.outbound);
      assert.ok(c, 'the outbound cluster is rendered');
      assert.equal(c.type, 'ORIGINAL_DST');
      assert.equal(c.lb_policy, 'CLUSTER_PROVIDED');
      assert.deepEqual(c.original_dst_lb_config, { use_http_header: true, http_header_name: 'x-envoy-original-dst-host' });
      assert.equal(c.original_dst_lb_config.http_header_name, DESTINATION_HEADER, 'the header the NAT engine writes');
      assert.equal(c.load_assignment, undefined, 'ORIGINAL_DST clusters have no static endpoints');
    });

    it('keeps the middlebox cluster, and the inbound listener on ext_authz by default', () => {
      const mb = cluster(b, CLUSTERS.middlebox);
      assert.ok(mb);
      assert.deepEqual(mb.load_assignment.endpoints[0].lb_endpoints, [
        { endpoint: { address: { socket_address: { address: '10.0.0.11', port_value: 9001 } } } },
      ]);
      const inbound = listener(b, 'inbound_http');
      assert.deepEqual(httpFilterNames(inbound), ['envoy.filters.http.ext_authz', 'envoy.filters.http.router']);
    });

    it('carries failureModeAllow to ext_proc', () => {
      const open = render({ outbound: OUTBOUND, failureModeAllow: true });
      assert.equal(extProc(listener(open, 'outbound_http')).failure_mode_allow, true);
    });

    it('survives the YAML rendering unchanged', () => {
      assert.deepEqual(parse(renderBootstrapYaml({ outbound: OUTBOUND, middlebox: ['10.0.0.11:9001'], timeoutMs: 100 })), b);
    });

    it('is not rendered unless asked for', () => {
      const plain = render({});
      assert.ok(!plain.static_resources.listeners.some((l: Config) => l.name === 'outbound_http'));
      assert.equal(cluster(plain, CLUSTERS.outbound), undefined);
    });

    // Regression: the outbound listener asks the middlebox even when the inbound side does not.
    it('never renders ext_proc against a middlebox cluster without endpoints (extAuthz: false)', () => {
      let b2: Config;
      try {
        b2 = render({ extAuthz: false, outbound: OUTBOUND });
      } catch (e) {
        assert.match((e as Error).message, /middlebox/);
        return;
      }
      assert.ok(cluster(b2, CLUSTERS.middlebox)!.load_assignment.endpoints[0].lb_endpoints.length > 0);
    });
  });

  describe("inboundFilter: 'ext_proc'", () => {
    const b = render({ inboundFilter: 'ext_proc', middlebox: ['10.0.0.11:9001'] });
    const inbound = listener(b, 'inbound_http');

    it('puts ext_proc, not ext_authz, before the router on the inbound listener', () => {
      assert.deepEqual(httpFilterNames(inbound), ['envoy.filters.http.ext_proc', 'envoy.filters.http.router']);
      const cfg = extProc(inbound);
      assert.deepEqual(cfg.mutation_rules, { allow_all_routing: true, allow_envoy: true });
      assert.equal(cfg.allow_mode_override, true);
      assert.ok(cfg.request_attributes.includes('source.address'));
    });

    it('keeps the inbound listener pointed at the app, and renders no outbound parts', () => {
      assert.deepEqual(hcm(inbound).route_config.virtual_hosts[0].routes, [{ match: { prefix: '/' }, route: { cluster: CLUSTERS.app } }]);
      assert.equal(hcm(inbound).use_remote_address, true);
      assert.ok(!b.static_resources.listeners.some((l: Config) => l.name === 'outbound_http'));
      assert.equal(cluster(b, CLUSTERS.outbound), undefined);
      assert.ok(cluster(b, CLUSTERS.middlebox));
    });

    it('keeps a local rate limit ahead of ext_proc', () => {
      const withLocal = render({ inboundFilter: 'ext_proc', localRateLimit: { maxTokens: 10, tokensPerFill: 10, fillIntervalMs: 1000 } });
      assert.deepEqual(httpFilterNames(listener(withLocal, 'inbound_http')), [
        'envoy.filters.http.local_ratelimit',
        'envoy.filters.http.ext_proc',
        'envoy.filters.http.router',
      ]);
    });

    it('uses ext_proc on both listeners when combined with outbound', () => {
      const both = render({ inboundFilter: 'ext_proc', outbound: OUTBOUND });
      assert.deepEqual(httpFilterNames(listener(both, 'inbound_http')), ['envoy.filters.http.ext_proc', 'envoy.filters.http.router']);
      assert.deepEqual(httpFilterNames(listener(both, 'outbound_http')), ['envoy.filters.http.header_mutation', 'envoy.filters.http.ext_proc', 'envoy.filters.http.router']);
      assert.equal(both.static_resources.clusters.filter((c: Config) => c.name === CLUSTERS.middlebox).length, 1, 'one middlebox cluster');
    });
  });

  describe("inboundFilter: 'ext_authz+ext_proc'", () => {
    it('tells the inbound ext_proc stream that ext_authz decided first, and only that one; every inbound stream that it is inbound (no NAT)', () => {
      const b = render({ inboundFilter: 'ext_authz+ext_proc', outbound: OUTBOUND, middlebox: ['10.0.0.11:9001'] });
      const inbound = listener(b, 'inbound_http');
      assert.deepEqual(httpFilterNames(inbound), ['envoy.filters.http.ext_authz', 'envoy.filters.http.ext_proc', 'envoy.filters.http.router']);
      assert.deepEqual(extProc(inbound).grpc_service.initial_metadata, [
        { key: AFTER_EXT_AUTHZ_HEADER, value: 'true' },
        { key: INBOUND_LISTENER_HEADER, value: 'true' },
      ]);
      // The outbound listener's ext_proc decides everything itself, NAT included.
      assert.equal(extProc(listener(b, 'outbound_http')).grpc_service.initial_metadata, undefined);
      assert.deepEqual(extProc(listener(render({ inboundFilter: 'ext_proc' }), 'inbound_http')).grpc_service.initial_metadata, [{ key: INBOUND_LISTENER_HEADER, value: 'true' }]);
    });
  });
});
