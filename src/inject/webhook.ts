// `middlebox inject serve`: the Kubernetes mutating admission webhook, a thin HTTPS shell around
// the pure core (injectionRequired, patch). `admit` turns one AdmissionReview (admission.k8s.io/v1)
// into its answer without I/O; `startWebhook` is the HTTP side: routes, body limits, the TLS
// certificate (reloaded when its files change) and a draining shutdown.
//
// Namespaces: an AdmissionReview carries the pod, not its namespace's labels, and the webhook does
// not ask the API server for them. Like other injectors, it relies on the
// MutatingWebhookConfiguration: its namespaceSelector (middlebox.io/injection=enabled) already chose
// the namespaces, so every request is decided as if its namespace carried `namespaceLabels`
// (by default that very label). The pod's own `middlebox.io/inject: "false"` still wins, and
// `"true"` injects whatever the namespace says. With `namespaceLabels` empty only pods that opt in
// are injected: for a configuration that sends the webhook pods from every namespace.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type http from 'node:http';
import type net from 'node:net';
import tls from 'node:tls';
import { MiddleboxError } from '../errors';
import { watchFiles } from '../file-watch';
import { drainHttpServer, TLS_HANDSHAKE_TIMEOUT_MS, trackSockets } from '../http-drain';
import type { Logger } from '../observability/logger';
import type { InjectConfig } from './config';
import { injectionRequired } from './decide';
import { InjectError, isInjected, patch, staleSidecar } from './patch';
import type { Pod } from './types';

export const ADMISSION_API_VERSION = 'admission.k8s.io/v1';
/** The path the MutatingWebhookConfiguration's clientConfig names. */
export const INJECT_PATH = '/inject';
/** kube-apiserver's own limit on a request body (3 MiB). */
export const DEFAULT_MAX_REQUEST_BYTES = 3 * 1024 * 1024;
export const DEFAULT_WEBHOOK_LISTEN = '0.0.0.0:9443';
/** How often the certificate and key files are checked for a change. */
export const DEFAULT_CERT_CHECK_MS = 1000;
export const DEFAULT_WEBHOOK_DRAIN_MS = 10_000;
/** On SIGTERM, how long the webhook keeps answering (with /readyz 503) before it closes its listener. */
export const DEFAULT_WEBHOOK_SHUTDOWN_DELAY_MS = 2000;

/** A request the webhook refuses at the HTTP level: the status and a one-line reason. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

// ---- the AdmissionReview, pure ------------------------------------------------------------------

export interface AdmissionResponse {
  uid: string;
  allowed: boolean;
  patchType?: 'JSONPatch';
  /** base64 of the JSON Patch (RFC 6902) array. */
  patch?: string;
  status?: { code: number; message: string };
  warnings?: string[];
}

export interface AdmissionReviewOut {
  apiVersion: typeof ADMISSION_API_VERSION;
  kind: 'AdmissionReview';
  response: AdmissionResponse;
}

export interface Admission {
  review: AdmissionReviewOut;
  /** What happened, for the log. */
  log: { uid: string; namespace?: string; pod?: string; operation?: string; injected: boolean; reason: string };
}

type Json = Record<string, any>;

