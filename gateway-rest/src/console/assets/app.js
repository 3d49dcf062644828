// The console's entry: sign-in (an API key for a key holder, the admin token for an operator),
// the session (the secret lives in this tab's sessionStorage and in memory, never in
// localStorage, a cookie or a URL), and which view is shown.

import { Api } from './api.js';
import { showHolder } from './holder.js';
import { showOperator } from './operator.js';

const SESSION = 'tollgate.console';

const $ = (id) => document.getElementById(id);

/// Asks for one confirmation in the page's modal dialog; resolves true when confirmed.
export function confirmAction(title, text, action) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = action;
  return new Promise((resolve) => {
    const done = (answer) => {
      $('confirm-ok').removeEventListener('click', ok);
      $('confirm-cancel').removeEventListener('click', cancel);
      dialog.removeEventListener('cancel', cancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = () => done(false);
    $('confirm-ok').addEventListener('click', ok);
    $('confirm-cancel').addEventListener('click', cancel);
    dialog.addEventListener('cancel', cancel);
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

/// Replaces the session's secret (after the key holder regenerated their key).
export function updateSecret(secret) {
  const saved = JSON.parse(sessionStorage.getItem(SESSION) || '{}');
  sessionStorage.setItem(SESSION, JSON.stringify({ ...saved, secret }));
}

function signOut() {
  sessionStorage.removeItem(SESSION);
  $('view').replaceChildren();
  $('view').hidden = true;
  $('who').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  $('secret').value = '';
  $('secret').focus();
}

/// Checks the secret against the API (the view's first call) and shows the view, or says why
/// not in the product's words.
async function enter(role, secret) {
  const api = new Api(secret);
  const show = role === 'operator' ? showOperator : showHolder;
  const view = $('view');
  const who = await show(api, view);
  sessionStorage.setItem(SESSION, JSON.stringify({ role, secret }));
  $('sign-in').hidden = true;
  view.hidden = false;
  $('who').textContent = who;
  $('who').hidden = false;
  $('sign-out').hidden = false;
  view.querySelector('h2')?.focus();
}

function start() {
  $('sign-out').addEventListener('click', signOut);
  $('sign-in-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = $('sign-in-error');
    error.textContent = '';
    const role = new FormData(event.target).get('role');
    const secret = $('secret').value.trim();
    if (!secret) {
      error.textContent = role === 'operator' ? 'Enter the admin token.' : 'Enter your API key.';
      return;
    }
    try {
      await enter(role, secret);
    } catch (err) {
      error.textContent = err.message;
    }
  });
  const saved = JSON.parse(sessionStorage.getItem(SESSION) || 'null');
  if (saved && saved.secret) {
    enter(saved.role, saved.secret).catch((err) => {
      signOut();
      $('sign-in-error').textContent = err.message;
    });
  } else {
    $('secret').focus();
  }
}

start();
