// The key holder's view: their plan and this month's standing, usage over a date range (chart
// and token table, from /v1/dashboard/billing/usage), their recent requests (paged, from
// /v1/dashboard/requests), the model catalogue (/v1/models) and regenerating their key
// (/v1/dashboard/key/rotate). Every number shown is one the API returned.

import { confirmAction, updateSecret } from './app.js';
import { costChart } from './chart.js';
import { addDays, el, int, thisMonth, timestamp, usd } from './format.js';
import { query } from './api.js';

const PAGE = 10;

export async function showHolder(api, view) {
  // The first call checks the key: a refusal is the sign-in's error.
  const subscription = await api.get('/v1/dashboard/billing/subscription');
  const plan = el('section', { 'aria-labelledby': 'plan-title' });
  const usage = el('section', { 'aria-labelledby': 'usage-title' });
  const requests = el('section', { 'aria-labelledby': 'requests-title' });
  const models = el('section', { 'aria-labelledby': 'models-title' });
  const regenerate = el('section', { 'aria-labelledby': 'regen-title' });
  view.replaceChildren(plan, usage, requests, models, regenerate);
  const monthUsage = await api.get('/v1/dashboard/billing/usage');
  renderPlan(plan, subscription, monthUsage);
  renderUsage(api, usage);
  renderRequests(api, requests);
  renderModels(api, models);
  renderRegenerate(api, regenerate);
  return `Key ${subscription.key_prefix} · tier ${subscription.plan.id}`;
}

function stat(label, value, testid) {
  return el('div', {}, el('dt', {}, label), el('dd', { 'data-testid': testid }, value));
}

function renderPlan(section, s, u) {
  const bar = el('progress', {
    id: 'quota-bar', max: Math.max(u.monthly_limit, 1), value: Math.min(u.monthly_requests, u.monthly_limit),
  });
  section.replaceChildren(
    el('h2', { id: 'plan-title', tabindex: '-1' }, 'Your key'),
    el('dl', { class: 'stats' },
      stat('Key', s.key_prefix, 'key-prefix'),
      stat('Tier', s.plan.id, 'tier'),
      stat('Requests per minute', int(s.rpm_limit), 'rpm'),
      stat('Requests this month', `${int(u.monthly_requests)} of ${int(u.monthly_limit)}`, 'monthly-requests'),
      stat('Balance', s.balance_usd === null ? 'No prepaid balance' : usd(s.balance_usd), 'balance'),
      stat('Monthly budget', s.monthly_budget_usd === null ? 'No budget' : usd(s.monthly_budget_usd), 'budget'),
      stat('Spend this month', usd(s.spend_month_usd), 'spend-month'),
      stat('Expires', s.access_until ? timestamp(s.access_until * 1000) : 'Never', 'expires')),
    el('label', { for: 'quota-bar' }, `Monthly quota used: ${u.usage_percent}% (${int(u.remaining)} left)`),
    bar,
  );
}

function renderUsage(api, section) {
  const [first, last] = thisMonth();
  const start = el('input', { type: 'date', id: 'usage-start', value: first, required: true });
  const end = el('input', { type: 'date', id: 'usage-end', value: last, required: true });
  const error = el('p', { class: 'error', role: 'alert' });
  const out = el('div', { 'aria-live': 'polite' });
  const load = async () => {
    error.textContent = '';
    try {
      const u = await api.get(`/v1/dashboard/billing/usage${query({
        start_date: start.value, end_date: addDays(end.value, 1),
      })}`);
      out.replaceChildren(...usageReport(u));
    } catch (err) {
      error.textContent = err.message;
    }
  };
  const form = el('form', {
    class: 'row',
    onsubmit: (e) => { e.preventDefault(); load(); },
  },
  el('div', {}, el('label', { for: 'usage-start' }, 'First day'), start),
  el('div', {}, el('label', { for: 'usage-end' }, 'Last day'), end),
  el('div', {}, el('button', { type: 'submit' }, 'Show usage')));
  section.replaceChildren(el('h2', { id: 'usage-title' }, 'Usage'), form, error, out);
  load();
}