function isObject(v: unknown): v is Json {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/**
 * The answer to one AdmissionReview. Throws HttpError(400) for a body that is not an
 * AdmissionReview v1 with a request and its uid. Anything that is not the creation of a Pod is
 * allowed unchanged; a Pod that should be injected but cannot be (a malformed middlebox annotation)
 * is refused with the reason, since letting it run without its sidecar would bypass the middlebox.
 */
export function admit(body: unknown, config: InjectConfig, namespaceLabels: Record<string, string>): Admission {
  if (!isObject(body)) throw new HttpError(400, `the body is not a JSON object: expected an AdmissionReview (${ADMISSION_API_VERSION})`);
  if (body.kind !== 'AdmissionReview' || body.apiVersion !== ADMISSION_API_VERSION) {
    throw new HttpError(
      400,
      `expected kind AdmissionReview, apiVersion ${ADMISSION_API_VERSION}; got kind ${JSON.stringify(body.kind)}, apiVersion ${JSON.stringify(body.apiVersion)}`,
    );
  }
  const request = body.request;
  if (!isObject(request)) throw new HttpError(400, 'the AdmissionReview has no request');
  const uid = request.uid;
  if (typeof uid !== 'string' || uid === '') throw new HttpError(400, 'the AdmissionReview request has no uid');

  const namespace = typeof request.namespace === 'string' ? request.namespace : undefined;
  const operation = typeof request.operation === 'string' ? request.operation : undefined;
  const answer = (response: Omit<AdmissionResponse, 'uid'>, injected: boolean, reason: string, pod?: string): Admission => ({
    review: { apiVersion: ADMISSION_API_VERSION, kind: 'AdmissionReview', response: { uid, ...response } },
    log: { uid, namespace, pod, operation, injected, reason },
  });

  const kind = isObject(request.kind) ? request.kind : {};
  if (kind.kind !== 'Pod' || (kind.group ?? '') !== '') return answer({ allowed: true }, false, `not a Pod (kind ${JSON.stringify(kind.kind)})`);
  if (typeof request.subResource === 'string' && request.subResource !== '') {
    return answer({ allowed: true }, false, `a subresource (${request.subResource}), not the Pod itself`);
  }
  if (operation !== 'CREATE') return answer({ allowed: true }, false, `operation ${JSON.stringify(operation)}: only CREATE is injected`);
  const object = request.object;
  if (!isObject(object)) throw new HttpError(400, 'the AdmissionReview request has no object (the Pod)');
  const pod = object as Pod;
  const podName = pod.metadata?.name || (pod.metadata?.generateName ? `${pod.metadata.generateName}*` : undefined);

  const decision = injectionRequired(pod, namespaceLabels);
  if (!decision.inject && isInjected(pod)) {
    // Injected before (a pod from an injected template): it only gets the sidecar label if it
    // lacks it, and a warning if its sidecar is not what the injector would make now.
    const ops = patch(pod, config);
    const stale = staleSidecar(pod, config);
    if (ops.length > 0 || stale) {
      return answer(
        {
          allowed: true,
          ...(ops.length > 0 ? { patchType: 'JSONPatch' as const, patch: Buffer.from(JSON.stringify(ops), 'utf8').toString('base64') } : {}),
          ...(stale ? { warnings: [`middlebox: ${stale}`] } : {}),
        },
        false,
        `${decision.reason}${ops.length > 0 ? '; labelled' : ''}${stale ? `; ${stale}` : ''}`,
        podName,
      );
    }
  }
  if (!decision.inject) {
    // A value that is neither "true" nor "false", as an annotation or a label, is most likely a typo
    // of an opt-in: the pod is admitted as it is (as Istio does), and kubectl shows why.
    return answer({ allowed: true, ...(decision.malformed ? { warnings: [`middlebox sidecar not injected: ${decision.reason}`] } : {}) }, false, decision.reason, podName);
  }
  let ops;
  try {
    ops = patch(pod, config);
  } catch (e) {
    if (!(e instanceof InjectError)) throw e;
    const message = `middlebox sidecar injection refused the pod: ${e.message}`;
    return answer({ allowed: false, status: { code: 400, message } }, false, message, podName);
  }
  const encoded = Buffer.from(JSON.stringify(ops), 'utf8').toString('base64');
  return answer({ allowed: true, patchType: 'JSONPatch', patch: encoded }, true, decision.reason, podName);
}

// ---- the certificate -----------------------------------------------------------------------------

export interface KeyPair {
  cert: Buffer;
  key: Buffer;
  subject: string;
  serialNumber: string;
  fingerprint256: string;
  validTo: string;
}

/** Reads and checks a certificate and its private key; throws MiddleboxError naming the problem. */
export function loadKeyPair(certFile: string, keyFile: string): KeyPair {
  const read = (file: string, what: string) => {
    try {
      return fs.readFileSync(file);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new MiddleboxError('file_not_found', `no such ${what} file: ${file}`);
      throw new MiddleboxError('bad_usage', `cannot read the ${what} file ${file}: ${(e as Error).message}`);
    }
  };
  const cert = read(certFile, 'TLS certificate');
  const key = read(keyFile, 'TLS key');
  let x509: crypto.X509Certificate;
  try {
    x509 = new crypto.X509Certificate(cert);
  } catch (e) {
    throw new MiddleboxError('bad_usage', `${certFile} is not a PEM certificate: ${(e as Error).message}`);
  }
  try {
    // OpenSSL checks here that the key is readable and belongs to the certificate.
    tls.createSecureContext({ cert, key });
  } catch (e) {
    throw new MiddleboxError('bad_usage', `${certFile} and ${keyFile} are not a usable certificate and key: ${(e as Error).message}`);
  }
  return { cert, key, subject: x509.subject, serialNumber: x509.serialNumber, fingerprint256: x509.fingerprint256, validTo: x509.validTo };
}

function certInfo(pair: KeyPair) {
  return { subject: pair.subject, serial: pair.serialNumber, fingerprint256: pair.fingerprint256, validTo: pair.validTo };
}

// ---- the HTTPS server ----------------------------------------------------------------------------

export interface WebhookOptions {
  /** host:port or [ipv6]:port; port 0 picks a free one. */
  listen: string;
  certFile: string;
  keyFile: string;
  config: InjectConfig;
  /** The labels every request's namespace is taken to have (see the top of this file). */
  namespaceLabels: Record<string, string>;
  logger: Logger;
  maxRequestBytes?: number;
  certCheckMs?: number;
}

export interface RunningWebhook {
  /** host:port actually bound. */
  address: string;
  port: number;
  /**
   * /readyz answers 503 at once; requests are still answered for `delayMs` (while the Service's
   * endpoints drop this replica), then no new connections, and in-flight requests finish (cut off
   * after drainMs).
   */
  shutdown(drainMs: number, delayMs?: number): Promise<void>;
}

/** "host:port" or "[v6]:port" -> host and port. */
export function parseHostPort(listen: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new MiddleboxError('bad_listen_address', `listen address ${JSON.stringify(listen)} is not host:port or [ipv6]:port`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

export async function startWebhook(opts: WebhookOptions): Promise<RunningWebhook> {
  const { host, port } = parseHostPort(opts.listen);
  const logger = opts.logger.child({ component: 'inject-webhook' });
  const maxBytes = opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  let pair = loadKeyPair(opts.certFile, opts.keyFile);
  let stopping = false;

  const server = https.createServer(
    {
      cert: pair.cert,
      key: pair.key,
      minVersion: 'TLSv1.2',
      // kube-apiserver gives a webhook at most 30 s; a request that takes longer is not coming.
      requestTimeout: 30_000,
      headersTimeout: 10_000,
      handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS,
    },
    (req, res) => handle(req, res),
  );
  // The drain's cut ends them all, or one stuck in its handshake would hold close() up.
  const sockets = trackSockets(server);
  server.on('tlsClientError', (err, socket: tls.TLSSocket) => {
    logger.debug({ err: err.message, remote: socket.remoteAddress }, 'TLS handshake failed');
  });

  function send(res: http.ServerResponse, status: number, body: string, contentType: string, headers: Record<string, string> = {}): void {
    if (res.headersSent) return;
    const payload = Buffer.from(body, 'utf8');
    res.writeHead(status, {
      'content-type': contentType,
      'content-length': String(payload.length),
      ...headers,
      ...(stopping ? { connection: 'close' } : {}),
    });
    res.end(payload);
  }

  const sendError = (res: http.ServerResponse, e: HttpError) => send(res, e.status, `${e.message}\n`, 'text/plain; charset=utf-8', e.headers);

  function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0];
    const method = req.method ?? 'GET';
    if (path === '/healthz' || path === '/readyz') {
      if (method !== 'GET' && method !== 'HEAD') return sendError(res, new HttpError(405, `${path} answers GET only`, { allow: 'GET, HEAD' }));
      // Liveness holds while the process runs; readiness ends with the shutdown.
      if (path === '/readyz' && stopping) return send(res, 503, 'shutting down\n', 'text/plain; charset=utf-8');
      return send(res, 200, 'ok\n', 'text/plain; charset=utf-8');
    }
    if (path !== INJECT_PATH) return sendError(res, new HttpError(404, `no such path ${JSON.stringify(path)}; AdmissionReviews go to POST ${INJECT_PATH}`));
    if (method !== 'POST') return sendError(res, new HttpError(405, `${INJECT_PATH} takes POST with an AdmissionReview, not ${method}`, { allow: 'POST' }));

    const declared = Number(req.headers['content-length'] ?? NaN);
    if (declared > maxBytes) return tooLarge(req, res);
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (chunk: Buffer) => {
      if (refused) return;
      size += chunk.length;
      if (size > maxBytes) {
        refused = true;
        chunks.length = 0;
        tooLarge(req, res);
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', (err) => logger.debug({ err: err.message }, 'request aborted'));
    req.on('end', () => {
      if (refused) return;
      try {
        review(req, res, Buffer.concat(chunks));
      } catch (e) {
        if (e instanceof HttpError) {
          logger.warn({ status: e.status, reason: e.message, remote: req.socket.remoteAddress }, 'request refused');
          return sendError(res, e);
        }
        logger.error({ err: e }, 'admission review failed');
        send(res, 500, 'internal error while answering the AdmissionReview; see the webhook log\n', 'text/plain; charset=utf-8');
      }
    });
  }

  function tooLarge(req: http.IncomingMessage, res: http.ServerResponse): void {
    logger.warn({ maxBytes, remote: req.socket.remoteAddress }, 'request refused: body too large');
    sendError(res, new HttpError(413, `the request body is larger than ${maxBytes} bytes`, { connection: 'close' }));
  }

  function review(req: http.IncomingMessage, res: http.ServerResponse, body: Buffer): void {
    if (body.length === 0) throw new HttpError(400, `the request body is empty: expected an AdmissionReview (${ADMISSION_API_VERSION}) as JSON`);
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      throw new HttpError(415, `content-type must be application/json, got ${type === '' ? 'none' : JSON.stringify(type)}`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch (e) {
      throw new HttpError(400, `the request body is not valid JSON: ${(e as Error).message}`);
    }
    const { review: out, log } = admit(parsed, opts.config, opts.namespaceLabels);
    logger.info({ ...log, allowed: out.response.allowed }, log.injected ? 'pod injected' : 'pod not injected');
    send(res, 200, JSON.stringify(out), 'application/json');
  }

  // Reload when the files change; a pair that does not load is logged and the current one kept.
  const checkCertificate = () => {
    try {
      const next = loadKeyPair(opts.certFile, opts.keyFile);
      if (next.fingerprint256 === pair.fingerprint256 && next.key.equals(pair.key)) return;
      server.setSecureContext({ cert: next.cert, key: next.key, minVersion: 'TLSv1.2' });
      logger.info({ previous: pair.fingerprint256, ...certInfo(next) }, 'TLS certificate reloaded');
      pair = next;
    } catch (e) {
      logger.warn({ err: (e as Error).message, current: pair.fingerprint256 }, 'TLS certificate reload failed; keeping the current certificate');
    }
  };
  const watcher = watchFiles([opts.certFile, opts.keyFile], opts.certCheckMs ?? DEFAULT_CERT_CHECK_MS, checkCertificate);

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((e: Error) => {
    watcher.stop();
    throw new MiddleboxError('bad_listen_address', `cannot listen on ${opts.listen}: ${e.message}`);
  });
  server.on('error', (err) => logger.error({ err }, 'webhook server error'));
  const bound = (server.address() as net.AddressInfo).port;
  const address = `${host.includes(':') ? `[${host}]` : host}:${bound}`;
  logger.info({ listen: address, path: INJECT_PATH, namespaceLabels: opts.namespaceLabels, maxRequestBytes: maxBytes, ...certInfo(pair) }, 'inject webhook serving');

  return {
    address,
    port: bound,
    async shutdown(drainMs: number, delayMs = 0) {
      stopping = true;
      watcher.stop();
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      return drainHttpServer(server, sockets, drainMs, () => {
        logger.warn({ drainMs }, 'in-flight requests did not finish in time; cutting them off');
      });
    },
  };
}
