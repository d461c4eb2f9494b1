// Every setting the server reads from its environment, with its default in one place.
// Command-line flags override these.

export interface ServeSettings {
  /** host:port, [v6]:port, or unix:/path. */
  listen: string;
  /** Comma-separated etcd client URLs. */
  etcd: string[];
  /** Key prefix under which policies, counters and the NAT table live. */
  prefix: string;
  /** How long SIGTERM waits for in-flight calls before it cuts them off. */
  drainMs: number;
  logLevel: string;
  /** The admin HTTP port (/healthz, /readyz, /metrics): host:port, [v6]:port, or `off`. */
  adminListen: string;
}

export const DEFAULTS: ServeSettings = {
  listen: '127.0.0.1:9001',
  etcd: ['http://127.0.0.1:2379'],
  prefix: '/middlebox',
  drainMs: 10_000,
  logLevel: 'info',
  // Beside the gRPC port; apart from Envoy's admin (9901 by Envoy's default, 15000 in our bootstrap).
  adminListen: '127.0.0.1:9002',
};

/**
 * Environment variables of the etcd connection's TLS and authentication, shared by every command
 * that talks to etcd (flags of the same names override them). The password has no flag: a flag's
 * value shows in `ps`; it comes from MIDDLEBOX_ETCD_PASSWORD or a file.
 */
export const ETCD_SECURITY_ENV = {
  cacert: 'MIDDLEBOX_ETCD_CACERT',
  cert: 'MIDDLEBOX_ETCD_CERT',
  key: 'MIDDLEBOX_ETCD_KEY',
  user: 'MIDDLEBOX_ETCD_USER',
  passwordFile: 'MIDDLEBOX_ETCD_PASSWORD_FILE',
  password: 'MIDDLEBOX_ETCD_PASSWORD',
} as const;

/** Environment variables of `serve`'s gRPC TLS (--tls-cert, --tls-key, --tls-client-ca). Default: none, plaintext. */
export const SERVER_TLS_ENV = {
  cert: 'MIDDLEBOX_TLS_CERT',
  key: 'MIDDLEBOX_TLS_KEY',
  clientCa: 'MIDDLEBOX_TLS_CLIENT_CA',
} as const;

export function settingsFromEnv(env: NodeJS.ProcessEnv = process.env): ServeSettings {
  return {
    listen: env.MIDDLEBOX_LISTEN || DEFAULTS.listen,
    etcd: env.MIDDLEBOX_ETCD ? splitList(env.MIDDLEBOX_ETCD) : DEFAULTS.etcd,
    prefix: normalisePrefix(env.MIDDLEBOX_PREFIX || DEFAULTS.prefix),
    drainMs: env.MIDDLEBOX_DRAIN_MS ? Number(env.MIDDLEBOX_DRAIN_MS) : DEFAULTS.drainMs,
    logLevel: env.MIDDLEBOX_LOG_LEVEL || DEFAULTS.logLevel,
    adminListen: env.MIDDLEBOX_ADMIN_LISTEN || DEFAULTS.adminListen,
  };
}

export function splitList(text: string): string[] {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

/** "/middlebox", "middlebox/" and "/middlebox/" all mean the same prefix: "/middlebox". */
export function normalisePrefix(prefix: string): string {
  const trimmed = prefix.replace(/\/+$/, '');
  return trimmed.startsWith('/') ? trimmed : `/${trimmed}`;
}
