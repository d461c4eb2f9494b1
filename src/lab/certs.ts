// A throwaway PKI for tests and the lab, made with the `openssl` command line in a temp dir: one
// CA, a server certificate for loopback (IP:127.0.0.1, DNS:localhost) and client certificates.
// Short-lived (two days) EC P-256 keys: quick to make, and every party here (etcd's Go TLS, Envoy's
// BoringSSL, Node's OpenSSL) speaks them. Nothing here is fit for production use.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { findExecutable, makeTempDir, removeTempDir } from './processes';

/** A certificate and its key, as PEM files. */
export interface CertFiles {
  certFile: string;
  keyFile: string;
}

export interface TestPki {
  dir: string;
  /** The CA's certificate: what a server trusts for client certificates, and a client for servers. */
  caFile: string;
  /** Loopback server certificate: SAN IP:127.0.0.1 and DNS:localhost, serverAuth and clientAuth. */
  server: CertFiles;
  /** A client certificate (clientAuth) whose CN is `clientName` (etcd takes the CN as user name). */
  client: CertFiles;
  clientName: string;
  /** Issues another client certificate from the same CA. */
  issueClient(name: string, opts?: { uri?: string }): CertFiles;
  /** The contents of a file of this PKI. */
  read(file: string): Buffer;
  /** Removes the directory (also removed when the process exits). */
  remove(): void;
}

export interface TestPkiOptions {
  /** Subject CN of the CA (default "middlebox test CA"); two PKIs made here never trust each other anyway. */
  caName?: string;
  /** CN of the first client certificate (default "root", etcd's administrator). */
  clientName?: string;
  /** A URI SAN for the first client certificate, e.g. a SPIFFE id. */
  clientUri?: string;
  /** Directory to write into; default a fresh temp dir. */
  dir?: string;
}

const OPENSSL_TIMEOUT_MS = 15_000;
const DAYS = '2';

/** Makes a CA, a loopback server certificate and a client certificate. */
export function makeTestPki(opts: TestPkiOptions = {}): TestPki {
  const openssl = findExecutable('openssl', ['/usr/bin/openssl']);
  const owned = opts.dir === undefined;
  const dir = opts.dir ?? makeTempDir('middlebox-pki-');
  fs.mkdirSync(dir, { recursive: true });
  const file = (name: string) => path.join(dir, name);
  const run = (args: string[]) => {
    try {
      execFileSync(openssl, args, { cwd: dir, timeout: OPENSSL_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      const err = e as Error & { stderr?: Buffer };
      throw new Error(`openssl ${args[0]} failed: ${err.stderr?.toString().trim() || err.message}`);
    }
  };
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

  const caFile = file('ca.crt');
  const caKey = file('ca.key');
  run([
    'req', '-x509', ...newKey, '-keyout', caKey, '-out', caFile, '-days', DAYS, '-subj', `/CN=${opts.caName ?? 'middlebox test CA'}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);

  /** A key and a CSR, then the CA signs it with the given extensions. */
  const issue = (name: string, cn: string, extensions: string[]): CertFiles => {
    const certFile = file(`${name}.crt`);
    const keyFile = file(`${name}.key`);
    const csr = file(`${name}.csr`);
    const ext = file(`${name}.ext`);
    fs.writeFileSync(ext, `${['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', ...extensions].join('\n')}\n`);
    run(['req', '-new', ...newKey, '-keyout', keyFile, '-out', csr, '-subj', `/CN=${cn}`]);
    run([
      'x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKey, '-set_serial', `0x${randomBytes(8).toString('hex')}`,
      '-days', DAYS, '-sha256', '-extfile', ext, '-out', certFile,
    ]);
    fs.rmSync(csr, { force: true });
    fs.rmSync(ext, { force: true });
    return { certFile, keyFile };
  };

  // etcd dials itself (its gRPC gateway) with its server certificate, so the server certificate
  // is good for client authentication too.
  const server = issue('server', 'localhost', ['subjectAltName=IP:127.0.0.1,DNS:localhost', 'extendedKeyUsage=serverAuth,clientAuth']);
  const clients = new Set<string>();
  const issueClient = (name: string, o: { uri?: string } = {}): CertFiles => {
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`client certificate name must be [A-Za-z0-9._-]+, got ${JSON.stringify(name)}`);
    if (clients.has(name)) throw new Error(`client certificate ${name} was issued already`);
    clients.add(name);
    return issue(`client-${name}`, name, ['extendedKeyUsage=clientAuth', ...(o.uri ? [`subjectAltName=URI:${o.uri}`] : [])]);
  };
  const clientName = opts.clientName ?? 'root';
  const client = issueClient(clientName, { uri: opts.clientUri });

  return {
    dir,
    caFile,
    server,
    client,
    clientName,
    issueClient,
    read: (f) => fs.readFileSync(f),
    remove: () => (owned ? removeTempDir(dir) : undefined),
  };
}
