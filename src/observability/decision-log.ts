// One structured line per decision, as configured: which decisions (`denied` by default, `all`, or
// `off`), a sampling rate, and headers that are never written (credentials). The decision id in the
// line is the one Envoy gets in the `x-middlebox-decision` header and in the filter's dynamic
// metadata (`decision_id`), so an access-log line and a decision line can be joined.
import { hostPort } from '../middlebox/ip';
import type { RequestAttributes, Verdict } from '../middlebox/types';
import type { Logger } from './logger';

export type DecisionLogMode = 'denied' | 'all' | 'off';

export interface DecisionLogSettings {
  /** `denied`: denials and shadow denials; `all`: every decision; `off`: none. */
  mode: DecisionLogMode;
  /** Share of the chosen decisions that get a line, 0 to 1. */
  sample: number;
  /** Header names (lower case) whose values are never logged. */
  redact: ReadonlySet<string>;
}

/** Credentials in the headers Envoy sends: replaced by REDACTED whatever the settings add. */
export const ALWAYS_REDACTED = ['authorization', 'proxy-authorization', 'cookie', 'set-cookie', 'x-api-key'];
export const REDACTED = '[redacted]';

/** Headers in one line at most, and bytes of one header's value; the rest is cut and counted. */
const MAX_LOGGED_HEADERS = 32;
const MAX_LOGGED_VALUE_CHARS = 256;
/** A path or host longer than this is cut (a client chooses them: they would make every line long). */
const MAX_LOGGED_TARGET_CHARS = 1024;

/** `text` cut at `max` characters, saying how long it was. */
function cut(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}… (${text.length} characters)` : text;
}

export const DEFAULT_DECISION_LOG: DecisionLogSettings = { mode: 'denied', sample: 1, redact: new Set(ALWAYS_REDACTED) };

/**
 * Settings from the flag values; throws a message for a bad value, naming it as `names` says (the
 * flag or environment variable it came from).
 */
export function decisionLogSettings(mode = 'denied', sample = '1', redact = '', names = { mode: 'decision log', sample: 'decision log sample' }): DecisionLogSettings {
  if (mode !== 'denied' && mode !== 'all' && mode !== 'off') throw new Error(`${names.mode} must be denied, all or off, got ${JSON.stringify(mode)}`);
  const rate = Number(sample);
  if (!/^(0|1|0?\.\d+|1\.0*)$/.test(sample)) throw new Error(`${names.sample} must be a number from 0 to 1, got ${JSON.stringify(sample)}`);
  const extra = redact.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean);
  return { mode, sample: rate, redact: new Set([...ALWAYS_REDACTED, ...extra]) };
}

export class DecisionLog {
  /** Lines written and decisions passed over by the sampler (for tests and metrics). */
  readonly stats = { written: 0, sampledOut: 0 };

  constructor(
    private readonly logger: Logger,
    readonly settings: DecisionLogSettings = DEFAULT_DECISION_LOG,
    private readonly random: () => number = Math.random,
  ) {}

  /** Logs one decision if the settings choose it. `latencyMs`: from the request's arrival. */
  record(req: RequestAttributes, decisionId: string, verdict: Verdict, latencyMs: number): void {
    const notable = !verdict.allow || verdict.shadowDenials !== undefined;
    if (!this.chosen(notable)) return;
    const { sample } = this.settings;
    this.logger.info(
      {
        decision: decisionId,
        protocol: req.protocol,
        source: req.source.ip?.text,
        // Where a connection went: an outbound one's source is always the pod itself.
        destination: req.destination.ip && hostPort(req.destination.ip.text, req.destination.port),
        method: req.method,
        host: req.host === undefined ? undefined : cut(req.host, MAX_LOGGED_TARGET_CHARS),
        path: req.path === undefined ? undefined : cut(req.path, MAX_LOGGED_TARGET_CHARS),
        headers: this.headers(req.headers),
        allow: verdict.allow,
        status: verdict.status,
        middlebox: verdict.middlebox,
        reason: verdict.reason,
        policy: verdict.policy,
        rule: verdict.rule,
        shadow: verdict.shadowDenials,
        nat: verdict.nat,
        latency_ms: Math.round(latencyMs * 1000) / 1000,
        ...(sample < 1 ? { sample } : {}),
      },
      verdict.allow ? (notable ? 'allowed (shadow deny)' : 'allowed') : 'denied',
    );
  }

  /**
   * Logs a request refused before it could be read as one (no attributes, a source that is not an
   * address, too many header bytes): a denial like any other, with `detail` in place of the
   * request's fields, which are unknown or not to be trusted.
   */
  refused(decisionId: string, verdict: Verdict, detail: string | undefined, latencyMs: number): void {
    if (!this.chosen(true)) return;
    const { sample } = this.settings;
    this.logger.info(
      {
        decision: decisionId,
        allow: false,
        status: verdict.status,
        reason: verdict.reason,
        detail: detail === undefined ? undefined : cut(detail, MAX_LOGGED_TARGET_CHARS),
        latency_ms: Math.round(latencyMs * 1000) / 1000,
        ...(sample < 1 ? { sample } : {}),
      },
      'denied',
    );
  }

  /** Whether the settings keep this decision's line (`notable`: a denial or shadow denial); counts it. */
  private chosen(notable: boolean): boolean {
    const { mode, sample } = this.settings;
    if (mode === 'off' || (mode === 'denied' && !notable)) return false;
    if (sample < 1 && this.random() >= sample) {
      this.stats.sampledOut += 1;
      return false;
    }
    this.stats.written += 1;
    return true;
  }

  private headers(headers: ReadonlyMap<string, string>): Record<string, string> {
    const out: Record<string, string> = {};
    let n = 0;
    for (const [name, value] of headers) {
      if (name.startsWith(':')) continue; // method, path, authority: fields of their own
      if (n++ === MAX_LOGGED_HEADERS) {
        out['…'] = `${headers.size} headers in all`;
        break;
      }
      const key = cut(name, MAX_LOGGED_VALUE_CHARS);
      if (this.settings.redact.has(name)) out[key] = REDACTED;
      else out[key] = cut(value, MAX_LOGGED_VALUE_CHARS);
    }
    return out;
  }
}
