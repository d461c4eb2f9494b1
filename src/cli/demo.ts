// `middlebox demo`: the whole system on loopback, showing what each request got and why. Ends by itself.
import fs from 'node:fs';
import path from 'node:path';
import { httpRequest, tcpProbe } from '../lab/client';
import { envoyExecutable } from '../lab/envoy';
import { etcdExecutable } from '../lab/etcd';
import { SidecarLab } from '../lab/sidecar';
import { waitFor } from '../lab/ports';
import { startHttpUpstream, type Upstream } from '../lab/upstream';
import { formatPolicyError, parsePolicies, parsePolicyFile } from '../policy/parse';
import { connectEtcd } from '../state/etcd/client';
import { listFlows } from '../state/etcd/nat';
import type { PolicyDocument } from '../policy/types';
import { MiddleboxError } from '../errors';
import { stringOpt, UsageError, type Command } from './command';

const DEMO_POLICY = path.join(__dirname, '..', '..', '..', 'examples', 'policies', 'demo.yaml');

interface Probe {
  what: string;
  method?: string;
  path: string;
  from?: string;
  headers?: Record<string, string>;
}

export const demoCommand: Command = {
  name: 'demo',
  summary: 'Start etcd, two middlebox replicas, Envoy, an app and two backends on loopback; show the firewall, a rate limit and NAT at work; stop.',
  usage: 'middlebox demo [--logs DIR]',
  help: ['  --logs DIR   keep every process\'s log and the Envoy bootstrap in DIR (default: a temp dir, removed)'],
  options: { logs: { type: 'string' } },
  async run({ values }) {
    const policy = loadPolicy();
    const out = (s = '') => process.stdout.write(`${s}\n`);
    const logDir = stringOpt(values, 'logs');
    if (logDir !== undefined) {
      if (logDir.trim() === '') throw new UsageError('--logs must name a directory, got ""');
      if (fs.existsSync(logDir) && !fs.statSync(logDir).isDirectory()) throw new UsageError(`--logs ${logDir}: exists and is not a directory`);
    }
    // Both binaries before anything starts: a missing one is one line, not a half-started lab.
    etcdExecutable();
    envoyExecutable();
    out('Starting etcd, 2 middlebox replicas, an app and Envoy on 127.0.0.1 ...');
    const lab = await SidecarLab.start({ replicas: 2, tcp: true, outbound: true, logDir: logDir ? path.resolve(logDir) : undefined });
    const backends: Upstream[] = [];
    try {
      backends.push(await startHttpUpstream({ name: 'orders-a' }), await startHttpUpstream({ name: 'orders-b' }));
      out(`  etcd ${lab.etcd.endpoint}; replicas ${lab.replicas.map((r) => r.address).join(', ')}`);
      out(`  Envoy: HTTP :${lab.httpPort}, TCP :${lab.tcpPort}; both replicas healthy in Envoy's middlebox cluster`);
      out();
      out(`Applying ${path.relative(process.cwd(), DEMO_POLICY)} (policy "shop": ${policy.spec.firewall?.rules.length} firewall rules, ${policy.spec.rateLimits?.length} rate limit)`);
      await lab.applyPolicies([policy]);
      await waitForRule(lab, '/admin/x', 403);
      out();
      const probes: Probe[] = [
        { what: 'a normal read', path: '/products/42' },
        { what: 'the admin area', path: '/admin/users' },
        { what: 'a client on the block list', path: '/products/42', from: '127.0.0.66' },
        { what: 'reading an order', path: '/orders/7' },
        { what: 'deleting an order', method: 'DELETE', path: '/orders/7' },
        { what: 'a request carrying x-debug', path: '/products/42', headers: { 'x-debug': '1' } },
        { what: 'the beta area (shadow rule: logged, not enforced)', path: '/beta/new' },
      ];
      out('HTTP through Envoy (ext_authz → middlebox → app):');
      for (const p of probes) out(await describe(lab, p));
      out();
      out('Rate limit through Envoy (search-per-client: 5 a minute per client, strict, shared by both replicas):');
      for (let i = 1; i <= 7; i++) {
        const r = await httpRequest({ port: lab.httpPort, path: '/search' });
        const left = r.headers['ratelimit-remaining'];
        let why = `allowed, ratelimit-remaining ${left}`;
        if (r.status !== 200) {
          const body = jsonBody<{ policy?: string; rule?: string }>(r, 'GET /search');
          why = `denied by ${body.policy}/${body.rule}, retry-after ${r.headers['retry-after']} s`;
        }
        out(`  search #${i} → ${r.status} ${why}`);
      }
      out();
      out('TCP through Envoy (network ext_authz → middlebox → echo server):');
      for (const from of ['127.0.0.1', '127.0.0.66']) {
        const r = await tcpProbe({ port: lab.tcpPort!, localAddress: from });
        // Only a close by Envoy is a refusal (by the one rule that denies TCP here); a timeout or an error is said as it is.
        const refused = r.detail === 'closed by the proxy' ? `refused (${r.detail}) by shop/blocked-client` : `not let through: ${r.detail}`;
        out(`  connection from ${from.padEnd(11)} → ${r.echoed ? 'echoed: let through' : refused}`);
      }
      out();
      await showNat(lab, backends, out);
      out();
      out('Changing the policy live: removing rule no-admin (both replicas follow the etcd watch) ...');
      const started = Date.now();
      await lab.applyPolicies([{ ...policy, spec: { ...policy.spec, firewall: { ...policy.spec.firewall!, rules: policy.spec.firewall!.rules.filter((r) => r.name !== 'no-admin') } } }]);
      await waitForRule(lab, '/admin/x', 200);
      out(`  in force on every replica after ${Date.now() - started} ms`);
      out(await describe(lab, { what: 'the admin area again', path: '/admin/users' }));
      out();
      out(`Logs: ${logDir ? path.resolve(logDir) : '(pass --logs DIR to keep them)'}`);
      return 0;
    } finally {
      out('Stopping everything ...');
      await lab.stop();
      for (const b of backends) await b.close();
    }
  },
};

