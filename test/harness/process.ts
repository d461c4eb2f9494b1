// Processes as tests see them from outside.
import fs from 'node:fs';

/**
 * Whether a process with this pid runs: it exists (signal 0 checks without sending anything) and
 * is not a zombie, dead but not yet reaped (where pid 1 of a container does not reap orphans).
 */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // The state follows the parenthesised command name, which may itself contain spaces.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true; // no /proc here: existing is all we know
  }
}
