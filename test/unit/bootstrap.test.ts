// Golden files pin the whole rendered bootstrap: any change to what sidecars run shows up as a
// diff in review. UPDATE_GOLDEN=1 rewrites them after an intended change.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { BOOTSTRAP_DEFAULTS, renderBootstrap, renderBootstrapYaml, type BootstrapOptions } from '../../src/envoy/bootstrap';
import { assertGolden } from '../harness/golden';


const GOLDEN_CASES: { file: string; options: BootstrapOptions }[] = [
  {
    file: 'bootstrap-basic.yaml',
    options: { nodeId: 'sidecar-shop-0', cluster: 'shop', middlebox: ['127.0.0.1:9001'] },
  },
  {
    file: 'bootstrap-full.yaml',
    options: {
      nodeId: 'sidecar-shop-1',
      cluster: 'shop',
      adminAddress: '127.0.0.1',
      adminPort: 15100,
      inboundHttp: { address: '0.0.0.0', port: 15106, appAddress: '127.0.0.1', appPort: 8081 },
      inboundTcp: { address: '0.0.0.0', port: 15107, appAddress: '127.0.0.1', appPort: 9091 },
      middlebox: ['unix:/var/run/middlebox/middlebox.sock', '10.0.0.11:9001', '10.0.0.12:9001'],
      timeoutMs: 100,
      failureModeAllow: false,
      statusOnError: 503,
    },
  },
  {
    file: 'bootstrap-http-authz.yaml',
    options: {
      nodeId: 'sidecar-shop-2',
      cluster: 'shop',
      inboundTcp: { address: '0.0.0.0', port: 15107, appAddress: '127.0.0.1', appPort: 9091 },
      inboundTcpConnect: 'on-data',
      middlebox: ['10.0.0.11:9001', '10.0.0.12:9001'],
      middleboxHttp: ['10.0.0.11:9003', '10.0.0.12:9003'],
    },
  },
  {
    file: 'bootstrap-authz-headers.yaml',
    options: { nodeId: 'sidecar-shop-3', cluster: 'shop', middlebox: ['10.0.0.11:9001'], authzHeaders: ['x-api-key', 'x-tenant'] },
  },
];

/** A rendered document, inspected loosely: the golden files pin its exact shape. */
type Doc = Record<string, any>;

function clusterNamed(doc: Doc, name: string): Doc {
  const cluster = (doc.static_resources.clusters as Doc[]).find((c) => c.name === name);
  assert.ok(cluster, `cluster ${name}`);
  return cluster;
}

