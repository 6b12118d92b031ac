// DOM helpers for the console. Every string from the server reaches the page
// through text nodes (textContent, createTextNode), never innerHTML, so a
// message, skeleton or lead can never become markup.

/**
 * Build an element: el('button', {class: 'x', dataset: {testid: 'y'}, onclick: f}, 'text', child).
 * Children may be strings (text nodes), nodes, arrays, null or undefined (skipped).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'testid') node.dataset.testid = value;
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (key === 'value' || key === 'checked' || key === 'disabled' || key === 'hidden') {
      node[key] = value;
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace a node's children (a fresh render of one region). */
export function mount(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);

// Template variables (%var% canonical, {{var}} accepted) and &&instruction&& blocks.
const TEMPLATE = /(%[A-Za-z_][\w.-]*%|\{\{\s*[A-Za-z_][\w.-]*\s*\}\}|&&[\s\S]+?&&)/g;

/**
 * Text with template parts wrapped in <mark>: variables as .var, instruction
 * blocks as .instr. Returns a DocumentFragment built from text nodes only.
 */
export function highlight(text) {
  const fragment = document.createDocumentFragment();
  const source = text == null ? '' : String(text);
  let last = 0;
  for (const match of source.matchAll(TEMPLATE)) {
    if (match.index > last) fragment.append(source.slice(last, match.index));
    const part = match[0];
    const isInstruction = part.startsWith('&&');
    fragment.append(
      el('mark', {
        class: isInstruction ? 'instr' : 'var',
        testid: isInstruction ? 'template-instruction' : 'template-var',
        title: isInstruction ? 'personalised block (written per lead)' : 'template variable',
      }, part),
    );
    last = match.index + part.length;
  }
  if (last < source.length) fragment.append(source.slice(last));
  return fragment;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : '';
}

export function formatTime(stamp) {
  if (!stamp) return '';
  const date = new Date(stamp);
  if (Number.isNaN(date.getTime())) return String(stamp);
  return date.toLocaleString(undefined, {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

/** Time of day with milliseconds (audit rows are often within one second); full stamp on hover. */
export function formatClock(stamp) {
  const date = new Date(stamp);
  if (!stamp || Number.isNaN(date.getTime())) return String(stamp || '');
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** Pretty JSON for <pre> blocks (text, never markup). */
export function pretty(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

/** Keep a scroll container pinned to the bottom only if the reader was already there. */
export function stickToBottom(container, update) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 48;
  update();
  if (atBottom) container.scrollTop = container.scrollHeight;
}
