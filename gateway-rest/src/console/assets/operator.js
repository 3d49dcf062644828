// The operator's view: every key (search, tier and status filters), creating one (its secret
// shown once), and for a chosen key editing its tier, limits, expiry and budget, topping it up,
// rotating and revoking it; then usage across all keys (cost per day by model, top keys by
// spend). Everything goes through /admin; errors are the Admin API's own words.

import { confirmAction } from './app.js';
import { query } from './api.js';
import { addDays, dateOf, el, int, thisMonth, usd } from './format.js';
import { secretBox, usageReport } from './holder.js';

export async function showOperator(api, view) {
  // The first call checks the token: a refusal is the sign-in's error.
  const listed = await api.get('/admin/keys');
  const state = { keys: listed.data, selected: null };
  const keysSection = el('section', { 'aria-labelledby': 'keys-title' });
  const manage = el('section', { 'aria-labelledby': 'manage-title', hidden: true });
  const create = el('section', { 'aria-labelledby': 'create-title' });
  const usage = el('section', { 'aria-labelledby': 'all-usage-title' });
  view.replaceChildren(keysSection, manage, create, usage);

  const refresh = async () => {
    state.keys = (await api.get('/admin/keys')).data;
    renderKeys();
    if (state.selected) {
      const again = state.keys.find((k) => k.id === state.selected);
      if (again) renderManage(again);
    }
  };

  // Keys list with search and filters.
  const search = el('input', { type: 'search', id: 'key-search', placeholder: 'name, prefix or id' });
  const tierFilter = el('select', { id: 'key-tier' });
  const statusFilter = el('select', { id: 'key-status' },
    ['', 'active', 'revoked', 'expired'].map((s) => el('option', { value: s }, s || 'any')));
  const body = el('tbody');
  const count = el('p', { class: 'hint', 'aria-live': 'polite' });
  function renderKeys() {
    const tiers = [...new Set(state.keys.map((k) => k.tier))].sort();
    const chosen = tierFilter.value;
    tierFilter.replaceChildren(el('option', { value: '' }, 'any'),
      ...tiers.map((t) => el('option', { value: t, selected: t === chosen }, t)));
    const needle = search.value.trim().toLowerCase();
    const shown = state.keys.filter((k) => (!needle || [k.name, k.prefix, k.id].some((f) => f.toLowerCase().includes(needle)))
      && (!tierFilter.value || k.tier === tierFilter.value)
      && (!statusFilter.value || k.status === statusFilter.value));
    body.replaceChildren(...shown.map((k) => el('tr', { 'data-key-id': k.id, 'data-key-name': k.name },
      el('td', {}, k.name || '—'), el('td', {}, k.prefix), el('td', {}, k.tier),
      el('td', { 'data-testid': 'key-status' }, k.status),
      el('td', { class: 'num' }, `${int(k.requests_month)} / ${int(k.monthly_limit)}`),
      el('td', { class: 'num' }, int(k.rpm_limit)),
      el('td', { class: 'num', 'data-testid': 'key-balance' }, k.balance_usd === null ? '—' : usd(k.balance_usd)),
      el('td', { class: 'num' }, usd(k.spend_month_usd)),
      el('td', {}, el('button', {
        type: 'button', class: 'secondary', 'aria-label': `Manage ${k.name || k.prefix}`,
        onclick: () => { state.selected = k.id; renderManage(k); manage.querySelector('h2').focus(); },
      }, 'Manage')))));
    count.textContent = `${shown.length} of ${state.keys.length} keys`;
  }
  for (const control of [search, tierFilter, statusFilter]) control.addEventListener('input', renderKeys);
  keysSection.replaceChildren(
    el('h2', { id: 'keys-title', tabindex: '-1' }, 'Keys'),
    el('div', { class: 'row' },
      el('div', {}, el('label', { for: 'key-search' }, 'Search'), search),
      el('div', {}, el('label', { for: 'key-tier' }, 'Tier'), tierFilter),
      el('div', {}, el('label', { for: 'key-status' }, 'Status'), statusFilter)),
    count,
    el('div', { class: 'table-wrap' }, el('table', { 'data-testid': 'keys-table' },
      el('thead', {}, el('tr', {}, ['Name', 'Prefix', 'Tier', 'Status', 'Requests this month', 'RPM', 'Balance', 'Spend this month', '']
        .map((h) => el('th', { scope: 'col' }, h)))),
      body)));
  renderKeys();

  // One key: edit, top up, rotate, revoke.
  function renderManage(k) {
    const error = el('p', { class: 'error', role: 'alert', id: 'manage-error' });
    const notice = el('p', { class: 'notice', 'aria-live': 'polite', id: 'manage-notice' });
    const result = el('div', { id: 'manage-result' });
    const run = async (what, done) => {
      error.textContent = '';
      notice.textContent = '';
      try {
        const answer = await what();
        // The panel is drawn again from the fresh list: write into the new one.
        await refresh();
        manage.querySelector('#manage-notice').textContent = done;
        return answer;
      } catch (err) {
        error.textContent = err.message;
        return null;
      }
    };
    const field = (id, label, attrs) => el('div', {}, el('label', { for: id }, label), el('input', { id, ...attrs }));
    const edit = el('form', { class: 'card', 'aria-labelledby': 'edit-title' },
      el('h3', { id: 'edit-title' }, 'Edit'),
      el('div', { class: 'row' },
        field('edit-name', 'Name', { type: 'text', value: k.name }),
        field('edit-tier', 'Tier', { type: 'text', value: k.tier }),
        field('edit-rpm', 'Requests per minute (empty: the tier\'s)', { type: 'number', min: 1, value: k.rpm_override ?? '' }),
        field('edit-monthly', 'Requests per month (empty: the tier\'s)', { type: 'number', min: 0, value: k.monthly_requests_override ?? '' }),
        field('edit-expires', 'Expires on (empty: never)', { type: 'date', value: dateOf(k.expires_at) }),
        field('edit-budget', 'Monthly budget, USD (empty: none)', { type: 'text', inputmode: 'decimal', value: k.monthly_budget_usd ?? '' })),
      el('button', { type: 'submit' }, 'Save changes'));
    edit.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = (id) => edit.querySelector(`#${id}`).value.trim();
      const change = {};
      const num = (text) => (text === '' ? null : Number(text));
      if (v('edit-name') !== k.name) change.name = v('edit-name');
      if (v('edit-tier') !== k.tier) change.tier = v('edit-tier');
      if (num(v('edit-rpm')) !== (k.rpm_override ?? null)) change.rpm = num(v('edit-rpm'));
      if (num(v('edit-monthly')) !== (k.monthly_requests_override ?? null)) change.monthly_requests = num(v('edit-monthly'));
      if (v('edit-expires') !== dateOf(k.expires_at)) change.expires_at = v('edit-expires') || null;
      if (v('edit-budget') !== (k.monthly_budget_usd ?? '')) change.monthly_budget_usd = v('edit-budget') || null;
      run(() => api.patch(`/admin/keys/${encodeURIComponent(k.id)}`, change), 'Saved.');
    });
    const amount = el('input', { id: 'topup-amount', type: 'text', inputmode: 'decimal', placeholder: '5.00' });
    const topUp = el('form', { class: 'card row', 'aria-labelledby': 'topup-title' },
      el('h3', { id: 'topup-title' }, 'Top up'),
      el('div', {}, el('label', { for: 'topup-amount' }, 'Amount, USD'), amount),
      el('div', {}, el('button', { type: 'submit' }, 'Add to balance')));
    topUp.addEventListener('submit', (e) => {
      e.preventDefault();
      run(() => api.post(`/admin/keys/${encodeURIComponent(k.id)}/topup`, { amount_usd: amount.value.trim() }),
        'Balance topped up.');
    });
    const rotate = el('button', { type: 'button', class: 'secondary', id: 'rotate-key' }, 'Rotate secret');
    rotate.addEventListener('click', async () => {
      if (!await confirmAction('Rotate this key?', `The current secret of ${k.prefix}... stops working at once.`, 'Rotate')) return;
      const issued = await run(() => api.post(`/admin/keys/${encodeURIComponent(k.id)}/rotate`), 'Rotated.');
      if (issued) manage.querySelector('#manage-result').replaceChildren(...secretBox(issued.secret, 'The new secret (shown once)'));
    });
    const revoke = el('button', { type: 'button', class: 'danger', id: 'revoke-key', disabled: k.status === 'revoked' }, 'Revoke');
    revoke.addEventListener('click', async () => {
      if (!await confirmAction('Revoke this key?', `${k.name || k.prefix} is refused from now on, for good.`, 'Revoke')) return;
      run(() => api.post(`/admin/keys/${encodeURIComponent(k.id)}/revoke`), 'Revoked.');
    });
    manage.hidden = false;
    manage.replaceChildren(
      el('h2', { id: 'manage-title', tabindex: '-1' }, `Key ${k.name || k.prefix}`),
      el('dl', { class: 'stats' },
        ...[['Id', k.id], ['Prefix', k.prefix], ['Tier', k.tier], ['Status', k.status],
          ['Balance', k.balance_usd === null ? 'No prepaid balance' : usd(k.balance_usd)],
          ['Monthly budget', k.monthly_budget_usd === null ? 'No budget' : usd(k.monthly_budget_usd)],
          ['Spend this month', usd(k.spend_month_usd)], ['Spend in all', usd(k.spend_total_usd)],
          ['Limits', `${int(k.rpm_limit)} RPM, ${int(k.monthly_limit)} a month`]]
          .map(([label, value]) => el('div', {}, el('dt', {}, label), el('dd', {}, value)))),
      error, notice, edit, topUp, el('div', { class: 'row' }, rotate, revoke), result);
  }

  // Create a key.
  const createForm = el('form', { 'aria-labelledby': 'create-title' });
  const createError = el('p', { class: 'error', role: 'alert', id: 'create-error' });
  const created = el('div', { 'aria-live': 'polite' });
  const input = (id, label, attrs) => el('div', {}, el('label', { for: id }, label), el('input', { id, ...attrs }));
  createForm.append(el('div', { class: 'row' },
    input('new-name', 'Name', { type: 'text' }),
    input('new-tier', 'Tier', { type: 'text', required: true }),
    input('new-rpm', 'Requests per minute (empty: the tier\'s)', { type: 'number', min: 1 }),
    input('new-monthly', 'Requests per month (empty: the tier\'s)', { type: 'number', min: 0 }),
    input('new-balance', 'Prepaid balance, USD (empty: none)', { type: 'text', inputmode: 'decimal' }),
    input('new-budget', 'Monthly budget, USD (empty: none)', { type: 'text', inputmode: 'decimal' }),
    input('new-expires', 'Expires on (empty: never)', { type: 'date' })),
  el('button', { type: 'submit' }, 'Create key'));
  createForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    createError.textContent = '';
    const v = (id) => createForm.querySelector(`#${id}`).value.trim();
    const body = { tier: v('new-tier'), name: v('new-name') };
    if (v('new-rpm')) body.rpm = Number(v('new-rpm'));
    if (v('new-monthly')) body.monthly_requests = Number(v('new-monthly'));
    if (v('new-balance')) body.balance_usd = v('new-balance');
    if (v('new-budget')) body.monthly_budget_usd = v('new-budget');
    if (v('new-expires')) body.expires_at = v('new-expires');
    try {
      const issued = await api.post('/admin/keys', body);
      created.replaceChildren(...secretBox(issued.secret, `Secret of ${issued.name || issued.prefix} (shown once)`));
      createForm.reset();
      await refresh();
    } catch (err) {
      createError.textContent = err.message;
    }
  });
  create.replaceChildren(el('h2', { id: 'create-title' }, 'Create a key'), createForm, createError, created);

  renderAllUsage(api, usage);
  return 'Operator';
}

