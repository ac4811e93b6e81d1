// The partner dashboard: initial state from the REST API, then live events
// from the WebSocket through CommissionsClient. Every piece of server data is
// written with textContent, never parsed as HTML. The token is read once from
// `?token=`, kept in sessionStorage and removed from the address bar, so it
// does not linger in history, screenshots or Referer headers.
//
// What the page shows is only what the server sends it for this token: the
// server decides which partner's data a token may see.

import { CommissionsClient, decodeTokenPayload } from '/client/commissions-client.js';

const FEED_LIMIT = 20;
const TOAST_MS = 6000;
const MAX_TOASTS = 4;
const $ = (id) => document.getElementById(id);
const STATE_LABELS = { connecting: 'Connecting', live: 'Live', reconnecting: 'Reconnecting', offline: 'Offline' };

const view = {
  rows: new Map(), // commission id -> <tr>, so a commission is listed once
  cards: new Map(), // "partner:currency" -> card element
  payouts: new Map(), // payout id -> <tr>, updated in place as its state moves
};
const TOTAL_FIELDS = ['earned', 'pending', 'approved', 'balance', 'in_payout', 'paid', 'reversed', 'held'];

async function main() {
  const token = takeToken();
  if (!token) {
    showBanner('No token. Open this page with ?token=<your JWT> (the `demo` command prints a link).');
    setStatus('offline', 'no token');
    return;
  }
  const claims = decodeTokenPayload(token);
  if (!claims) {
    showBanner('The token in the link is not a JWT.');
    setStatus('offline', 'bad token');
    return;
  }
  const params = new URLSearchParams(location.search);
  const isAdmin = claims.role === 'admin';
  // An admin may watch one partner with ?partner_id=; otherwise the admin room.
  const partnerId = isAdmin ? numberOrNull(params.get('partner_id')) : numberOrNull(claims.partner_id);
  document.body.classList.toggle('admin', isAdmin && partnerId === null);

  let since;
  if (partnerId !== null) {
    $('subtitle').textContent = `Partner #${partnerId}`;
    since = await loadPartner(token, partnerId);
  } else {
    $('title').textContent = 'Commissions · all partners';
    $('subtitle').textContent = 'Admin view: every partner’s events as they happen';
    $('totals-note').textContent = 'per partner and currency, from the events seen since this page opened';
  }

  const client = new CommissionsClient({ token, since, partnerId: isAdmin ? partnerId : null });
  client.addEventListener('state', (e) => setStatus(e.detail.state, e.detail.reason));
  client.addEventListener('ready', (e) => {
    const ready = e.detail;
    if (ready.totals && ready.partner_id !== undefined) applyTotals(ready.partner_id, ready.totals, false);
  });
  client.addEventListener('event', (e) => onEvent(e.detail.event, e.detail.replayed));
  client.addEventListener('error', (e) => console.warn('commissions:', e.detail.code, e.detail.message));
  window.commissionsClient = client; // for the console and the end-to-end test
  client.start();
}

/** Loads the partner, its totals and latest commissions; returns the seq to resume after. */
async function loadPartner(token, partnerId) {
  try {
    const partner = await api(token, `/api/partners/${partnerId}`);
    if (partner.name) {
      $('title').textContent = partner.name;
      document.title = `${partner.name} · Commissions`;
    }
    applyTotals(partnerId, partner.totals || {}, false);
    const page = await api(token, `/api/partners/${partnerId}/commissions?limit=${FEED_LIMIT}`);
    const items = Array.isArray(page) ? page : page.items || page.commissions || page.data || [];
    // Newest first from the API; append in that order.
    for (const item of items) addRow(rowFromCommission(item, partnerId), 'end', false);
    const payouts = await api(token, `/api/partners/${partnerId}/payouts?limit=${FEED_LIMIT}`);
    for (const payout of payouts.items || []) showPayout(payout, 'end', false);
    return Number.isSafeInteger(partner.last_seq) ? partner.last_seq : undefined;
  } catch (err) {
    // The socket's `ready` still brings the totals; only the history is missing.
    showBanner(`Could not load the history: ${err.message}. Live updates continue.`);
    return undefined;
  }
}

