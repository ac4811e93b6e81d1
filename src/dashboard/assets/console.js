// The operator console: the admin room of the dashboard. It reads the
// history from the REST API before the stream starts (so the stream resumes
// exactly after it), filters the page by partner, and runs the operator's
// actions through the same REST API that /openapi.json documents, each after
// a confirmation, each POST with an Idempotency-Key (a double click or a retry
// is applied once). Server data is written with textContent only; amounts
// stay the server's decimal strings.

const HISTORY_LIMIT = 200; // events shown on open; older ones are a REST page away
const PAGE = 100;
const $ = (id) => document.getElementById(id);

/** Partner id -> name, for the filter and the cards' tags. */
const names = new Map();

// ---- the REST API ----

/** A request that failed, with the problem+json `detail` in words. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** An RFC 4122 v4 id; randomUUID needs a secure context, so fall back on getRandomValues. */
function newKey() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export async function call(token, method, path, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json, application/problem+json' };
  if (method === 'POST') headers['Idempotency-Key'] = newKey();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch { /* not JSON: the status line says it */ }
  if (!res.ok) {
    // The detail names what was wrong with this request; the title only its kind.
    throw new ApiError(json?.detail || json?.title || `${res.status} ${res.statusText}`, res.status);
  }
  return json;
}

// ---- history on open ----

/**
 * The latest events of every partner, oldest first, and the head they were
 * read below: the stream's `since`, so that it sends exactly what follows.
 */
export async function loadHistory(token) {
  const first = await call(token, 'GET', `/api/events?limit=${PAGE}`);
  const head = first.last_position;
  const events = [...first.events];
  let cursor = first.next_cursor;
  while (cursor !== null && events.length < HISTORY_LIMIT) {
    const page = await call(token, 'GET', `/api/events?limit=${PAGE}&cursor=${cursor}&head=${head}`);
    events.push(...page.events);
    cursor = page.next_cursor;
  }
  return { head, events: events.reverse() };
}

/** The partner's name and today's totals (events only carry the totals of their time). */
export async function loadPartner(token, id) {
  const partner = await call(token, 'GET', `/api/partners/${id}`);
  remember(partner);
  return partner;
}

function remember(partner) {
  names.set(String(partner.id), partner.name);
  for (const tag of document.querySelectorAll(`.total[data-partner-id="${partner.id}"] .partner-tag`)) {
    tag.textContent = partnerLabel(partner.id);
  }
}

export function partnerLabel(id) {
  const name = names.get(String(id));
  return name ? `${name} (#${id})` : `Partner #${id}`;
}

// ---- the partner filter ----

/** Shows only the rows and cards of partners whose id or name contains the filter's text. */
export function applyFilter() {
  const query = ($('partner-filter')?.value || '').trim().toLowerCase().replace(/^#/, '');
  const matches = (id) => !query || String(id) === query
    || (names.get(String(id)) || '').toLowerCase().includes(query);
  for (const el of document.querySelectorAll('#feed tr, #payouts tr, #totals .total')) {
    el.hidden = !matches(el.dataset.partnerId);
  }
}

/**
 * The server's search for the filter's text (GET /api/partners?q=): it finds
 * partners with no event on the page yet, lists them with their settings and
 * gives each its totals cards. Coalesced: typing searches once it pauses.
 */
let searchTimer = null;
function searchPartners(token, applyTotals) {
  clearTimeout(searchTimer);
  const q = $('partner-filter').value.trim();
  if (!q) {
    $('partner-results').replaceChildren();
    return;
  }
  searchTimer = setTimeout(async () => {
    let page;
    try {
      page = await call(token, 'GET', `/api/partners?q=${encodeURIComponent(q)}&limit=20`);
    } catch (err) {
      console.warn('commissions: partner search', err.message);
      return;
    }
    if ($('partner-filter').value.trim() !== q) return; // a newer search is on its way
    $('partner-results').replaceChildren(...page.items.map(partnerItem));
    for (const partner of page.items) {
      remember(partner);
      applyTotals(partner.id, partner.totals || {}, false);
    }
    applyFilter();
  }, 250);
}

function partnerItem(p) {
  const li = document.createElement('li');
  li.dataset.partnerId = String(p.id);
  const months = p.recurring_months === null ? 'default' : String(p.recurring_months);
  li.textContent = `${p.name} (#${p.id}) · rate ${p.commission_rate} · hold ${p.effective_hold_days} days · recurring months ${months}`;
  return li;
}

// ---- actions ----

/**
 * Asks the operator to confirm `question` (optionally with one text field);
 * resolves to the field's value (or '' without one), or null when cancelled.
 */
function confirmAction(question, field) {
  const dialog = $('confirm');
  $('confirm-text').textContent = question;
  const input = $('confirm-input');
  $('confirm-field').hidden = !field;
  $('confirm-label').textContent = field || '';
  input.value = '';
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok' ? input.value.trim() : null);
    }, { once: true });
  });
}

/** The outcome of the last action; `data-count` counts them, so a reader can wait for the next. */
function showResult(outcome, text) {
  const el = $('console-result');
  el.dataset.outcome = outcome;
  el.dataset.count = String(Number(el.dataset.count || 0) + 1);
  el.textContent = text;
  el.hidden = false;
}

/** Confirms, runs, and shows what happened (the problem's detail on failure). */
async function run(question, action, field) {
  const value = await confirmAction(question, field);
  if (value === null) {
    showResult('cancelled', 'Cancelled: nothing was sent.');
    return;
  }
  try {
    showResult('ok', await action(value));
  } catch (err) {
    showResult('error', err instanceof ApiError ? `Refused (${err.status}): ${err.message}` : `Failed: ${err.message}`);
  }
}