/** NAT needs the backends' ports, known only now: the policy is made here and shown. */
async function showNat(lab: SidecarLab, backends: Upstream[], out: (s?: string) => void): Promise<void> {
  const pool = backends.map((b) => `127.0.0.1:${b.port}`);
  const text = `apiVersion: middlebox.io/v1alpha1
kind: Policy
metadata: { name: egress }
spec:
  nat:
    - { name: orders, match: { hosts: ["orders.internal"] }, to: ${JSON.stringify(pool)}, affinity: sourceIp }
`;
  const { documents } = parsePolicies(text, 'demo');
  await lab.applyPolicies(documents);
  out('NAT through Envoy\'s outbound listener (ext_proc → middlebox picks the backend → ORIGINAL_DST):');
  out(text.trimEnd().split('\n').map((l) => `    ${l}`).join('\n'));
  await waitFor(async () => (await httpRequest({ port: lab.outboundPort!, headers: { host: 'orders.internal' } })).status === 200, {
    timeoutMs: 5000,
    what: 'the NAT policy to be in force',
  });
  for (const from of ['127.0.0.11', '127.0.0.12', '127.0.0.13']) {
    const landed: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await httpRequest({ port: lab.outboundPort!, path: '/orders', headers: { host: 'orders.internal' }, localAddress: from });
      landed.push(jsonBody<{ upstream: string }>(r, `GET http://orders.internal/orders from ${from}`).upstream);
    }
    out(`  GET http://orders.internal/orders from ${from} ×3 → ${landed.join(', ')}   (sticky: the flow is in the NAT table in etcd)`);
  }
  const r = await httpRequest({ port: lab.outboundPort!, path: '/old?redirect', headers: { host: 'orders.internal' } });
  out(`  a backend redirects to itself → the client sees location: ${r.headers.location}   (translated back; x-middlebox-nat: ${r.headers['x-middlebox-nat']})`);
  const client = connectEtcd({ endpoints: [lab.etcd.endpoint] });
  try {
    const { flows } = await listFlows(client, lab.prefix);
    out(`  middlebox nat list: ${flows.map((f) => `${f.flow} → ${f.backend}`).join(', ')}`);
  } finally {
    client.close();
  }
}

function loadPolicy(): PolicyDocument {
  const { documents, errors } = parsePolicyFile(DEMO_POLICY);
  if (errors.length || documents.length !== 1) {
    throw new MiddleboxError('policy_invalid', `demo policy ${DEMO_POLICY} is invalid`, errors.map(formatPolicyError));
  }
  return documents[0]!;
}

/** Envoy round-robins over the replicas: a change is in force once several requests in a row agree. */
async function waitForRule(lab: SidecarLab, reqPath: string, status: number): Promise<void> {
  const deadline = Date.now() + 5000;
  let agreeing = 0;
  while (agreeing < 4) {
    if (Date.now() > deadline) throw new Error(`the policy change did not reach every replica within 5 s`);
    const r = await httpRequest({ port: lab.httpPort, path: reqPath });
    agreeing = r.status === status ? agreeing + 1 : 0;
  }
}

async function describe(lab: SidecarLab, p: Probe): Promise<string> {
  const r = await httpRequest({ port: lab.httpPort, method: p.method, path: p.path, headers: p.headers, localAddress: p.from });
  const request = `${(p.method ?? 'GET').padEnd(6)} ${p.path.padEnd(14)} from ${(p.from ?? '127.0.0.1').padEnd(11)}`;
  let why: string;
  if (r.status === 200) {
    const echo = jsonBody<{ headers: Record<string, string> }>(r, `${p.method ?? 'GET'} ${p.path}`);
    const shadow = echo.headers['x-middlebox-shadow-deny'];
    why = shadow ? `allowed; shadow rule ${shadow} would have denied it` : 'allowed';
  } else {
    const body = jsonBody<{ policy?: string; rule?: string; reason?: string }>(r, `${p.method ?? 'GET'} ${p.path}`);
    why = `denied by ${body.policy}/${body.rule} (${body.reason})`;
  }
  return `  ${request} → ${r.status} ${why}   (${p.what})`;
}

/**
 * The JSON body of an answer from the app or a middlebox denial; anything else (Envoy's own 503, an
 * empty 403 when a replica did not answer in time) is said as it came.
 */
function jsonBody<T>(r: { status: number; body: string }, request: string): T {
  try {
    return JSON.parse(r.body) as T;
  } catch {
    throw new Error(`${request}: Envoy answered ${r.status} with ${r.body ? `a body that is not the app's or the middlebox's JSON: ${JSON.stringify(r.body.slice(0, 200))}` : 'no body'}`);
  }
}