async function api(token, path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' } });
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`;
    try {
      const problem = await res.json();
      detail = problem.title || problem.detail || detail;
    } catch { /* not JSON: keep the status line */ }
    throw new Error(detail);
  }
  return res.json();
}

/** How each ledger kind reads, and which way it moves the partner's money. */
const KINDS = {
  earned: { label: 'Earned', sign: '+', toast: 'New commission' },
  reversed: { label: 'Reversed', sign: '−', toast: 'Commission reversed' },
  reinstated: { label: 'Reinstated', sign: '+', toast: 'Commission reinstated' },
  held: { label: 'On hold', sign: '', toast: 'Commission on hold (disputed)' },
  released: { label: 'Released', sign: '', toast: 'Commission released' },
  approved: { label: 'Approved', sign: '', toast: 'Commissions approved' },
};
const PAYOUT_TOASTS = {
  created: 'Payout created', sent: 'Payout sent', paid: 'Payout paid', failed: 'Payout failed',
};
const kindOf = (kind) => KINDS[kind] || KINDS.earned;

function onEvent(event, replayed) {
  const data = event.data || {};
  // Replayed events carry the totals of their time; `ready` already set today's.
  if (!replayed && data.totals) applyTotals(event.partner_id, data.totals, true);
  if (event.type.startsWith('payout.')) {
    const payout = { ...data, id: data.payout_id, partner_id: event.partner_id, updated_at: event.occurred_at };
    if (showPayout(payout, 'start', true)) payoutToast(payout, event.type.slice('payout.'.length), replayed);
    return;
  }
  if (event.type === 'commission.approved') {
    const row = {
      key: `approval:${data.approval_id}`,
      partnerId: event.partner_id,
      kind: 'approved',
      amount: data.amount,
      currency: data.currency,
      count: data.commissions,
      at: event.occurred_at,
    };
    if (addRow(row, 'start', true)) toast(row, replayed);
    return;
  }
  const row = {
    id: data.commission_id,
    partnerId: event.partner_id,
    paymentId: data.payment_id,
    kind: data.kind || (event.type === 'commission.reversed' ? 'reversed' : 'earned'),
    amount: data.amount,
    currency: data.currency,
    rate: data.rate,
    paymentAmount: data.payment_amount,
    at: event.occurred_at,
  };
  if (addRow(row, 'start', true)) toast(row, replayed);
}

/**
 * Lists a payout, or moves its row to its new state (events arrive in seq
 * order, so the latest state wins). Returns whether anything changed.
 */
function showPayout(payout, where, highlight) {
  const key = String(payout.id);
  let tr = view.payouts.get(key);
  if (tr && tr.dataset.state === payout.state) return false;
  if (!tr) {
    tr = document.createElement('tr');
    tr.dataset.payoutId = key;
    for (const cls of ['', 'admin-only', 'state', '', 'reference', 'num amount']) {
      const td = document.createElement('td');
      if (cls) td.className = cls;
      tr.append(td);
    }
    const body = $('payouts');
    if (where === 'start') body.prepend(tr);
    else body.append(tr);
    view.payouts.set(key, tr);
  }
  tr.dataset.state = payout.state;
  const cells = tr.children;
  cells[0].textContent = `#${payout.id}`;
  cells[1].textContent = `#${payout.partner_id}`;
  const badge = document.createElement('span');
  badge.className = `payout-state ${payout.state}`;
  badge.textContent = payout.state;
  cells[2].replaceChildren(badge);
  cells[3].textContent = formatTime(payout.updated_at || payout.paid_at || payout.failed_at || payout.sent_at || payout.created_at);
  cells[4].textContent = payout.failure_reason || payout.provider_reference || '';
  cells[5].textContent = money(payout.amount, payout.currency);
  if (highlight) flash(tr);
  $('payouts-empty').hidden = view.payouts.size > 0;
  return true;
}

function payoutToast(payout, what, replayed) {
  const box = document.createElement('div');
  box.className = `toast payout ${what}`;
  box.dataset.payoutId = String(payout.id);
  const title = document.createElement('strong');
  title.textContent = `${PAYOUT_TOASTS[what] || 'Payout'}: ${money(payout.amount, payout.currency)}`;
  const detail = document.createElement('span');
  detail.textContent = `Payout #${payout.id}${replayed ? ' · while you were away' : ''}`;
  box.append(title, detail);
  pushToast(box);
}

function rowFromCommission(c, partnerId) {
  return {
    id: c.id ?? c.commission_id,
    partnerId: c.partner_id ?? partnerId,
    paymentId: c.payment_id,
    kind: c.kind,
    amount: c.amount,
    currency: c.currency,
    rate: c.rate,
    paymentAmount: c.payment_amount,
    at: c.created_at || c.occurred_at,
  };
}

/** Adds a feed row unless that commission is already listed; returns whether it was added. */
function addRow(row, where, highlight) {
  const key = row.key || (row.id !== undefined ? String(row.id) : `${row.paymentId}:${row.kind}`);
  if (view.rows.has(key)) return false;
  const tr = document.createElement('tr');
  tr.dataset.commissionId = String(row.id ?? '');
  tr.dataset.paymentId = String(row.paymentId ?? '');
  tr.dataset.kind = row.kind || '';
  const kind = document.createElement('span');
  kind.className = `kind ${row.kind}`;
  kind.textContent = kindOf(row.kind).label;
  const cells = [
    [formatTime(row.at), ''],
    [row.partnerId !== undefined ? `#${row.partnerId}` : '', 'admin-only'],
    [row.paymentId !== undefined ? `#${row.paymentId}` : `${row.count} commission${row.count === 1 ? '' : 's'}`, ''],
    [kind, ''],
    [money(row.paymentAmount, row.currency), 'num'],
    [percent(row.rate), 'num'],
    [kindOf(row.kind).sign + money(row.amount, row.currency), `num amount ${row.kind}`],
  ];
  for (const [content, cls] of cells) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    if (content instanceof Node) td.append(content);
    else td.textContent = content;
    tr.append(td);
  }
  if (highlight) tr.classList.add('new');
  const body = $('feed');
  if (where === 'start') body.prepend(tr);
  else body.append(tr);
  view.rows.set(key, tr);
  while (body.rows.length > FEED_LIMIT * 5) {
    const last = body.rows[body.rows.length - 1];
    view.rows.delete([...view.rows].find(([, el]) => el === last)?.[0]);
    last.remove();
  }
  $('feed-empty').hidden = body.rows.length > 0;
  $('feed-count').textContent = `${body.rows.length} shown`;
  return true;
}