function renderAllUsage(api, section) {
  const [first, last] = thisMonth();
  const start = el('input', { type: 'date', id: 'all-usage-start', value: first, required: true });
  const end = el('input', { type: 'date', id: 'all-usage-end', value: last, required: true });
  const error = el('p', { class: 'error', role: 'alert' });
  const out = el('div', { 'aria-live': 'polite' });
  const load = async () => {
    error.textContent = '';
    try {
      const u = await api.get(`/admin/usage${query({ start_date: start.value, end_date: addDays(end.value, 1) })}`);
      const top = el('div', { class: 'table-wrap' }, el('table', { 'data-testid': 'top-keys' },
        el('caption', { class: 'hint' }, 'Top keys by spend'),
        el('thead', {}, el('tr', {}, ['Key', 'Prefix', 'Tier', 'Requests', 'Cost']
          .map((h, i) => el('th', { scope: 'col', class: i > 2 ? 'num' : null }, h)))),
        el('tbody', {}, u.top_keys.map((k) => el('tr', {},
          el('td', {}, k.name || '—'), el('td', {}, k.prefix), el('td', {}, k.tier),
          el('td', { class: 'num' }, int(k.requests)), el('td', { class: 'num' }, usd(k.cost_usd)))))));
      out.replaceChildren(...usageReport(u), el('h3', {}, 'Top keys'), top);
    } catch (err) {
      error.textContent = err.message;
    }
  };
  const form = el('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); load(); } },
    el('div', {}, el('label', { for: 'all-usage-start' }, 'First day'), start),
    el('div', {}, el('label', { for: 'all-usage-end' }, 'Last day'), end),
    el('div', {}, el('button', { type: 'submit' }, 'Show usage')));
  section.replaceChildren(el('h2', { id: 'all-usage-title' }, 'Usage across all keys'), form, error, out);
  load();
}