/// The chart and the token table of a usage report (the key holder's or all keys').
export function usageReport(u) {
  const rows = u.daily_costs.flatMap((d) => d.line_items.map((i) => el('tr', {},
    el('td', {}, d.date), el('td', {}, i.name), el('td', { class: 'num' }, int(i.requests)),
    el('td', { class: 'num' }, int(i.prompt_tokens)), el('td', { class: 'num' }, int(i.completion_tokens)),
    el('td', { class: 'num', 'data-testid': 'line-cost' }, usd(i.cost_usd)))));
  const totals = el('dl', { class: 'stats' },
    stat('Requests', int(u.total_requests), 'total-requests'),
    stat('Prompt tokens', int(u.total_prompt_tokens), 'total-prompt'),
    stat('Cached prompt tokens', int(u.total_cached_prompt_tokens), 'total-cached'),
    stat('Completion tokens', int(u.total_completion_tokens), 'total-completion'),
    stat('Reasoning tokens', int(u.total_reasoning_tokens), 'total-reasoning'),
    stat('Cost', usd(u.total_usage_usd ?? u.total_cost_usd), 'total-cost'));
  const table = el('div', { class: 'table-wrap' }, el('table', { 'data-testid': 'usage-table' },
    el('caption', { class: 'hint' }, `Per day and model, ${u.start_date} to ${u.end_date} (exclusive)`),
    el('thead', {}, el('tr', {}, ['Day', 'Model', 'Requests', 'Prompt', 'Completion', 'Cost']
      .map((h, i) => el('th', { scope: 'col', class: i > 1 ? 'num' : null }, h)))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: 6 }, 'No requests in this range.')))));
  return [costChart(u.daily_costs, `Cost per day by model, ${u.start_date} to ${u.end_date}`), totals, table];
}

function renderRequests(api, section) {
  const body = el('tbody');
  const error = el('p', { class: 'error', role: 'alert' });
  const cursors = [''];
  let page = 0;
  let next = null;
  const newer = el('button', { type: 'button', class: 'secondary', id: 'requests-newer', disabled: true }, 'Newer');
  const older = el('button', { type: 'button', class: 'secondary', id: 'requests-older', disabled: true }, 'Older');
  const status = el('p', { class: 'hint', 'aria-live': 'polite', 'data-testid': 'requests-page' });
  const load = async () => {
    error.textContent = '';
    try {
      const r = await api.get(`/v1/dashboard/requests${query({ limit: PAGE, cursor: cursors[page] })}`);
      next = r.next_cursor;
      body.replaceChildren(...(r.data.length ? r.data.map(requestRow)
        : [el('tr', {}, el('td', { colspan: 8 }, 'No requests yet.'))]));
      newer.disabled = page === 0;
      older.disabled = !r.has_more;
      status.textContent = `Page ${page + 1}`;
    } catch (err) {
      error.textContent = err.message;
    }
  };
  newer.addEventListener('click', () => { if (page > 0) { page -= 1; load(); } });
  older.addEventListener('click', () => {
    if (!next) return;
    cursors[page + 1] = next;
    page += 1;
    load();
  });
  section.replaceChildren(
    el('h2', { id: 'requests-title' }, 'Recent requests'),
    el('div', { class: 'table-wrap' }, el('table', { 'data-testid': 'requests-table' },
      el('thead', {}, el('tr', {}, ['Time', 'Model', 'Prompt', 'Cached', 'Completion', 'Reasoning', 'Cost', 'Status']
        .map((h, i) => el('th', { scope: 'col', class: i > 1 && i < 7 ? 'num' : null }, h)))),
      body)),
    el('div', { class: 'row' }, newer, older, status), error);
  load();
}

