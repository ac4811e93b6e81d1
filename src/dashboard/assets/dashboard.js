// The partner dashboard: initial state from the REST API, then live events
// from the WebSocket through CommissionsClient. Every piece of server data is
// written with textContent, never parsed as HTML. The token is read once from
// `?token=`, kept in sessionStorage and removed from the address bar, so it
// does not linger in history, screenshots or Referer headers.
//
// What the page shows is only what the server sends it for this token: the
// server decides which partner's data a token may see.

import { CommissionsClient, decodeTokenPayload } from '/client/commissions-client.js';
import uPlot from '/dashboard/vendor/uPlot.esm.js';
import * as operator from '/dashboard/console.js';

const FEED_LIMIT = 20;
const TOAST_MS = 6000;
const MAX_TOASTS = 4;
const $ = (id) => document.getElementById(id);
const STATE_LABELS = {
  connecting: 'Connecting', live: 'Live', replaying: 'Replaying', reconnecting: 'Reconnecting', offline: 'Offline',
};
const INBOX_LIMIT = 20;
// Tabs of this page tell each other what was read, so one tab's click
// clears the notification on all of them.
const inboxChannel = typeof BroadcastChannel === 'function' ? new BroadcastChannel('commissions-inbox') : null;

const view = {
  rows: new Map(), // commission id -> <tr>, so a commission is listed once
  cards: new Map(), // "partner:currency" -> card element
  payouts: new Map(), // payout id -> <tr>, updated in place as its state moves
  partnersRead: new Set(), // partner ids whose name and totals were read (admin room)
  positions: new Set(), // global positions shown: the history and the stream never list an event twice
  inbox: new Map(), // notification id -> <li>
  chart: { days: 30, currency: null, data: null, plot: null },
};
let currentToken = null; // the payouts' buttons call the API with it
const TOTAL_FIELDS = ['earned', 'pending', 'approved', 'balance', 'in_payout', 'paid', 'reversed', 'held'];

async function main() {
  const token = takeToken();
  currentToken = token;
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
    $('totals-note').textContent = 'per partner and currency, as of now';
    since = await loadConsole(token);
  }

  const client = new CommissionsClient({ token, since, partnerId: isAdmin ? partnerId : null });
  // While the server replays what this page missed, the indicator says so.
  let replaying = 0;
  client.addEventListener('state', (e) => {
    replaying = 0;
    setStatus(e.detail.state, e.detail.reason);
  });
  client.addEventListener('ready', (e) => {
    const ready = e.detail;
    if (ready.totals && ready.partner_id !== undefined) applyTotals(ready.partner_id, ready.totals, false);
    replaying = Number(ready.replay) || 0;
    if (replaying > 0) setStatus('replaying', `catching up on ${replaying} missed event${replaying === 1 ? '' : 's'}`);
  });
  client.addEventListener('event', (e) => {
    onEvent(e.detail.event, e.detail.replayed);
    if (partnerId !== null) afterEvent(token, partnerId);
    else afterAdminEvent(token, e.detail.event, e.detail.replayed);
    if (replaying > 0 && --replaying === 0) setStatus('live', '');
  });
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
    setUpChart(token, partnerId);
    setUpInbox(token);
    return Number.isSafeInteger(partner.last_seq) ? partner.last_seq : undefined;
  } catch (err) {
    // The socket's `ready` still brings the totals; only the history is missing.
    showBanner(`Could not load the history: ${err.message}. Live updates continue.`);
    return undefined;
  }
}

/**
 * The admin room: the latest events of every partner, today's totals of each
 * partner in them, the payouts, and the actions panel. Returns the position
 * the stream resumes after, so the history and the stream meet with no gap.
 */
async function loadConsole(token) {
  operator.setUpConsole(token, { money, showPayout, applyTotals });
  try {
    const history = await operator.loadHistory(token);
    for (const event of history.events) onEvent(event, true, true);
    const partners = new Set(history.events.map((e) => e.partner_id));
    await Promise.all([...partners].map((id) => refreshPartner(token, id)));
    const payouts = await api(token, `/api/payouts?limit=${FEED_LIMIT * 2}`);
    for (const payout of payouts.items || []) showPayout(payout, 'end', false);
    operator.applyFilter();
    return history.head;
  } catch (err) {
    showBanner(`Could not load the history: ${err.message}. Live updates continue.`);
    return undefined;
  }
}

