// One structured line per decision worth reading: every denial and every shadow denial at info,
// plain allows at debug (they are the bulk of the traffic).
import type { RequestAttributes, Verdict } from '../middlebox/types';
import type { Logger } from './logger';

export function logDecision(log: Logger, req: RequestAttributes, decisionId: string, verdict: Verdict): void {
  if (!verdict.allow || verdict.shadowDenials) {
    log.info(
      {
        decision: decisionId,
        protocol: req.protocol,
        source: req.source.ip?.text,
        method: req.method,
        host: req.host,
        path: req.path,
        allow: verdict.allow,
        status: verdict.status,
        middlebox: verdict.middlebox,
        reason: verdict.reason,
        policy: verdict.policy,
        rule: verdict.rule,
        shadow: verdict.shadowDenials,
      },
      verdict.allow ? 'allowed (shadow deny)' : 'denied',
    );
  } else if (log.isLevelEnabled('debug')) {
    log.debug({ decision: decisionId, source: req.source.ip?.text, path: req.path, reason: verdict.reason, nat: verdict.nat }, 'allowed');
  }
}