function requestRow(r) {
  const model = r.requested_model && r.requested_model !== r.model
    ? `${r.model} (asked: ${r.requested_model})` : r.model;
  return el('tr', { 'data-request-id': r.id },
    el('td', {}, timestamp(r.created_at_ms)), el('td', {}, model),
    el('td', { class: 'num' }, int(r.prompt_tokens)), el('td', { class: 'num' }, int(r.cached_prompt_tokens)),
    el('td', { class: 'num' }, int(r.completion_tokens)), el('td', { class: 'num' }, int(r.reasoning_tokens)),
    el('td', { class: 'num' }, usd(r.cost_usd)),
    el('td', {}, r.status, r.estimated ? [' ', el('span', { class: 'tag warn', title: 'The upstream reported no usage; the gateway estimated it' }, 'estimated')] : null));
}

async function renderModels(api, section) {
  section.replaceChildren(el('h2', { id: 'models-title' }, 'Models'));
  try {
    const list = await api.get('/v1/models');
    const rows = list.data.map((m) => el('tr', { 'data-model': m.id },
      el('td', {}, m.id, m.alias_of ? [' ', el('span', { class: 'tag' }, `alias of ${m.alias_of}`)] : null),
      el('td', { class: 'num' }, usd(m.pricing.input)), el('td', { class: 'num' }, usd(m.pricing.cached_input)),
      el('td', { class: 'num' }, usd(m.pricing.output)), el('td', { class: 'num' }, int(m.context_length)),
      el('td', { class: 'num' }, int(m.max_output_tokens))));
    section.append(el('div', { class: 'table-wrap' }, el('table', { 'data-testid': 'models-table' },
      el('caption', { class: 'hint' }, 'Prices in USD per 1M tokens'),
      el('thead', {}, el('tr', {}, ['Model', 'Input', 'Cached input', 'Output', 'Context', 'Max output']
        .map((h, i) => el('th', { scope: 'col', class: i ? 'num' : null }, h)))),
      el('tbody', {}, rows))));
  } catch (err) {
    section.append(el('p', { class: 'error', role: 'alert' }, err.message));
  }
}

function renderRegenerate(api, section) {
  const error = el('p', { class: 'error', role: 'alert' });
  const result = el('div', { 'aria-live': 'polite' });
  const button = el('button', { type: 'button', class: 'danger', id: 'regenerate' }, 'Regenerate key');
  button.addEventListener('click', async () => {
    error.textContent = '';
    const sure = await confirmAction('Regenerate your key?',
      'Your current key stops working at once. The new key is shown once: copy it before you leave this page.',
      'Regenerate');
    if (!sure) return;
    try {
      const rotated = await api.post('/v1/dashboard/key/rotate');
      // The old secret is dead: this tab goes on with the new one.
      api.useSecret(rotated.secret);
      updateSecret(rotated.secret);
      document.querySelector('[data-testid=key-prefix]').textContent = rotated.key_prefix;
      document.getElementById('who').textContent = `Key ${rotated.key_prefix} · tier ${rotated.tier}`;
      result.replaceChildren(...secretBox(rotated.secret, 'Your new key (shown once)'));
    } catch (err) {
      error.textContent = err.message;
    }
  });
  section.replaceChildren(el('h2', { id: 'regen-title' }, 'Regenerate key'),
    el('p', { class: 'hint' }, 'If your key leaked, regenerate it: the old one is refused at once.'),
    button, error, result);
}

let secretBoxes = 0;

/// A read-only field with a whole secret and a copy button.
export function secretBox(secret, label) {
  secretBoxes += 1;
  const id = `secret-${secretBoxes}`;
  const input = el('input', { id, type: 'text', readonly: true, value: secret, 'data-testid': 'new-secret' });
  const notice = el('span', { class: 'notice', 'aria-live': 'polite' });
  const copy = el('button', { type: 'button', class: 'secondary' }, 'Copy');
  copy.addEventListener('click', async () => {
    input.select();
    try {
      await navigator.clipboard.writeText(secret);
      notice.textContent = 'Copied.';
    } catch {
      notice.textContent = 'Select the key and copy it by hand.';
    }
  });
  return [el('label', { for: id }, label), el('div', { class: 'secret-box' }, input, copy), notice];
}
