// The flags that every command talking to etcd shares (serve, policy, nat, explain): where etcd is
// (--etcd, --prefix) and how to reach it safely (TLS, client certificates, user and password).
import { readFileSync } from 'node:fs';
import type { Etcd3 } from 'etcd3';
import { MiddleboxError } from '../errors';
import { ETCD_SECURITY_ENV, normalisePrefix, settingsFromEnv, splitList } from '../settings';
import { connectEtcd, explainEtcdError, type EtcdErrorContext, type EtcdSettings } from '../state/etcd/client';
import { flagOrEnv, stringOpt, UsageError, type Options } from './command';

export const etcdOptions: Options = {
  etcd: { type: 'string' },
  prefix: { type: 'string' },
  'etcd-cacert': { type: 'string' },
  'etcd-cert': { type: 'string' },
  'etcd-key': { type: 'string' },
  'etcd-user': { type: 'string' },
  'etcd-password-file': { type: 'string' },
};

const E = ETCD_SECURITY_ENV;

/** Help lines for etcdOptions, with the description column at `column` (serve's help uses 27). */
export function etcdHelpLines(column = 27): string[] {
  const line = (flag: string, ...text: string[]) => {
    const head = `  ${flag}`;
    const pad = ' '.repeat(column);
    const first = head.length < column ? [`${head.padEnd(column)}${text[0]}`] : [head, `${pad}${text[0]}`];
    return [...first, ...text.slice(1).map((t) => `${pad}${t}`)];
  };
  return [
    ...line('--etcd URLS', 'comma-separated etcd client URLs, all http:// or all https://', '(env MIDDLEBOX_ETCD, default http://127.0.0.1:2379)'),
    ...line('--prefix PREFIX', 'etcd key prefix (env MIDDLEBOX_PREFIX, default /middlebox)'),
    ...line('--etcd-cacert FILE', `CA bundle that signed etcd's certificate, for https:// endpoints`, `(env ${E.cacert}, default the system's roots)`),
    ...line('--etcd-cert FILE', `client certificate, for etcd's --client-cert-auth; with --etcd-key`, `(env ${E.cert})`),
    ...line('--etcd-key FILE', `the client certificate's private key (env ${E.key})`),
    ...line('--etcd-user NAME', `etcd user name; its password comes from env ${E.password} or`, `--etcd-password-file, never from a flag (env ${E.user})`),
    ...line('--etcd-password-file FILE', 'file holding the etcd password; one trailing newline is ignored', `(env ${E.passwordFile})`),
  ];
}

export const etcdHelp = etcdHelpLines();

/** Everything needed to connect, and to explain a failure in the user's terms. */
export interface EtcdConnection {
  prefix: string;
  settings: EtcdSettings;
  context: EtcdErrorContext;
}

/**
 * Reads the etcd flags (flags win over their environment variables) and the files they name.
 * Contradictory flags are a UsageError (exit 2); a file that cannot be read is a MiddleboxError
 * (exit 1). Nothing connects yet.
 */