/** Writes totals ({"NGN": {earned, pending, approved, balance, ...}}) into the cards, in place. */
function applyTotals(partnerId, totals, highlight) {
  for (const [currency, values] of Object.entries(totals)) {
    const key = `${partnerId}:${currency}`;
    let card = view.cards.get(key);
    if (!card) {
      card = $('total-card').content.firstElementChild.cloneNode(true);
      card.dataset.partnerId = String(partnerId);
      card.dataset.currency = currency;
      card.querySelector('.currency').textContent = currency;
      card.querySelector('.partner-tag').textContent = document.body.classList.contains('admin') ? `Partner #${partnerId}` : '';
      $('totals').append(card);
      view.cards.set(key, card);
    }
    for (const field of TOTAL_FIELDS) {
      const el = card.querySelector(`[data-field="${field}"]`);
      if (!el || values[field] === undefined) continue; // events before engine v2 carry no `held`
      const text = money(values[field]); // the card's badge names the currency
      if (el.textContent !== text) {
        const first = el.textContent === '–';
        el.textContent = text;
        if (highlight && !first) flash(el); // flash changes, not a card's first values
      }
    }
  }
  $('totals-empty').hidden = view.cards.size > 0;
}

function toast(row, replayed) {
  const box = document.createElement('div');
  box.className = `toast ${row.kind}`;
  box.dataset.paymentId = String(row.paymentId ?? '');
  const title = document.createElement('strong');
  const kind = kindOf(row.kind);
  title.textContent = `${kind.toast}: ${kind.sign}${money(row.amount, row.currency)}`;
  const detail = document.createElement('span');
  const who = document.body.classList.contains('admin') ? `Partner #${row.partnerId} · ` : '';
  const what = row.paymentId !== undefined
    ? `Payment #${row.paymentId} of ${money(row.paymentAmount, row.currency)}`
    : `${row.count} commission${row.count === 1 ? '' : 's'} now payable`;
  detail.textContent = `${who}${what}${replayed ? ' · while you were away' : ''}`;
  box.append(title, detail);
  pushToast(box);
}

function pushToast(box) {
  const stack = $('toasts');
  stack.append(box);
  // A long replay must not bury the page: keep the newest few.
  while (stack.children.length > MAX_TOASTS) stack.firstElementChild.remove();
  setTimeout(() => {
    box.classList.add('leaving');
    setTimeout(() => box.remove(), 400);
  }, TOAST_MS);
}

function setStatus(state, reason) {
  const el = $('status');
  el.dataset.state = state;
  $('status-label').textContent = STATE_LABELS[state] || state;
  $('status-reason').textContent = reason || (state === 'live' ? 'receiving commissions as they commit' : '');
  el.title = reason || '';
}

function showBanner(text) {
  const el = $('banner');
  el.textContent = text;
  el.hidden = false;
}

function takeToken() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get('token');
  if (fromUrl) {
    sessionStorage.setItem('commissions.token', fromUrl);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
    return fromUrl;
  }
  return sessionStorage.getItem('commissions.token');
}

/** A decimal string with thousands separators; the digits are the server's, never a float's. */
function money(amount, currency) {
  if (amount === undefined || amount === null) return '–';
  const [int, frac] = String(amount).split('.');
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${currency ? `${currency} ` : ''}${grouped}${frac !== undefined ? `.${frac}` : ''}`;
}

function percent(rate) {
  if (rate === undefined || rate === null) return '–';
  // Shift the decimal point two places on the string, so 0.025 shows as 2.5%.
  const [int, frac = ''] = String(rate).split('.');
  const digits = `${int}${frac.padEnd(2, '0')}`;
  const whole = digits.slice(0, int.length + 2).replace(/^0+(?=\d)/, '');
  const rest = digits.slice(int.length + 2).replace(/0+$/, '');
  return `${whole}${rest ? `.${rest}` : ''}%`;
}

function formatTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

function flash(el) {
  el.classList.remove('flash');
  void el.offsetWidth; // restart the animation
  el.classList.add('flash');
}

function numberOrNull(value) {
  const n = Number(value);
  return value !== null && value !== undefined && value !== '' && Number.isSafeInteger(n) ? n : null;
}

// Last, so every constant above is initialised before anything runs.
main().catch((err) => showBanner(`The dashboard failed to start: ${err.message}`));
