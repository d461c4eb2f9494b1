// Policy files: YAML or JSON (JSON goes through the same YAML 1.2 parser), several documents per
// file. Every problem comes back located; nothing throws for bad input.
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { isScalar, LineCounter, parseAllDocuments } from 'yaml';
import { DEFAULT_POLICY_LIMITS, storedTooLarge, textOverLimit, textTooLarge, type PolicyLimits } from './limits';
import type { PolicyDocument, PolicyError } from './types';
import { policyNameNode, validatePolicyDocument } from './validate';

export interface ParsedPolicies {
  /** Valid documents only, normalised, in file order. */
  documents: PolicyDocument[];
  errors: PolicyError[];
}

/**
 * `file` names the source in errors. Empty documents (nothing, or only comments) are skipped; a
 * text with no other document is an error. A text over `limits.maxPolicyBytes` is refused whole,
 * unparsed; so is each policy whose stored form (JSON) would be, and each rule list longer than
 * `limits.maxRulesPerPolicy`.
 */
export function parsePolicies(text: string, file: string, limits: PolicyLimits = DEFAULT_POLICY_LIMITS): ParsedPolicies {
  // UTF-8 takes at least one byte per UTF-16 unit: a text longer than the limit is over it.
  if (text.length > limits.maxPolicyBytes || Buffer.byteLength(text) > limits.maxPolicyBytes) {
    return { documents: [], errors: [{ file, line: 1, column: 1, message: textTooLarge(Buffer.byteLength(text), limits) }] };
  }
  const lines = new LineCounter();
  const documents: PolicyDocument[] = [];
  const errors: PolicyError[] = [];
  const seenNames = new Set<string>();
  for (const document of parseAllDocuments(text, { lineCounter: lines, prettyErrors: false })) {
    // Warnings too (e.g. an unknown !tag): a policy that means something other than it says is worse than none.
    const problems = [...document.errors, ...document.warnings];
    for (const problem of problems) {
      const { line, col } = lines.linePos(problem.pos[0]);
      errors.push({ file, line, column: col, message: `invalid YAML: ${problem.message}` });
    }
    const root = document.contents;
    if (problems.length > 0 || root === null || (isScalar(root) && root.value === null)) continue;

    const policy = validatePolicyDocument({ file, lines, document, errors, limits }, root);
    const nameNode = policyNameNode(root);
    if (isScalar(nameNode) && typeof nameNode.value === 'string') {
      const name = nameNode.value;
      if (seenNames.has(name)) {
        const { line, col } = lines.linePos(nameNode.range?.[0] ?? 0);
        const message = `policy "${name}" is defined twice in this file`;
        errors.push({ file, line, column: col, path: 'metadata.name', message });
        continue;
      }
      seenNames.add(name);
    }
    if (policy === undefined) continue;
    // What etcd would hold: aliases expanded and defaults filled in, it can outgrow its text.
    const stored = Buffer.byteLength(JSON.stringify(policy));
    if (stored > limits.maxPolicyBytes) {
      const { line, col } = lines.linePos(root.range?.[0] ?? 0);
      errors.push({ file, line, column: col, message: storedTooLarge(policy.metadata.name, stored, limits) });
      continue;
    }
    documents.push(policy);
  }
  // A file that says nothing is a mistake (a wrong path, a truncated pipe), not zero policies to apply.
  if (documents.length === 0 && errors.length === 0) errors.push({ file, line: 1, column: 1, message: 'no policy in it: it is empty or holds only comments or null documents' });
  // Validation reports by field; readers of the output expect file order.
  errors.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
  return { documents, errors };
}

/**
 * Reads and parses a policy file; an unreadable file is reported as an error, not thrown. A file
 * over `limits.maxPolicyBytes` is refused without being read.
 */
export function parsePolicyFile(path: string, limits: PolicyLimits = DEFAULT_POLICY_LIMITS): ParsedPolicies {
  let text: string | undefined;
  try {
    const stat = statSync(path);
    if (stat.isFile() && stat.size > limits.maxPolicyBytes) {
      return { documents: [], errors: [{ file: path, line: 1, column: 1, message: textTooLarge(stat.size, limits) }] };
    }
    // Not a regular file (a pipe, a device): read no more than the bound allows.
    const fd = openSync(path, 'r');
    try {
      text = readAtMost(fd, limits.maxPolicyBytes);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    return { documents: [], errors: [{ file: path, message: `cannot read the file: ${readProblem(e)}` }] };
  }
  return text === undefined ? tooLarge(path, limits) : parsePolicies(text, path, limits);
}

/** Policies from standard input, read no further than the bound allows. */
export function parsePolicyStdin(limits: PolicyLimits = DEFAULT_POLICY_LIMITS): ParsedPolicies {
  const text = readAtMost(0, limits.maxPolicyBytes);
  return text === undefined ? tooLarge('<stdin>', limits) : parsePolicies(text, '<stdin>', limits);
}

function tooLarge(file: string, limits: PolicyLimits): ParsedPolicies {
  return { documents: [], errors: [{ file, line: 1, column: 1, message: textOverLimit(limits) }] };
}

/** The text at `fd` if it is at most `max` bytes; undefined once it is past them (the rest is not read). */
function readAtMost(fd: number, max: number): string | undefined {
  const chunks: Buffer[] = [];
  let total = 0;
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      // A non-blocking standard input with nothing yet: wait a little and read again.
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
      continue;
    }
    if (n === 0) return Buffer.concat(chunks, total).toString('utf8');
    total += n;
    if (total > max) return undefined;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
}

/** "file:line:column: path: message", the form editors and CI annotate from. */
export function formatPolicyError(error: PolicyError): string {
  let where = error.file;
  if (error.line !== undefined) where += `:${error.line}`;
  if (error.line !== undefined && error.column !== undefined) where += `:${error.column}`;
  const what = error.path === undefined ? error.message : `${error.path}: ${error.message}`;
  return `${where}: ${what}`;
}

function readProblem(e: unknown): string {
  switch ((e as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'no such file';
    case 'EISDIR':
      return 'it is a directory';
    case 'EACCES':
      return 'permission denied';
    default:
      return (e as Error).message;
  }
}
