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

/**
 * A bound on what one input may cost (bytes, rules, keys). Each is a flag of the commands it
 * concerns and an environment variable (the flag wins); its default lives with the code it bounds
 * (policy/limits.ts, grpc/authz/request.ts, grpc/server.ts, state/ratelimit/key-cap.ts).
 */
export interface BoundSetting {
  /** The flag's name without its dashes. */
  flag: string;
  env: string;
  min: number;
  max: number;
}

const MIB = 1024 * 1024;

export const BOUNDS = {
  /** Bytes of one policy file or stored policy (`serve`, `policy validate|apply`). */
  maxPolicyBytes: { flag: 'max-policy-bytes', env: 'MIDDLEBOX_MAX_POLICY_BYTES', min: 1024, max: 64 * MIB },
  /** Entries of each of firewall.rules, rateLimits and nat in one policy (`serve`, `policy validate|apply`). */
  maxRulesPerPolicy: { flag: 'max-rules-per-policy', env: 'MIDDLEBOX_MAX_RULES_PER_POLICY', min: 1, max: 1_000_000 },
  /** Distinct bucket keys one rate limit tracks per replica (`serve`). */
  maxKeysPerRateLimit: { flag: 'max-keys-per-rate-limit', env: 'MIDDLEBOX_MAX_KEYS_PER_RATE_LIMIT', min: 1, max: 10_000_000 },
  /** Flows recorded per NAT rule in etcd, all replicas together (`serve`). */
  maxNatFlowsPerRule: { flag: 'max-nat-flows-per-rule', env: 'MIDDLEBOX_MAX_NAT_FLOWS_PER_RULE', min: 1, max: 10_000_000 },
  /** Bytes of request header names and values examined per request (`serve`). */
  maxHeaderBytes: { flag: 'max-header-bytes', env: 'MIDDLEBOX_MAX_HEADER_BYTES', min: 1024, max: 64 * MIB },
  /** Bytes of one gRPC message received or sent (`serve`); gRPC's own int32 limit above. */
  maxMessageBytes: { flag: 'max-message-bytes', env: 'MIDDLEBOX_MAX_MESSAGE_BYTES', min: 4096, max: 2 ** 31 - 1 },
} as const satisfies Record<string, BoundSetting>;

/** How errors name a bound's setting: "--max-policy-bytes, env MIDDLEBOX_MAX_POLICY_BYTES". */
export function settingName(setting: BoundSetting): string {
  return `--${setting.flag}, env ${setting.env}`;
}

/** Environment variable `name` as a whole number in [min, max]: undefined when unset or empty, else an Error with one clear line. */
export function wholeNumberFromEnv(name: string, min: number, max: number, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const text = env[name];
  if (text === undefined || text.trim() === '') return undefined;
  const n = wholeNumber(text);
  if (n === undefined || n < min || n > max) throw new Error(`${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(text)}`);
  return n;
}

/** Decimal digits only ("8080"), as a number; undefined for anything else ("", "0x50", "8e3", " 80", "-1"). */
export function wholeNumber(text: string): number | undefined {
  if (!/^\d{1,16}$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** The address settings from the environment (numbers and log level: cli/command's intEnv and logLevelOpt, which check them). */
export function settingsFromEnv(env: NodeJS.ProcessEnv = process.env): Pick<ServeSettings, 'listen' | 'etcd' | 'prefix' | 'adminListen'> {
  return {
    listen: env.MIDDLEBOX_LISTEN || DEFAULTS.listen,
    etcd: env.MIDDLEBOX_ETCD ? splitList(env.MIDDLEBOX_ETCD) : DEFAULTS.etcd,
    prefix: normalisePrefix(env.MIDDLEBOX_PREFIX || DEFAULTS.prefix),
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
