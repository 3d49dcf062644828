// Display helpers: exact USD strings, integers, dates (UTC, as the gateway counts days), and a
// tiny DOM builder so no view writes HTML strings (nothing user-supplied is ever parsed as HTML).

/// `el('td', {class: 'num'}, '12')`: an element with attributes (`on*` functions become event
/// listeners, `false`/`null` attributes are left out) and children (strings become text).
export function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'hidden' || k === 'disabled' || k === 'checked' || k === 'selected') node[k] = Boolean(v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/// `$1.5` from an exact USD decimal string (`"1.500000"`): trailing zeros dropped, never rounded.
export function usd(text) {
  if (text === null || text === undefined) return '—';
  let s = String(text);
  if (s.includes('.')) s = s.replace(/0+$/, '').replace(/\.$/, '');
  return s.startsWith('-') ? `-$${s.slice(1)}` : `$${s}`;
}

/// A count with thousands separators.
export function int(n) {
  return Number(n ?? 0).toLocaleString('en-US');
}

/// `YYYY-MM-DD` of a Date in UTC.
export function day(date) {
  return date.toISOString().slice(0, 10);
}

/// `YYYY-MM-DD` plus `n` days.
export function addDays(ymd, n) {
  const d = new Date(`${ymd}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return day(d);
}

/// The current UTC month up to today: [first day, today] (both inclusive).
export function thisMonth() {
  const today = day(new Date());
  return [`${today.slice(0, 8)}01`, today];
}

/// `2026-11-30 17:04:05 UTC` from Unix milliseconds.
export function timestamp(ms) {
  return `${new Date(ms).toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

/// A `YYYY-MM-DD` date from Unix seconds (UTC), or '' for none.
export function dateOf(secs) {
  return secs ? day(new Date(secs * 1000)) : '';
}
