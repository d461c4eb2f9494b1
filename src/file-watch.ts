// Notices when files are replaced, for certificates that rotate under a running process.
import fs from 'node:fs';

/**
 * Polls the files' identity (device, inode, size, modification and change times) every
 * `intervalMs`, and calls `onChange` after any of them changed. Polling rather than fs.watch: a
 * Kubernetes Secret volume swaps a symlink to a new directory, which a watch on the old file misses.
 * The timer does not keep the process alive.
 */
export function watchFiles(files: readonly string[], intervalMs: number, onChange: () => void): { stop(): void } {
  const signature = () =>
    files
      .map((f) => {
        try {
          const s = fs.statSync(f);
          return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
        } catch (e) {
          return `missing:${(e as NodeJS.ErrnoException).code}`;
        }
      })
      .join('|');
  let seen = signature();
  const timer = setInterval(() => {
    const now = signature();
    if (now === seen) return;
    seen = now;
    onChange();
  }, intervalMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
