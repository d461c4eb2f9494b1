// TLS from Envoy to the middlebox: the `middlebox` cluster's transport socket. Off by default (the
// golden files pin that); when on, it always verifies the replicas' certificate. A real Envoy
// validates and runs these in test/integration/tls.test.ts.
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import { middleboxTlsSdsFiles, renderBootstrap, type BootstrapOptions } from '../../src/envoy/bootstrap';
import { bootstrapOptionsFromFlags } from '../../src/cli/envoy';
import { UsageError } from '../../src/cli/command';

type Doc = Record<string, any>;

function middleboxCluster(options: BootstrapOptions): Doc {
  const doc = renderBootstrap(options) as Doc;
  const cluster = (doc.static_resources.clusters as Doc[]).find((c) => c.name === 'middlebox');
  assert.ok(cluster, 'the middlebox cluster');
  return cluster;
}

const UPSTREAM_TLS = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext';

describe('envoy bootstrap: TLS to the middlebox', () => {
  it('renders no transport socket by default (plaintext), on any cluster', () => {
    const doc = renderBootstrap({ middlebox: ['127.0.0.1:9001'], outbound: { address: '127.0.0.1', port: 15001 } }) as Doc;
    for (const c of doc.static_resources.clusters as Doc[]) assert.equal(c.transport_socket, undefined, c.name);
  });

  it('verifies the replicas against the CA and the endpoint hosts, with ALPN h2 for gRPC', () => {
    const cluster = middleboxCluster({ middlebox: ['10.0.0.11:9001', '[2001:db8::1]:9001'], middleboxTls: { caFile: '/etc/mb/ca.crt' } });
    assert.equal(cluster.transport_socket.name, 'envoy.transport_sockets.tls');
    const ctx = cluster.transport_socket.typed_config;
    assert.equal(ctx['@type'], UPSTREAM_TLS);
    assert.equal(ctx.sni, undefined, 'no SNI for IP addresses');
    assert.deepEqual(ctx.common_tls_context.alpn_protocols, ['h2']);
    assert.equal(ctx.common_tls_context.tls_certificates, undefined, 'no client certificate without mTLS');
    assert.deepEqual(ctx.common_tls_context.validation_context, {
      trusted_ca: { filename: '/etc/mb/ca.crt' },
      match_typed_subject_alt_names: [
        { san_type: 'IP_ADDRESS', matcher: { exact: '10.0.0.11' } },
        { san_type: 'IP_ADDRESS', matcher: { exact: '2001:db8::1' } },
      ],
    });
    // The health checks go through the same cluster, hence over the same TLS.
    assert.equal(cluster.health_checks[0].grpc_health_check.service_name, 'envoy.service.auth.v3.Authorization');
  });

  it('sends the host name as SNI and checks it as a DNS SAN; mTLS adds the client certificate', () => {
    const cluster = middleboxCluster({
      middlebox: ['middlebox.middlebox-system.svc:9001'],
      middleboxTls: { caFile: '/tls/ca.crt', certFile: '/tls/tls.crt', keyFile: '/tls/tls.key' },
    });
    const ctx = cluster.transport_socket.typed_config;
    assert.equal(ctx.sni, 'middlebox.middlebox-system.svc');
    assert.deepEqual(ctx.common_tls_context.validation_context.match_typed_subject_alt_names, [
      { san_type: 'DNS', matcher: { exact: 'middlebox.middlebox-system.svc' } },
    ]);
    assert.deepEqual(ctx.common_tls_context.tls_certificates, [
      { certificate_chain: { filename: '/tls/tls.crt' }, private_key: { filename: '/tls/tls.key' } },
    ]);
  });

  it('takes explicit names and SNI; [] checks the CA only (as for unix sockets)', () => {
    const named = middleboxCluster({ middlebox: ['10.0.0.11:9001'], middleboxTls: { caFile: '/ca', subjectAltNames: ['mb.internal', 'mb.internal'], sni: 'mb.internal' } });
    assert.equal(named.transport_socket.typed_config.sni, 'mb.internal');
    assert.deepEqual(named.transport_socket.typed_config.common_tls_context.validation_context.match_typed_subject_alt_names, [
      { san_type: 'DNS', matcher: { exact: 'mb.internal' } },
    ]);
    const caOnly = middleboxCluster({ middlebox: ['unix:/run/mb.sock'], middleboxTls: { caFile: '/ca' } });
    assert.deepEqual(caOnly.transport_socket.typed_config.common_tls_context.validation_context, { trusted_ca: { filename: '/ca' } });
    const any = middleboxCluster({ middlebox: ['10.0.0.11:9001'], middleboxTls: { caFile: '/ca', subjectAltNames: [] } });
    assert.equal(any.transport_socket.typed_config.common_tls_context.validation_context.match_typed_subject_alt_names, undefined);
  });

  it('refuses TLS that would verify nothing, or half a client certificate', () => {
    assert.throws(() => renderBootstrap({ middleboxTls: { caFile: '' } }), /caFile is required/);
    assert.throws(() => renderBootstrap({ middleboxTls: { caFile: '/ca', certFile: '/c' } }), /certFile and keyFile go together/);
    assert.throws(() => renderBootstrap({ middleboxTls: { caFile: '/ca', sni: ' ' } }), /sni must not be empty/);
    assert.throws(() => renderBootstrap({ middleboxTls: { caFile: '/ca', subjectAltNames: ['a b'] } }), /not a name/);
  });

  it('with a watched directory, reads the files through SDS resources kept in it, and refuses files elsewhere', () => {
    const dir = '/etc/middlebox/tls';
    const tls = { caFile: `${dir}/ca.crt`, certFile: `${dir}/tls.crt`, keyFile: `${dir}/tls.key`, watchedDirectory: `${dir}/` };
    const ctx = middleboxCluster({ middlebox: ['mb.svc:9001'], middleboxTls: tls }).transport_socket.typed_config.common_tls_context;
    assert.equal(ctx.validation_context, undefined, 'no CA read once at start');
    assert.equal(ctx.tls_certificates, undefined, 'no client certificate read once at start');
    const watched = { watched_directory: { path: dir } };
    assert.deepEqual(ctx.combined_validation_context.validation_context_sds_secret_config, {
      name: 'middlebox_ca',
      sds_config: { path_config_source: { path: `${dir}/middlebox-ca.sds.yaml`, ...watched }, resource_api_version: 'V3' },
    });
    assert.deepEqual(ctx.tls_certificate_sds_secret_configs[0].sds_config.path_config_source, { path: `${dir}/middlebox-client-cert.sds.yaml`, ...watched });
    // The resource files name the certificate files, under the names the context asks for.
    const files = middleboxTlsSdsFiles(tls);
    assert.deepEqual(Object.keys(files), ['middlebox-ca.sds.yaml', 'middlebox-client-cert.sds.yaml']);
    assert.deepEqual(parse(files['middlebox-client-cert.sds.yaml']!).resources[0].name, 'middlebox_client_cert');
    for (const [bad, message] of [
      [{ ...tls, watchedDirectory: 'etc/tls' }, /absolute path/],
      [{ ...tls, caFile: '/elsewhere/ca.crt' }, /caFile must be a file in watchedDirectory/],
      [{ ...tls, keyFile: `${dir}/sub/tls.key` }, /keyFile must be a file in watchedDirectory/],
    ] as const) {
      assert.throws(() => renderBootstrap({ middlebox: ['mb.svc:9001'], middleboxTls: bad }), message);
    }
    assert.throws(() => middleboxTlsSdsFiles({ caFile: '/ca.crt' }), /watchedDirectory is not set/);
  });

  it('`middlebox envoy bootstrap` flags map onto the options, and refuse incomplete TLS', () => {
    const o = bootstrapOptionsFromFlags({
      middlebox: 'mb.svc:9001',
      'middlebox-ca': '/tls/ca.crt',
      'middlebox-san': 'mb.svc,10.0.0.1',
      'middlebox-sni': 'mb.svc',
      'middlebox-cert': '/tls/tls.crt',
      'middlebox-key': '/tls/tls.key',
    });
    assert.deepEqual(o.middleboxTls, { caFile: '/tls/ca.crt', subjectAltNames: ['mb.svc', '10.0.0.1'], sni: 'mb.svc', certFile: '/tls/tls.crt', keyFile: '/tls/tls.key' });
    assert.equal(bootstrapOptionsFromFlags({}).middleboxTls, undefined);
    assert.deepEqual(bootstrapOptionsFromFlags({ 'middlebox-ca': '/ca', 'middlebox-san': '' }).middleboxTls?.subjectAltNames, []);
    assert.throws(() => bootstrapOptionsFromFlags({ 'middlebox-cert': '/c', 'middlebox-key': '/k' }), (e: Error) => e instanceof UsageError && /need --middlebox-ca/.test(e.message));
    assert.throws(() => bootstrapOptionsFromFlags({ 'middlebox-ca': '/ca', 'middlebox-key': '/k' }), (e: Error) => e instanceof UsageError && /go together/.test(e.message));
  });
});