/** A partner's name and today's totals into its cards. */
async function refreshPartner(token, id) {
  view.partnersRead.add(id);
  try {
    const partner = await operator.loadPartner(token, id);
    applyTotals(id, partner.totals || {}, false);
  } catch (err) {
    console.warn('commissions: partner', id, err.message);
  }
}

/**
 * A partner first seen live gets its name and totals read, and so does one
 * whose events are replayed (they carry the totals of their time, not today's).
 * The filter then applies to the new rows.
 */
function afterAdminEvent(token, event, replayed) {
  if (replayed || !view.partnersRead.has(event.partner_id)) {
    void refreshPartner(token, event.partner_id).then(operator.applyFilter);
  }
  operator.applyFilter();
}

async function api(token, path, method = 'GET') {
  const res = await fetch(path, { method, headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' } });
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

/** One event, from the stream or (`history`: quietly, no toast) from the REST history. */
function onEvent(event, replayed, history = false) {
  if (Number.isSafeInteger(event.position)) {
    if (view.positions.has(event.position)) return;
    view.positions.add(event.position);
  }
  const data = event.data || {};
  const announce = history ? () => {} : (row) => toast(row, replayed);
  // Replayed events carry the totals of their time; `ready` already set today's.
  if (!replayed && data.totals) applyTotals(event.partner_id, data.totals, true);
  if (event.type.startsWith('payout.')) {
    const payout = { ...data, id: data.payout_id, partner_id: event.partner_id, updated_at: event.occurred_at };
    if (showPayout(payout, 'start', !history) && !history) payoutToast(payout, event.type.slice('payout.'.length), replayed);
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
    if (addRow(row, 'start', !history)) announce(row);
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
  if (addRow(row, 'start', !history)) announce(row);
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
    tr.dataset.partnerId = String(payout.partner_id);
    for (const cls of ['', 'admin-only', 'state', '', 'reference', 'num amount', 'admin-only marks']) {
      const td = document.createElement('td');
      if (cls) td.className = cls;
      tr.append(td);
    }
    if (isAdminRoom()) tr.lastElementChild.append(...operator.payoutButtons(currentToken, payout, showPayout));
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
  tr.dataset.partnerId = String(row.partnerId ?? '');
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

// ---- the earnings chart ----

function setUpChart(token, partnerId) {
  for (const button of document.querySelectorAll('.range')) {
    button.addEventListener('click', () => {
      view.chart.days = Number(button.dataset.days);
      for (const b of document.querySelectorAll('.range')) b.setAttribute('aria-pressed', String(b === button));
      void loadEarnings(token, partnerId);
    });
  }
  $('earnings-currency').addEventListener('change', (e) => {
    view.chart.currency = e.target.value;
    drawChart();
  });
  void loadEarnings(token, partnerId);
}

async function loadEarnings(token, partnerId) {
  try {
    view.chart.data = await api(token, `/api/partners/${partnerId}/earnings?days=${view.chart.days}`);
  } catch (err) {
    console.warn('commissions: earnings', err.message);
    return;
  }
  const currencies = Object.keys(view.chart.data.currencies || {});
  const select = $('earnings-currency');
  if (select.options.length !== currencies.length) {
    select.replaceChildren(...currencies.map((c) => new Option(c, c)));
  }
  if (!currencies.includes(view.chart.currency)) view.chart.currency = currencies[0] ?? null;
  select.value = view.chart.currency ?? '';
  drawChart();
}

/** The chart of one currency's net earnings per day; uPlot draws, we only hand it the server's numbers. */
function drawChart() {
  const days = view.chart.data?.currencies?.[view.chart.currency] || [];
  const hasMoney = days.some((d) => Number(d.net) !== 0);
  $('earnings-empty').hidden = hasMoney;
  // A chart needs numbers: the decimal strings become floats for drawing
  // only; every figure shown as text is the server's string.
  const data = [
    days.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000),
    days.map((d) => Number(d.net)),
  ];
  const box = $('earnings');
  if (!view.chart.plot) {
    view.chart.plot = new uPlot({
      width: Math.max(320, box.clientWidth || 640),
      height: 200,
      scales: { x: { time: true } },
      axes: [{}, { values: (_, ticks) => ticks.map((t) => t.toLocaleString()) }],
      series: [{}, { label: view.chart.currency || '', stroke: '#4f46e5', fill: 'rgba(79, 70, 229, .08)', width: 2 }],
    }, data, box);
    window.earningsChart = view.chart.plot; // for the console and the end-to-end test
  } else {
    view.chart.plot.setData(data);
  }
  box.dataset.currency = view.chart.currency || '';
  box.dataset.days = String(days.length);
  box.dataset.total = days.reduce((sum, d) => sum + Math.round(Number(d.net) * 10000), 0).toString();
}

// ---- the inbox ----

function setUpInbox(token) {
  inboxChannel?.addEventListener('message', (e) => {
    if (e.data?.read !== undefined) markShownRead(e.data.read, e.data.read_at);
  });
  void loadInbox(token);
}

async function loadInbox(token) {
  let page;
  try {
    page = await api(token, `/api/notifications?limit=${INBOX_LIMIT}`);
  } catch (err) {
    console.warn('commissions: notifications', err.message);
    return;
  }
  // Oldest first, each prepended: the newest ends on top.
  for (const n of [...(page.items || [])].reverse()) showNotification(token, n);
  const unread = await api(token, '/api/notifications?unread=true&limit=100').catch(() => null);
  if (unread) setUnread(unread.items.length, unread.next_cursor !== null);
}

function showNotification(token, n) {
  const key = String(n.id);
  let li = view.inbox.get(key);
  if (!li) {
    li = document.createElement('li');
    li.dataset.notificationId = key;
    const text = document.createElement('div');
    text.className = 'text';
    const title = document.createElement('strong');
    title.textContent = n.title;
    const body = document.createElement('span');
    body.textContent = `${n.body} · ${formatTime(n.created_at)}`;
    text.append(title, body);
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = 'Mark read';
    button.addEventListener('click', () => void markRead(token, n.id));
    li.append(text, button);
    $('inbox').prepend(li);
    view.inbox.set(key, li);
    while (view.inbox.size > INBOX_LIMIT) {
      const last = $('inbox').lastElementChild;
      view.inbox.delete(last.dataset.notificationId);
      last.remove();
    }
  }
  li.classList.toggle('unread', !n.read_at);
  $('inbox-empty').hidden = view.inbox.size > 0;
}

async function markRead(token, id) {
  try {
    const read = await api(token, `/api/notifications/${id}/read`, 'POST');
    markShownRead(id, read.read_at);
    inboxChannel?.postMessage({ read: id, read_at: read.read_at });
  } catch (err) {
    showBanner(`Could not mark the notification read: ${err.message}`);
  }
}

function markShownRead(id, readAt) {
  const li = view.inbox.get(String(id));
  if (li?.classList.contains('unread')) {
    li.classList.remove('unread');
    const badge = $('unread');
    setUnread(Math.max(0, Number(badge.dataset.count) - 1), false);
  }
  void readAt;
}

function setUnread(count, more) {
  const badge = $('unread');
  badge.dataset.count = String(count);
  badge.textContent = more ? `${count}+` : String(count);
  badge.hidden = count === 0;
}

/** A live event: its notification is new and unread, and the chart moved. Coalesced: a burst reads once. */
let refreshTimer = null;
function afterEvent(token, partnerId) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    await loadInbox(token);
    await loadEarnings(token, partnerId);
  }, 250);
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
      card.querySelector('.partner-tag').textContent = isAdminRoom() ? operator.partnerLabel(partnerId) : '';
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

const isAdminRoom = () => document.body.classList.contains('admin');

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