/** A form's fields by name, trimmed; empty fields are absent. */
function fields(form) {
  const out = {};
  for (const [name, value] of new FormData(form)) {
    if (typeof value === 'string' && value.trim() !== '') out[name] = value.trim();
  }
  return out;
}

const int = (value) => (value === undefined ? undefined : Number(value));
const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** The actions panel: each form asks for confirmation, then calls the API. */
export function setUpConsole(token, { money, showPayout, applyTotals }) {
  $('partner-filter').addEventListener('input', () => {
    applyFilter();
    searchPartners(token, applyTotals);
  });
  for (const button of document.querySelectorAll('#confirm [data-close]')) {
    button.addEventListener('click', () => $('confirm').close(button.dataset.close));
  }
  const onSubmit = (id, handler) => $(id).addEventListener('submit', (e) => {
    e.preventDefault(); // the API is called by fetch; the CSP allows no form submission
    void handler(fields(e.target), e.target);
  });

  onSubmit('form-partner', (f) => {
    const settings = {
      commission_rate: f.commission_rate,
      hold_days: int(f.hold_days),
      recurring_months: int(f.recurring_months),
    };
    if (f.partner_id) {
      return run(`Change partner #${f.partner_id}?`, async () => {
        const body = { name: f.name, ...settings };
        const p = await call(token, 'PATCH', `/api/partners/${f.partner_id}`, body);
        remember(p);
        return `Partner ${partnerLabel(p.id)} updated: rate ${p.commission_rate}, hold ${p.effective_hold_days} days.`;
      });
    }
    return run(`Create partner “${f.name || ''}”?`, async () => {
      const p = await call(token, 'POST', '/api/partners', { name: f.name, ...settings });
      remember(p);
      return `Partner ${partnerLabel(p.id)} created: rate ${p.commission_rate}, hold ${p.effective_hold_days} days.`;
    });
  });

  onSubmit('form-payment', (f, form) => {
    const verify = form.elements.verify.checked;
    const amount = money(f.amount, f.currency);
    const who = f.partner_id ? ` for partner #${f.partner_id}` : '';
    return run(`Record${verify ? ' and verify' : ''} a payment of ${amount}${who}?`, async () => {
      const body = { amount: f.amount, currency: f.currency, partner_id: int(f.partner_id), reference: f.reference };
      const payment = await call(token, 'POST', '/api/payments', body);
      if (!verify) return `Payment #${payment.id} of ${amount} recorded (pending).`;
      await call(token, 'POST', `/api/payments/${payment.id}/verify`, {});
      return `Payment #${payment.id} of ${amount} recorded and verified.`;
    });
  });

  onSubmit('form-verify', (f) => run(`Verify payment #${f.payment_id}?`, async () => {
    await call(token, 'POST', `/api/payments/${f.payment_id}/verify`, {});
    return `Payment #${f.payment_id} verified.`;
  }));

  onSubmit('form-refund', (f) => {
    const what = f.amount ? `${f.amount} of payment #${f.payment_id}` : `all of payment #${f.payment_id} not refunded yet`;
    return run(`Refund ${what}?`, async () => {
      const out = await call(token, 'POST', `/api/payments/${f.payment_id}/refund`, f.amount ? { amount: f.amount } : {});
      const reversed = out.reversal ? `; commission reversed: ${money(out.reversal.amount, out.reversal.currency)}` : '';
      return `Payment #${f.payment_id} refunded${reversed}.`;
    });
  });

  onSubmit('form-payouts', (f) => {
    const scope = [f.partner_id && `partner #${f.partner_id}`, f.currency].filter(Boolean).join(', ') || 'every partner';
    return run(`Run payouts for ${scope}?`, async () => {
      const out = await call(token, 'POST', '/api/payouts/run', { partner_id: int(f.partner_id), currency: f.currency });
      for (const payout of out.payouts) showPayout(payout, 'start', true);
      return out.payouts.length ? `${plural(out.payouts.length, 'payout')} created.` : 'No balance reached its payout minimum: no payout created.';
    });
  });

  $('run-approval').addEventListener('click', () => run('Approve every commission whose hold period is over now?', async () => {
    const out = await call(token, 'POST', '/api/approvals/run', {});
    return `${plural(out.commissions, 'commission')} approved in ${plural(out.batches, 'batch', 'batches')}.`;
  }));

  $('reapply-parked').addEventListener('click', () => run('Try every parked provider event again?', async () => {
    const out = await call(token, 'POST', '/api/parked-events/reapply');
    return `${out.applied} applied, ${out.still_parked} still parked, ${out.remaining} left.`;
  }));
}

/** The buttons of a payout's row: what may happen to it next. */
export function payoutButtons(token, payout, showPayout) {
  const marks = [
    ['sent', 'Mark sent', 'Provider reference (optional)', (v) => ({ provider_reference: v || undefined })],
    ['paid', 'Mark paid', 'Provider reference (needed unless given when sent)', (v) => ({ provider_reference: v || undefined })],
    ['failed', 'Mark failed', 'Reason, as the provider said', (v) => ({ reason: v })],
  ];
  return marks.map(([state, label, field, body]) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'mark';
    button.dataset.mark = state;
    button.textContent = label;
    button.addEventListener('click', () => run(`Mark payout #${payout.id} ${state}?`, async (value) => {
      const out = await call(token, 'POST', `/api/payouts/${payout.id}/${state}`, body(value));
      showPayout(out, 'start', true);
      return `Payout #${payout.id} is ${out.state}.`;
    }, field));
    return button;
  });
}