export function etcdConnectionFrom(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): EtcdConnection {
  const defaults = settingsFromEnv(env);
  // A flag given empty is a mistake to report, not a reason to fall back to the environment.
  const etcdFlag = stringOpt(values, 'etcd');
  const endpoints = etcdFlag !== undefined ? splitList(etcdFlag) : defaults.etcd;
  const prefixFlag = stringOpt(values, 'prefix');
  if (prefixFlag === '') throw new UsageError('--prefix must not be empty (default /middlebox)');
  const prefix = prefixFlag !== undefined ? normalisePrefix(prefixFlag) : defaults.prefix;
  // Each value with the flag or variable it came from, for messages.
  const cacertOpt = flagOrEnv(values, 'etcd-cacert', E.cacert, env);
  const certOpt = flagOrEnv(values, 'etcd-cert', E.cert, env);
  const keyOpt = flagOrEnv(values, 'etcd-key', E.key, env);
  const userOpt = flagOrEnv(values, 'etcd-user', E.user, env);
  const passwordFileOpt = flagOrEnv(values, 'etcd-password-file', E.passwordFile, env);
  const [cacert, cert, key, user, passwordFile] = [cacertOpt, certOpt, keyOpt, userOpt, passwordFileOpt].map((o) => o.value);
  const envPassword = env[E.password] || undefined;

  const etcdSource = etcdFlag !== undefined ? '--etcd' : 'MIDDLEBOX_ETCD';
  if (endpoints.length === 0) throw new UsageError(`${etcdSource} needs at least one URL`);
  for (const e of endpoints) {
    // A URL that is not one is a wrong command line (exit 2); connectEtcd checks it again for library callers.
    const url = URL.canParse(e) ? new URL(e) : undefined;
    if (url?.protocol !== 'http:' && url?.protocol !== 'https:') throw new UsageError(`${etcdSource}: etcd endpoint ${JSON.stringify(e)} is not an http:// or https:// URL (e.g. http://127.0.0.1:2379)`);
  }
  const plaintext = endpoints.filter((e) => e.startsWith('http://'));
  if (plaintext.length > 0 && plaintext.length < endpoints.length) {
    throw new UsageError(`${etcdSource}: etcd endpoints must all be http:// or all https://, not a mix`);
  }
  const tlsFlags = [cacert && '--etcd-cacert', cert && '--etcd-cert', key && '--etcd-key'].filter(Boolean);
  if (tlsFlags.length > 0 && plaintext.length > 0) {
    throw new UsageError(`${tlsFlags.join(', ')} ${tlsFlags.length === 1 ? 'needs' : 'need'} https:// etcd endpoints; ${plaintext.join(',')} ${plaintext.length === 1 ? 'is' : 'are'} plaintext`);
  }
  if ((cert === undefined) !== (key === undefined)) throw new UsageError('--etcd-cert and --etcd-key go together: a client certificate needs its key');
  if (user !== undefined && user.trim() === '') throw new UsageError('--etcd-user must name a user, got ""');
  if (user !== undefined && passwordFile === undefined && envPassword === undefined) {
    throw new UsageError(`${userOpt.name} ${user} needs a password: set ${E.password} or give --etcd-password-file FILE`);
  }
  if (user === undefined && (passwordFile !== undefined || envPassword !== undefined)) {
    throw new UsageError(`an etcd password is set (${passwordFile !== undefined ? passwordFileOpt.name : E.password}) but no --etcd-user`);
  }

  const settings: EtcdSettings = { endpoints };
  if (cacert || cert) {
    settings.tls = {
      ca: cacert ? readPem(cacertOpt.name, cacert, 'CERTIFICATE') : undefined,
      cert: cert ? readPem(certOpt.name, cert, 'CERTIFICATE') : undefined,
      key: key ? readPem(keyOpt.name, key, 'PRIVATE KEY') : undefined,
    };
  }
  if (user !== undefined) {
    // A file wins over the environment variable, as a flag wins over the environment.
    const password = passwordFile !== undefined ? readPassword(passwordFile) : envPassword!;
    settings.auth = { username: user, password };
  }
  return { prefix, settings, context: { endpoints, username: user, clientCert: cert !== undefined } };
}

/** Connects with the flags; a bad combination of TLS material is reported as the user's error. */
export function connectFromFlags(conn: EtcdConnection): Etcd3 {
  try {
    return connectEtcd(conn.settings);
  } catch (e) {
    if (e instanceof MiddleboxError) throw e;
    // gRPC builds the TLS context at once: a key that does not match its certificate fails here.
    throw new MiddleboxError('bad_etcd_endpoint', `etcd TLS files do not load together: ${(e as Error).message}`);
  }
}

/** Runs a command's etcd work with a client made from the flags, closing it whatever happens. */
export async function withEtcd<T>(values: Record<string, unknown>, work: (client: Etcd3, prefix: string) => Promise<T>): Promise<T> {
  const conn = etcdConnectionFrom(values);
  const client = connectFromFlags(conn);
  try {
    return await work(client, conn.prefix);
  } catch (e) {
    throw explainEtcdError(e, conn.context);
  } finally {
    client.close();
  }
}

function readFile(flag: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new MiddleboxError('file_not_found', `${flag} ${file}: cannot read it (${err.code ?? err.message})`);
  }
}

/** A PEM file holding at least one block of the expected kind (CERTIFICATE, or a PRIVATE KEY of any type). */
function readPem(flag: string, file: string, kind: 'CERTIFICATE' | 'PRIVATE KEY'): Buffer {
  const data = readFile(flag, file);
  const text = data.toString('latin1');
  const ok = kind === 'CERTIFICATE' ? text.includes('-----BEGIN CERTIFICATE-----') : /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text);
  if (!ok) throw new MiddleboxError('file_not_found', `${flag} ${file}: not a PEM ${kind === 'CERTIFICATE' ? 'certificate' : 'private key'}`);
  return data;
}

function readPassword(file: string): string {
  const password = readFile('--etcd-password-file', file).toString('utf8').replace(/\r?\n$/, '');
  if (password === '') throw new MiddleboxError('file_not_found', `--etcd-password-file ${file}: the file is empty`);
  return password;
}
