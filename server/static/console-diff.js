// Side-by-side diffs of two revisions, computed in the browser from the session
// row the console already holds (skeleton_history, draft_history). The history
// view asks the server (GET .../diff) whenever both revisions are events of the
// session; this is for the ones no event names: a draft_history a PATCH wrote whole.
//
// Lines are matched by a longest common subsequence: skeletons and drafts are
// tens of lines, so the O(n*m) table takes microseconds, and an LCS is
// minimal, which a heuristic (difflib's) is not: an unchanged line is never
// shown as removed and added. A removed line facing an added one becomes a
// "change" row, and a second LCS over its words marks what changed inside it.
// Pure functions: no DOM, no state.

/** Past this many table cells a diff falls back to "everything changed" (never on real revisions). */
const MAX_CELLS = 4_000_000;

/** Index pairs [i, j] with a[i] === b[j], in order, of one longest common subsequence. */
export function lcsPairs(a, b) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start += 1;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA -= 1;
    endB -= 1;
  }
  const head = [];
  for (let i = 0; i < start; i += 1) head.push([i, i]);
  const tail = [];
  for (let k = 0; endA + k < a.length; k += 1) tail.push([endA + k, endB + k]);
  const n = endA - start;
  const m = endB - start;
  if (n === 0 || m === 0 || n * m > MAX_CELLS) return head.concat(tail);
  // lengths[i][j]: LCS of a[start+i..endA) and b[start+j..endB), filled from the end
  const width = m + 1;
  const lengths = new Uint32Array((n + 1) * width);
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      lengths[i * width + j] = a[start + i] === b[start + j]
        ? lengths[(i + 1) * width + j + 1] + 1
        : Math.max(lengths[(i + 1) * width + j], lengths[i * width + j + 1]);
    }
  }
  const middle = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[start + i] === b[start + j]) {
      middle.push([start + i, start + j]);
      i += 1;
      j += 1;
    } else if (lengths[(i + 1) * width + j] >= lengths[i * width + j + 1]) {
      i += 1;
    } else {
      j += 1;
    }
  }
  return head.concat(middle, tail);
}

const WORD = /\s+|[\p{L}\p{N}_%{}&]+|[^\s\p{L}\p{N}_%{}&]/gu;

/** Both lines as [{text, changed}] parts: the words outside their LCS are the change. */
export function wordDiff(left, right) {
  const a = left.match(WORD) || [];
  const b = right.match(WORD) || [];
  const pairs = lcsPairs(a, b);
  const keptA = new Set(pairs.map(([i]) => i));
  const keptB = new Set(pairs.map(([, j]) => j));
  return [parts(a, keptA), parts(b, keptB)];
}

function parts(tokens, kept) {
  const out = [];
  tokens.forEach((text, index) => {
    const changed = !kept.has(index);
    const last = out[out.length - 1];
    if (last && last.changed === changed) last.text += text;
    else out.push({ text, changed });
  });
  return out;
}

/**
 * Rows of a side-by-side diff: {kind: 'same'|'change'|'del'|'add', left, right}
 * where a side is {n (1-based line number), text, parts} or null.
 */
export function diffLines(leftLines, rightLines) {
  const rows = [];
  const side = (lines, index) => ({ n: index + 1, text: lines[index], parts: null });
  const gap = (i0, i1, j0, j1) => {
    const paired = Math.min(i1 - i0, j1 - j0);
    for (let k = 0; k < paired; k += 1) {
      const left = side(leftLines, i0 + k);
      const right = side(rightLines, j0 + k);
      [left.parts, right.parts] = wordDiff(left.text, right.text);
      rows.push({ kind: 'change', left, right });
    }
    for (let i = i0 + paired; i < i1; i += 1) rows.push({ kind: 'del', left: side(leftLines, i), right: null });
    for (let j = j0 + paired; j < j1; j += 1) rows.push({ kind: 'add', left: null, right: side(rightLines, j) });
  };
  let i = 0;
  let j = 0;
  for (const [pi, pj] of lcsPairs(leftLines, rightLines)) {
    gap(i, pi, j, pj);
    rows.push({ kind: 'same', left: side(leftLines, pi), right: side(rightLines, pj) });
    i = pi + 1;
    j = pj + 1;
  }
  gap(i, leftLines.length, j, rightLines.length);
  return rows;
}

/**
 * A skeleton as lines a person can compare: one `path: value` line per field
 * (nested fields as `blocks[0].name`), multi-line strings continued on
 * indented lines, in the order the skeleton stores its fields.
 */
export function skeletonLines(value, path = '') {
  if (value === null || value === undefined) return path ? [`${path}: null`] : [];
  if (typeof value === 'string') {
    const [first, ...rest] = value.split('\n');
    return [`${path}: ${first}`, ...rest.map((line) => `    ${line}`)];
  }
  if (Array.isArray(value)) {
    if (!value.length) return [`${path}: []`];
    return value.flatMap((item, index) => skeletonLines(item, `${path}[${index}]`));
  }
  if (typeof value === 'object') {
    const keys = Object.keys(value);
    if (!keys.length) return path ? [`${path}: {}`] : [];
    return keys.flatMap((key) => skeletonLines(value[key], path ? `${path}.${key}` : key));
  }
  return [`${path}: ${String(value)}`];
}

/** A draft as lines: the subject, a blank line, then the body's lines. */
export function draftLines(subject, body) {
  return [`Subject: ${subject ?? ''}`, '', ...String(body ?? '').split('\n')];
}