describe('envoy bootstrap', () => {
  describe('golden files', () => {
    for (const { file, options } of GOLDEN_CASES) {
      it(`renders ${file}`, () => {
        assertGolden(file, renderBootstrapYaml(options));
      });
    }
  });

  it('over HTTP ext_authz, the access log takes the decision id from the answer\'s header', () => {
    const doc = renderBootstrap({ middleboxHttp: ['127.0.0.1:9003'], accessLog: '/dev/stdout' }) as Doc;
    const hcm = doc.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    const format = hcm.access_log[0].typed_config.log_format.json_format;
    assert.equal(format.decision, '%DYNAMIC_METADATA(envoy.filters.http.ext_authz:x-middlebox-decision)%');
    const authz = (hcm.http_filters as Doc[]).find((f) => f.name === 'envoy.filters.http.ext_authz')!.typed_config;
    assert.deepEqual(authz.http_service.authorization_response.dynamic_metadata_from_headers, { patterns: [{ exact: 'x-middlebox-decision' }] });
    assert.equal(authz.grpc_service, undefined);
    // The TCP listener and ext_proc keep the gRPC cluster; HTTP ext_authz gets its own.
    assert.deepEqual((doc.static_resources.clusters as Doc[]).map((c) => c.name).slice(0, 2), ['middlebox', 'middlebox_http']);
    assert.throws(() => renderBootstrap({ middleboxHttp: [] }), /middleboxHttp needs at least one endpoint/);
    // Nothing would use it: an error, not a silently ignored flag.
    for (const o of [{ inboundFilter: 'ext_proc' as const }, { extAuthz: false }, { inboundHttp: false as const, inboundTcp: { address: '0.0.0.0', port: 1, appAddress: '127.0.0.1', appPort: 2 } }]) {
      assert.throws(() => renderBootstrap({ ...o, middleboxHttp: ['127.0.0.1:9003'] }), /middleboxHttp is for the inbound HTTP listener/);
    }
    // The middlebox's 503 answers (state_unavailable) are decisions, not a failing replica.
    const http = (doc.static_resources.clusters as Doc[]).find((c) => c.name === 'middlebox_http')!;
    assert.equal(http.outlier_detection.enforcing_consecutive_5xx, 0);
  });

  it('round-trips through YAML unchanged', () => {
    const options = GOLDEN_CASES[1]!.options;
    assert.deepEqual(parse(renderBootstrapYaml(options)), renderBootstrap(options));
  });

  it('fails closed with 403 and a 250 ms deadline by default', () => {
    const doc = renderBootstrap() as Doc;
    const hcm = doc.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    const authz = hcm.http_filters[0].typed_config;
    assert.equal(authz.failure_mode_allow, false);
    assert.deepEqual(authz.status_on_error, { code: 403 });
    assert.equal(authz.grpc_service.timeout, '0.25s');
    assert.equal(authz.with_request_body, undefined);
    assert.deepEqual(
      hcm.http_filters.map((f: Doc) => f.name),
      ['envoy.filters.http.ext_authz', 'envoy.filters.http.router'],
    );
    assert.equal(doc.admin.address.socket_address.port_value, BOOTSTRAP_DEFAULTS.adminPort);
  });

  it('fails open only behind a filter that drops a client\'s copies of the headers the middlebox vouches for', () => {
    const doc = renderBootstrap({ failureModeAllow: true }) as Doc;
    const hcm = doc.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
    assert.deepEqual(
      hcm.http_filters.map((f: Doc) => f.name),
      ['envoy.filters.http.header_mutation', 'envoy.filters.http.ext_authz', 'envoy.filters.http.router'],
      'before ext_authz, so that the headers of an answer are kept',
    );
    assert.deepEqual(hcm.http_filters[0].typed_config.mutations.request_mutations, [{ remove: 'x-middlebox-decision' }, { remove: 'x-middlebox-shadow-deny' }]);
    assert.equal(hcm.http_filters[1].typed_config.failure_mode_allow, true);
  });

  it('uses STRICT_DNS as soon as a replica is a host name', () => {
    const doc = renderBootstrap({ middlebox: ['middlebox.mesh.svc:9001', '10.0.0.1:9001'] }) as Doc;
    assert.equal(clusterNamed(doc, 'middlebox').type, 'STRICT_DNS');
  });

  it('keeps IPv6 replicas STATIC', () => {
    const doc = renderBootstrap({ middlebox: ['[::1]:9001'] }) as Doc;
    const middlebox = clusterNamed(doc, 'middlebox');
    assert.equal(middlebox.type, 'STATIC');
    assert.deepEqual(middlebox.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address, {
      socket_address: { address: '::1', port_value: 9001 },
    });
  });

  it('renders no HTTP listener and no app cluster when inboundHttp is false', () => {
    const doc = renderBootstrap({
      inboundHttp: false,
      inboundTcp: { address: '0.0.0.0', port: 15007, appAddress: '127.0.0.1', appPort: 9000 },
    }) as Doc;
    assert.deepEqual(
      doc.static_resources.listeners.map((l: Doc) => l.name),
      ['inbound_tcp'],
    );
    assert.deepEqual(
      doc.static_resources.clusters.map((c: Doc) => c.name),
      ['middlebox', 'app_tcp'],
    );
  });

  describe('authzHeaders: only the headers the rules read go to the middlebox', () => {
    const authzOf = (o: BootstrapOptions) => {
      const listener = ((renderBootstrap(o) as Doc).static_resources.listeners as Doc[])[0]!;
      const hcm = ((listener.filter_chains as Doc[])[0]!.filters as Doc[])[0]!.typed_config as Doc;
      return (hcm.http_filters as Doc[]).find((f) => f.name === 'envoy.filters.http.ext_authz')!.typed_config as Doc;
    };
    const always = [':authority', ':method', ':path', 'content-length', 'x-request-id'];

    it('over gRPC: the listed names, the always-sent ones and x-middlebox-*; the list itself in the call metadata', () => {
      const f = authzOf({ authzHeaders: ['x-tenant', 'x-api-key'] });
      const list = [...always, 'x-api-key', 'x-tenant'].sort();
      assert.deepEqual(f.allowed_headers, { patterns: [...list.map((exact) => ({ exact })), { prefix: 'x-middlebox-' }] });
      assert.deepEqual((f.grpc_service as Doc).initial_metadata, [{ key: 'x-middlebox-ext-authz-headers', value: list.join(',') }]);
    });

    it('over HTTP: the same less the pseudo-headers (Envoy sends the request line itself), the list in the peer header', () => {
      const f = authzOf({ middleboxHttp: ['127.0.0.1:9003'], authzHeaders: ['x-tenant', ':scheme'] });
      assert.deepEqual(f.allowed_headers, { patterns: [{ exact: 'content-length' }, { exact: 'x-request-id' }, { exact: 'x-tenant' }, { prefix: 'x-middlebox-' }] });
      const added = ((f.http_service as Doc).authorization_request as Doc).headers_to_add as Doc[];
      assert.equal(added.length, 1);
      // Right after the addresses Envoy fills in, before the client's length; :scheme, which the
      // call cannot carry, is not claimed.
      assert.equal(added[0]!.value, `src=%DOWNSTREAM_REMOTE_ADDRESS% dst=%DOWNSTREAM_LOCAL_ADDRESS% hdrs=${[...always, 'x-tenant'].sort().join(',')} len=%REQ(CONTENT-LENGTH)% uri=%DOWNSTREAM_PEER_URI_SAN%`);
    });

    it('without it every header goes, and no list is sent', () => {
      assert.equal(authzOf({}).allowed_headers, undefined);
      assert.equal((authzOf({}).grpc_service as Doc).initial_metadata, undefined);
      const http = authzOf({ middleboxHttp: ['127.0.0.1:9003'] });
      assert.deepEqual(http.allowed_headers, { patterns: [{ safe_regex: { regex: '.*' } }] });
      assert.doesNotMatch((((http.http_service as Doc).authorization_request as Doc).headers_to_add as Doc[])[0]!.value, /hdrs=/);
    });

    it('refuses names Envoy could not match, and a bootstrap with no ext_authz filter to apply them to', () => {
      assert.throws(() => renderBootstrap({ authzHeaders: ['X-Upper'] }), /not a lower-case header name: "X-Upper"/);
      assert.throws(() => renderBootstrap({ authzHeaders: ['x%y'] }), /"x%y"/);
      assert.throws(() => renderBootstrap({ authzHeaders: [], inboundFilter: 'ext_proc' }), /authzHeaders is for the inbound HTTP listener/);
      assert.throws(() => renderBootstrap({ authzHeaders: [], extAuthz: false }), /authzHeaders is for the inbound HTTP listener/);
    });
  });

  it('rejects endpoints and settings it cannot render', () => {
    assert.throws(() => renderBootstrap({ middlebox: [] }), /at least one endpoint/);
    assert.throws(() => renderBootstrap({ middlebox: ['no-port'] }), /host:port/);
    assert.throws(() => renderBootstrap({ middlebox: ['foo bar:9001'] }), /host:port/);
    assert.throws(() => renderBootstrap({ middlebox: ['http://mb.svc:9001'] }), /host:port/);
    // A fully qualified name (trailing dot) is one.
    assert.doesNotThrow(() => renderBootstrap({ middlebox: ['middlebox.middlebox-system.svc.cluster.local.:9001'] }));
    assert.throws(() => renderBootstrap({ middlebox: ['h:99999'] }), /host:port/);
    assert.throws(() => renderBootstrap({ middlebox: ['unix:relative.sock'] }), /absolute path/);
    assert.throws(() => renderBootstrap({ middlebox: ['unix:/a.sock', 'mb.svc:9001'] }), /cannot mix/);
    assert.throws(() => renderBootstrap({ timeoutMs: 0 }), /timeoutMs/);
    assert.throws(() => renderBootstrap({ statusOnError: 42 }), /statusOnError/);
  });

  it('the TCP listener connects to the app as the client connects, or with on-data only once its bytes are allowed', () => {
    const inboundTcp = { address: '0.0.0.0', port: 15007, appAddress: '127.0.0.1', appPort: 9000 };
    const tcpProxy = (o: BootstrapOptions) => {
      const cfg = renderBootstrap(o) as { static_resources: { listeners: Array<{ name: string; filter_chains: Array<{ filters: Array<{ name: string; typed_config: Record<string, unknown> }> }> }> } };
      const listener = cfg.static_resources.listeners.find((l) => l.name === 'inbound_tcp')!;
      return listener.filter_chains[0]!.filters.find((f) => f.name === 'envoy.filters.network.tcp_proxy')!.typed_config;
    };
    assert.equal(tcpProxy({ inboundTcp }).upstream_connect_mode, undefined, 'Envoy\'s default: immediate');
    assert.equal(tcpProxy({ inboundTcp, inboundTcpConnect: 'immediate' }).upstream_connect_mode, undefined);
    const onData = tcpProxy({ inboundTcp, inboundTcpConnect: 'on-data' });
    // Envoy refuses ON_DOWNSTREAM_DATA without max_early_data_bytes.
    assert.deepEqual([onData.upstream_connect_mode, onData.max_early_data_bytes], ['ON_DOWNSTREAM_DATA', 65536]);
    assert.throws(() => renderBootstrap({ inboundTcpConnect: 'on-data' }), /inboundTcpConnect is for the inbound TCP listener/);
    assert.throws(() => renderBootstrap({ inboundTcp, inboundTcpConnect: 'later' as never }), /inboundTcpConnect must be immediate or on-data, got "later"/);
  });

  it('Envoy closes idle HTTP connections to the app, its probed ports and outbound destinations after 1 s, or as asked; TCP app connections are left alone', () => {
    const inboundTcp = { address: '0.0.0.0', port: 15007, appAddress: '127.0.0.1', appPort: 9000 };
    const appProbes = { address: '0.0.0.0', port: 15020, routes: [{ path: '/app-health/app/livez', appPort: 8081, appPath: '/livez' }] };
    const idle = (o: BootstrapOptions, name: string) => {
      const opts = clusterNamed(renderBootstrap(o) as Doc, name).typed_extension_protocol_options?.['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'];
      return opts && [opts.common_http_protocol_options.idle_timeout, Object.keys(opts.explicit_http_config)];
    };
    assert.deepEqual(idle({ inboundTcp, appProbes }, 'app'), ['1s', ['http_protocol_options']]);
    assert.deepEqual(idle({ appProbes }, 'app_probe_8081'), ['1s', ['http_protocol_options']]);
    assert.equal(idle({ inboundTcp }, 'app_tcp'), undefined);
    assert.deepEqual(idle({ outbound: { address: '0.0.0.0', port: 15001 } }, 'outbound_original_dst'), ['1s', ['http_protocol_options']]);
    assert.deepEqual(idle({ upstreamIdleTimeoutMs: 250 }, 'app'), ['0.25s', ['http_protocol_options']]);
    assert.throws(() => renderBootstrap({ upstreamIdleTimeoutMs: 0 }), /upstreamIdleTimeoutMs must be a positive integer, got 0/);
  });

  it('refuses two listeners on one port, and an app port that is one of Envoy\'s listeners', () => {
    const http = BOOTSTRAP_DEFAULTS.inboundHttp;
    assert.throws(() => renderBootstrap({ outbound: { address: '0.0.0.0', port: http.port } }), /the outbound listener and the inbound HTTP listener are both on port 15006/);
    assert.throws(() => renderBootstrap({ inboundTcp: { address: '127.0.0.1', port: 15006, appAddress: '127.0.0.1', appPort: 9000 } }), /inbound TCP listener and the inbound HTTP listener are both on port 15006/);
    assert.throws(() => renderBootstrap({ inboundHttp: { ...http, port: 15000 } }), /the inbound HTTP listener and the admin are both on port 15000/);
    assert.throws(() => renderBootstrap({ inboundHttp: { ...http, appPort: http.port } }), /app port 15006 is Envoy's own inbound HTTP listener/);
    assert.throws(() => renderBootstrap({ inboundTcp: { address: '0.0.0.0', port: 15007, appAddress: '127.0.0.1', appPort: 15007 } }), /app port 15007 is Envoy's own inbound TCP listener/);
    assert.throws(() => renderBootstrap({ inboundHttp: { ...http, address: '0:0:0:0:0:0:0:0', port: 15000 }, adminAddress: '::1' }), /both on port 15000/, 'IPv6 any-address, however written');
    // [::] is IPv6 only in Envoy: beside IPv4 addresses on the same port it clashes with nothing.
    assert.doesNotThrow(() => renderBootstrap({ inboundHttp: { ...http, address: '::', port: 15000 } }));
    assert.doesNotThrow(() => renderBootstrap({ inboundHttp: { ...http, address: '::', appPort: 15006 } }));
    // Different addresses, neither a wildcard: two listeners may share a port.
    assert.doesNotThrow(() => renderBootstrap({ inboundHttp: { ...http, address: '127.0.0.1' }, inboundTcp: { address: '127.0.0.2', port: http.port, appAddress: '127.0.0.1', appPort: 9000 } }));
  });
});
