// The partner dashboard in a real browser (Debian's chromium, driven by
// playwright-core) against the real server and PostgreSQL. Run by ./run,
// which builds the binary, creates and migrates a fresh database and passes:
//
//   E2E_BIN           the commissions binary
//   E2E_DATABASE_URL  the migrated test database
//   E2E_PORT          a free port
//   JWT_SECRET        the key the server checks tokens with (the test mints its own)
//
// The spec owns the server process, because it stops and restarts it to
// prove that the page resumes without losing or repeating a commission.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.join(here, 'artifacts');
const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests/e2e/run`);
  return value;
};
const BIN = env('E2E_BIN');
const DATABASE_URL = env('E2E_DATABASE_URL');
const PORT = Number(env('E2E_PORT'));
const JWT_SECRET = env('JWT_SECRET');
const BASE = `http://127.0.0.1:${PORT}`;
const WAIT = { timeout: 45_000 };

// ---- the server, the database, tokens ----

let server = null;
// Whatever happens to this process, the server it started goes with it.
process.on('exit', () => server?.child.kill('SIGKILL'));

async function startServer() {
  const child = spawn(BIN, ['serve'], {
    env: { ...process.env, DATABASE_URL, JWT_SECRET, BIND_ADDR: `127.0.0.1:${PORT}`, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  server = { child, exited };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the server exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${BASE}/readyz`)).ok) return;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error('the server did not become ready in 30 s');
    await sleep(100);
  }
}

async function stopServer() {
  if (!server) return;
  const { child, exited } = server;
  server = null;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Runs statements in one psql session (one -c each); returns the last line printed. */
function psql(...statements) {
  const args = [DATABASE_URL, '-qAtX', '-v', 'ON_ERROR_STOP=1', ...statements.flatMap((sql) => ['-c', sql])];
  const out = spawnSync('psql', args, { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(`psql failed: ${out.stderr}`);
  return out.stdout.trim().split('\n').pop();
}

function mint(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', JWT_SECRET).update(signed).digest('base64url')}`;
}

const inOneHour = () => Math.floor(Date.now() / 1000) + 3600;
const partnerToken = (id, exp = inOneHour()) => mint({ sub: `partner-${id}`, role: 'partner', partner_id: id, exp });
const adminToken = () => mint({ sub: 'e2e-admin', role: 'admin', exp: inOneHour() });

async function api(method, url, token, body) {
  const res = await fetch(`${BASE}${url}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** Records a payment and verifies it through the REST API, as an operator would. */
async function verifyThroughApi(partnerId, amount) {
  const created = await api('POST', '/api/payments', admin, { amount, currency: 'NGN', partner_id: partnerId });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const verified = await api('POST', `/api/payments/${created.body.id}/verify`, admin);
  assert.equal(verified.status, 200, JSON.stringify(verified.body));
  return created.body.id;
}

/** Commits a verification in SQL, as a DBA in psql would (no node involved). */
function verifyInSql(partnerId, amount) {
  return Number(psql(
    `INSERT INTO payments (amount, currency, partner_id) VALUES (${amount}, 'NGN', ${partnerId})`,
    "SELECT id FROM verify_payment(currval(pg_get_serial_sequence('payments', 'id')))",
  ));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- the browser ----

let browser;
let userDataDir;
let partnerA;
let partnerB;
let admin;

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  await startServer();
  partnerA = Number(psql("INSERT INTO partners (name) VALUES ('Ada Lovelace Media') RETURNING id"));
  partnerB = Number(psql("INSERT INTO partners (name, commission_rate) VALUES ('Other Partner', 0.05) RETURNING id"));
  admin = adminToken();
  userDataDir = mkdtempSync(path.join(tmpdir(), 'commissions-e2e-chromium-'));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  });
});

after(async () => {
  await browser?.close();
  await stopServer();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
});

async function openDashboard(token, query = '') {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(err.message));
  page.problems = problems;
  // Toasts leave after a few seconds; count every one that was ever shown.
  await page.addInitScript(() => {
    window.__toasts = [];
    window.__states = [];
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) {
          if (node.classList?.contains('toast')) window.__toasts.push(node.dataset.paymentId);
        }
        if (record.type === 'attributes' && record.target.id === 'status') window.__states.push(record.target.dataset.state);
      }
    }).observe(document, { childList: true, subtree: true, attributes: true, attributeFilter: ['data-state'] });
  });
  await page.goto(`${BASE}/?token=${token}${query}`);
  return page;
}

const status = (page) => page.locator('#status');
const earned = (page, partnerId, currency = 'NGN') =>
  page.locator(`.total[data-partner-id="${partnerId}"][data-currency="${currency}"] [data-field="earned"]`);
const rowsFor = (page, paymentId) => page.locator(`#feed tr[data-payment-id="${paymentId}"]`);
const toastsFor = (page, paymentId) => page.locator(`.toast[data-payment-id="${paymentId}"]`);
const toastsEverShown = (page, paymentId) =>
  page.evaluate((id) => window.__toasts.filter((t) => t === String(id)).length, paymentId);

async function waitForState(page, state) {
  await page.waitForSelector(`#status[data-state="${state}"]`, WAIT);
}

// ---- the tests ----

describe('the partner dashboard', () => {
  test('shows a commission live, survives a server restart and shows the missed one exactly once', async () => {
    const page = await openDashboard(partnerToken(partnerA));
    const adminPage = await openDashboard(admin);
    await waitForState(page, 'live');
    await waitForState(adminPage, 'live');
    assert.equal(await page.textContent('#title'), 'Ada Lovelace Media');
    assert.ok(!page.url().includes('token='), 'the token is removed from the address bar');

    // Verified through the REST API: toast and total, without a reload.
    const first = await verifyThroughApi(partnerA, '100.00');
    await toastsFor(page, first).waitFor(WAIT);
    await page.waitForFunction(
      ([id]) => document.querySelector(`.total[data-partner-id="${id}"][data-currency="NGN"] [data-field="earned"]`)?.textContent === '2.00',
      [partnerA],
      WAIT,
    );
    assert.equal(await rowsFor(page, first).count(), 1);
    assert.match(await toastsFor(page, first).textContent(), /New commission: \+NGN 2\.00/);
    // The admin view sees the same event, tagged with its partner.
    await rowsFor(adminPage, first).waitFor(WAIT);
    assert.match(await rowsFor(adminPage, first).textContent(), new RegExp(`#${partnerA}`));
    await page.screenshot({ path: path.join(artifacts, '01-live.png') });

    // Server down: the indicator says so, with a reason.
    await stopServer();
    await waitForState(page, 'reconnecting');
    assert.notEqual((await page.textContent('#status-reason')).trim(), '');
    await page.screenshot({ path: path.join(artifacts, '02-reconnecting.png') });

    // A commission commits while no node is up; it must arrive on resume, once.
    const missed = verifyInSql(partnerA, '250.00');
    await startServer();
    await waitForState(page, 'live');
    await rowsFor(page, missed).waitFor(WAIT);
    assert.ok(
      (await page.evaluate(() => window.__states)).includes('replaying'),
      'the indicator said it was replaying what was missed',
    );
    await page.waitForFunction(
      ([id]) => document.querySelector(`.total[data-partner-id="${id}"][data-currency="NGN"] [data-field="earned"]`)?.textContent === '7.00',
      [partnerA],
      WAIT,
    );
    // One more live event after the resume proves the stream moved past the
    // missed one; by then a duplicate of it would have been delivered too.
    const next = await verifyThroughApi(partnerA, '50.00');
    await rowsFor(page, next).waitFor(WAIT);
    assert.equal(await rowsFor(page, missed).count(), 1, 'the missed commission is listed once');
    assert.equal(await toastsEverShown(page, missed), 1, 'and announced once');
    assert.equal(await toastsEverShown(page, first), 1);
    assert.equal(await rowsFor(page, first).count(), 1, 'the first one is not repeated by the replay');
    assert.equal(await earned(page, partnerA).textContent(), '8.00');
    assert.equal(await page.locator('#feed tr').count(), 3);
    await page.screenshot({ path: path.join(artifacts, '03-resumed.png') });
    await page.screenshot({ path: path.join(artifacts, 'dashboard.png') });

    assert.deepEqual(page.problems, []);
    assert.deepEqual(adminPage.problems, []);
    await adminPage.close();
    await page.close();
  });

  test('shows the lifecycle live: approved at once with no hold, a payout created, sent and paid', async () => {
    const created = await api('POST', '/api/partners', admin, { name: 'Grace Hopper Media', hold_days: 0 });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const partnerC = created.body.id;
    psql("UPDATE currencies SET payout_minimum = 1 WHERE code = 'NGN'");
    const page = await openDashboard(partnerToken(partnerC));
    await waitForState(page, 'live');
    const field = (name) => page.locator(`.total[data-partner-id="${partnerC}"][data-currency="NGN"] [data-field="${name}"]`);
    const fieldIs = (name, value) => page.waitForFunction(
      ([id, f, v]) => document.querySelector(`.total[data-partner-id="${id}"][data-currency="NGN"] [data-field="${f}"]`)?.textContent === v,
      [partnerC, name, value],
      WAIT,
    );

    // A hold of 0 days: earned and approved in the same commit.
    const payment = await verifyThroughApi(partnerC, '500.00');
    await rowsFor(page, payment).waitFor(WAIT);
    await fieldIs('approved', '10.00');
    await fieldIs('balance', '10.00');
    assert.equal(await field('pending').textContent(), '0.00');
    await page.locator('#feed tr[data-kind="approved"]').waitFor(WAIT);

    // A payout run: the payout appears, the balance moves into it.
    const run = await api('POST', '/api/payouts/run', admin, { partner_id: partnerC });
    assert.equal(run.status, 200, JSON.stringify(run.body));
    assert.equal(run.body.payouts.length, 1);
    const payoutId = run.body.payouts[0].id;
    const payoutRow = page.locator(`#payouts tr[data-payout-id="${payoutId}"]`);
    await page.waitForSelector(`#payouts tr[data-payout-id="${payoutId}"][data-state="pending"]`, WAIT);
    await fieldIs('in_payout', '10.00');
    await fieldIs('balance', '0.00');
    assert.match(await payoutRow.textContent(), /NGN 10\.00/);

    // Sent, then paid with the provider's reference: the row moves, paid grows.
    assert.equal((await api('POST', `/api/payouts/${payoutId}/sent`, admin, {})).status, 200);
    await page.waitForSelector(`#payouts tr[data-payout-id="${payoutId}"][data-state="sent"]`, WAIT);
    const paid = await api('POST', `/api/payouts/${payoutId}/paid`, admin, { provider_reference: 'TRF_e2e_1' });
    assert.equal(paid.status, 200, JSON.stringify(paid.body));
    await page.waitForSelector(`#payouts tr[data-payout-id="${payoutId}"][data-state="paid"]`, WAIT);
    await fieldIs('paid', '10.00');
    await fieldIs('in_payout', '0.00');
    assert.match(await payoutRow.textContent(), /TRF_e2e_1/);
    assert.equal(await page.locator('#payouts tr').count(), 1, 'one payout, updated in place');
    await page.screenshot({ path: path.join(artifacts, '04-lifecycle.png') });

    // A page opened afterwards loads the same from the REST API.
    const later = await openDashboard(partnerToken(partnerC));
    await waitForState(later, 'live');
    await later.waitForSelector(`#payouts tr[data-payout-id="${payoutId}"][data-state="paid"]`, WAIT);
    assert.equal(
      await later.locator(`.total[data-partner-id="${partnerC}"][data-currency="NGN"] [data-field="paid"]`).textContent(),
      '10.00',
    );
    assert.equal(psql('SELECT count(*) FROM commission_audit'), '0');
    assert.deepEqual(page.problems, []);
    assert.deepEqual(later.problems, []);
    await later.close();
    await page.close();
  });

  test('the inbox is live and read on one tab clears the others; the chart draws the earnings', async () => {
    const created = await api('POST', '/api/partners', admin, { name: 'Inbox Partner' });
    const partnerD = created.body.id;
    const one = await openDashboard(partnerToken(partnerD));
    const two = await openDashboard(partnerToken(partnerD));
    await waitForState(one, 'live');
    await waitForState(two, 'live');
    const unread = (page) => page.locator('#unread').getAttribute('data-count');

    const first = await verifyThroughApi(partnerD, '100.00');
    const second = await verifyThroughApi(partnerD, '200.00');
    for (const page of [one, two]) {
      await page.waitForFunction(() => document.querySelector('#unread')?.dataset.count === '2', null, WAIT);
      assert.equal(await page.locator('#inbox li.unread').count(), 2);
    }
    // Read on tab one: cleared on tab two without a reload.
    await one.locator('#inbox li.unread button').first().click();
    await two.waitForFunction(() => document.querySelector('#unread')?.dataset.count === '1', null, WAIT);
    assert.equal(await unread(one), '1');
    assert.equal(await two.locator('#inbox li.unread').count(), 1);
    assert.equal(psql(`SELECT count(*) FROM notifications WHERE partner_id = ${partnerD} AND read_at IS NULL`), '1');

    // The chart: today's point is the net of both commissions (2.00 + 4.00).
    await one.waitForFunction(() => document.querySelector('#earnings')?.dataset.total === '60000', null, WAIT);
    assert.equal(await one.locator('#earnings canvas').count(), 1);
    assert.equal(await one.evaluate(() => window.earningsChart.data[1].length), 30);
    await one.locator('.range[data-days="90"]').click();
    await one.waitForFunction(() => window.earningsChart.data[1].length === 90, null, WAIT);
    assert.equal(await one.locator('#earnings').getAttribute('data-total'), '60000');
    await one.screenshot({ path: path.join(artifacts, '05-inbox-chart.png'), fullPage: true });
    assert.ok(first && second);
    assert.deepEqual(one.problems, []);
    assert.deepEqual(two.problems, []);
    await one.close();
    await two.close();
  });

  test('an expired token puts the page offline instead of retrying', async () => {
    const page = await openDashboard(partnerToken(partnerA, Math.floor(Date.now() / 1000) + 6));
    await waitForState(page, 'live');
    await waitForState(page, 'offline');
    assert.match(await page.textContent('#status-reason'), /token expired/);
    await page.close();
  });
});

describe('a partner token at the socket (the page code cannot widen it)', () => {
  // Raw sockets opened from a page of the origin, as altered page code could.
  async function openSocket(page, query) {
    return page.evaluate((q) => new Promise((resolve) => {
      const ws = new WebSocket(`${location.origin.replace('http', 'ws')}/notifications?${q}`);
      const got = { opened: false, messages: [], close: null };
      window.__sockets = window.__sockets || [];
      window.__sockets.push({ ws, got });
      ws.onopen = () => { got.opened = true; };
      ws.onmessage = (m) => {
        got.messages.push(JSON.parse(m.data));
        if (got.messages.length === 1) resolve(window.__sockets.length - 1);
      };
      ws.onclose = (c) => { got.close = c.code; resolve(window.__sockets.length - 1); };
    }), query);
  }
  const socketState = (page, i) => page.evaluate((n) => window.__sockets[n].got, i);

  test('cannot join another partner\'s room, and receives none of its events', async () => {
    const page = await browser.newPage();
    await page.goto(`${BASE}/healthz`);
    const tokenB = partnerToken(partnerB);
    // A socket of A's own keeps the node listening on A's channel too.
    const ownA = await openSocket(page, `token=${partnerToken(partnerA)}`);
    assert.equal((await socketState(page, ownA)).messages[0]?.type, 'ready');

    const forged = await socketState(page, await openSocket(page, `token=${tokenB}&partner_id=${partnerA}`));
    assert.equal(forged.opened, false, 'a partner token asking for another partner is refused at the handshake');
    assert.equal(forged.messages.length, 0);

    const own = await openSocket(page, `token=${tokenB}&since=0`);
    const ready = (await socketState(page, own)).messages[0];
    assert.equal(ready.type, 'ready');
    assert.equal(ready.partner_id, partnerB);
    assert.equal(ready.replay, 0, 'partner B has no events: A\'s are not replayed to it');

    // A's commission commits before B's; the node relays in commit order, so
    // if A's event could reach B's socket it would arrive before B's own.
    const forA = await verifyThroughApi(partnerA, '10.00');
    const forB = await verifyThroughApi(partnerB, '10.00');
    await page.waitForFunction(([n, id]) => window.__sockets[n].got.messages.some((m) => m.data?.payment_id === id), [own, forB], WAIT);
    const seen = (await socketState(page, own)).messages.slice(1);
    assert.ok(seen.every((m) => m.partner_id === partnerB), JSON.stringify(seen));
    assert.ok(!seen.some((m) => m.data?.payment_id === forA));

    // The REST reads refuse it too, and leak nothing.
    const read = await api('GET', `/api/partners/${partnerA}`, tokenB);
    assert.equal(read.status, 403);
    assert.ok(!JSON.stringify(read.body).includes('Ada Lovelace'));
    await page.close();
  });
});

// ---- the operator console (the admin room) ----

/** Fills a console form, submits it, answers the confirmation and returns the result shown. */
async function act(page, form, values = {}, { answer, cancel = false } = {}) {
  for (const [name, value] of Object.entries(values)) {
    const input = page.locator(`${form} [name="${name}"]`);
    if (typeof value === 'boolean') await input.setChecked(value);
    else await input.fill(value);
  }
  await page.click(`${form} button[type="submit"]`);
  return confirmAndRead(page, { answer, cancel });
}

/** Answers the open confirmation dialog; waits for the action's outcome and returns its text. */
async function confirmAndRead(page, { answer, cancel = false } = {}) {
  await page.waitForSelector('#confirm[open]', WAIT);
  const count = Number(await page.locator('#console-result').getAttribute('data-count') || 0);
  if (answer !== undefined) await page.fill('#confirm-input', answer);
  await page.click(cancel ? '#confirm [data-close="cancel"]' : '#confirm-ok');
  await page.waitForFunction(
    (n) => Number(document.querySelector('#console-result').dataset.count || 0) > n,
    count,
    WAIT,
  );
  const result = page.locator('#console-result');
  return { outcome: await result.getAttribute('data-outcome'), text: await result.textContent() };
}

const cardField = (page, partnerId, field) =>
  page.locator(`.total[data-partner-id="${partnerId}"][data-currency="NGN"] [data-field="${field}"]`);
async function fieldIs(page, partnerId, field, value) {
  await page.waitForFunction(
    ([id, f, v]) => document.querySelector(`.total[data-partner-id="${id}"][data-currency="NGN"] [data-field="${f}"]`)?.textContent === v,
    [partnerId, field, value],
    WAIT,
  );
}

describe('the operator console', () => {
  test('shows the history on open, then live, with no gap or duplicate between them', async () => {
    const created = await api('POST', '/api/partners', admin, { name: 'History Partner', commission_rate: '0.1' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const partner = created.body.id;
    const before1 = await verifyThroughApi(partner, '100.00');
    const before2 = await verifyThroughApi(partner, '200.00');

    const page = await openDashboard(admin);
    await waitForState(page, 'live');
    // Both earlier commissions come from the REST history, once each, unannounced.
    await rowsFor(page, before1).waitFor(WAIT);
    assert.equal(await rowsFor(page, before1).count(), 1);
    assert.equal(await rowsFor(page, before2).count(), 1);
    assert.equal(await toastsEverShown(page, before1), 0, 'history is not announced as new');
    // Today's totals per partner and currency, with the partner's name.
    await fieldIs(page, partner, 'earned', '30.00');
    assert.match(await page.locator(`.total[data-partner-id="${partner}"] .partner-tag`).textContent(), /History Partner \(#\d+\)/);

    // The next one arrives live, once: the stream started right after the history.
    const live = await verifyThroughApi(partner, '50.00');
    await rowsFor(page, live).waitFor(WAIT);
    await toastsFor(page, live).waitFor(WAIT);
    await fieldIs(page, partner, 'earned', '35.00');
    const another = await verifyThroughApi(partner, '10.00');
    await rowsFor(page, another).waitFor(WAIT);
    for (const id of [before1, before2, live, another]) assert.equal(await rowsFor(page, id).count(), 1, `payment ${id} listed once`);
    assert.equal(await toastsEverShown(page, live), 1);
    assert.equal(await toastsEverShown(page, before2), 0);

    // The filter by partner name or id hides every other partner's rows and cards.
    await page.fill('#partner-filter', 'history partner');
    assert.equal(await page.locator(`#feed tr:not([hidden]):not([data-partner-id="${partner}"])`).count(), 0);
    assert.ok(await page.locator(`#feed tr:not([hidden])[data-partner-id="${partner}"]`).count() >= 4);
    assert.equal(await page.locator(`.total:not([hidden]):not([data-partner-id="${partner}"])`).count(), 0);
    await page.fill('#partner-filter', String(partnerA));
    assert.equal(await page.locator(`#feed tr:not([hidden])[data-partner-id="${partner}"]`).count(), 0);
    assert.ok(await page.locator(`.total:not([hidden])[data-partner-id="${partnerA}"]`).count() >= 1);
    await page.fill('#partner-filter', '');
    assert.ok(await page.locator(`#feed tr:not([hidden])[data-partner-id="${partner}"]`).count() >= 4);

    // A partner with no event on the page is found by the server's search, with its settings.
    const quiet = (await api('POST', '/api/partners', admin, { name: 'Quiet Partner', hold_days: 7 })).body.id;
    await page.fill('#partner-filter', 'quiet');
    const found = page.locator(`#partner-results li[data-partner-id="${quiet}"]`);
    await found.waitFor(WAIT);
    assert.match(await found.textContent(), /^Quiet Partner \(#\d+\) · rate [\d.]+ · hold 7 days/);
    assert.equal(await page.locator('#partner-results li').count(), 1);
    await page.fill('#partner-filter', '');
    assert.equal(await page.locator('#partner-results li').count(), 0);

    assert.deepEqual(page.problems, []);
    await page.close();
  });

  test('runs each operator action after a confirmation and shows its result, or the problem in words', async () => {
    psql("UPDATE currencies SET payout_minimum = 1 WHERE code = 'NGN'");
    const page = await openDashboard(admin);
    await waitForState(page, 'live');
    const keys = [];
    page.on('request', (req) => {
      if (req.method() === 'POST' && req.url().includes('/api/')) keys.push(req.headers()['idempotency-key']);
    });

    // Cancelled: nothing is sent.
    let result = await act(page, '#form-partner', { name: 'Never Made' }, { cancel: true });
    assert.equal(result.outcome, 'cancelled');
    assert.equal(keys.length, 0);

    // Create a partner with its rate, hold period and recurring months.
    result = await act(page, '#form-partner', { name: 'Console Co', commission_rate: '0.1', hold_days: '0', recurring_months: '12' });
    assert.equal(result.outcome, 'ok', result.text);
    assert.match(result.text, /Partner Console Co \(#\d+\) created/);
    const partner = Number(result.text.match(/#(\d+)/)[1]);
    let shown = (await api('GET', `/api/partners/${partner}`, admin)).body;
    assert.deepEqual([shown.hold_days, shown.recurring_months], [0, 12]);

    // Change its rate.
    result = await act(page, '#form-partner', { partner_id: String(partner), name: '', commission_rate: '0.2', hold_days: '', recurring_months: '' });
    assert.equal(result.outcome, 'ok', result.text);
    assert.match(result.text, /updated: rate 0\.2/);
    shown = (await api('GET', `/api/partners/${partner}`, admin)).body;
    assert.match(shown.commission_rate, /^0\.20*$/);
    await page.fill('#form-partner [name="partner_id"]', '');

    // Record and verify a payment: its commission arrives live (hold 0: approved at once).
    result = await act(page, '#form-payment', { amount: '100.00', currency: 'NGN', partner_id: String(partner) });
    assert.equal(result.outcome, 'ok', result.text);
    assert.match(result.text, /Payment #\d+ of NGN 100\.00 recorded and verified/);
    const paid = Number(result.text.match(/#(\d+)/)[1]);
    await rowsFor(page, paid).first().waitFor(WAIT);
    await fieldIs(page, partner, 'earned', '20.00');
    await fieldIs(page, partner, 'approved', '20.00');

    // Record only, then verify it by id.
    result = await act(page, '#form-payment', { amount: '50.00', verify: false });
    assert.match(result.text, /recorded \(pending\)/);
    const pending = Number(result.text.match(/#(\d+)/)[1]);
    result = await act(page, '#form-verify', { payment_id: String(pending) });
    assert.equal(result.outcome, 'ok', result.text);
    assert.match(result.text, new RegExp(`Payment #${pending} verified`));
    await fieldIs(page, partner, 'earned', '30.00');

    // A partial refund reverses the commission in proportion; too much is refused, in words.
    result = await act(page, '#form-refund', { payment_id: String(paid), amount: '40.00' });
    assert.equal(result.outcome, 'ok', result.text);
    assert.match(result.text, /refunded; commission reversed: NGN 8\.00/);
    await fieldIs(page, partner, 'reversed', '8.00');
    result = await act(page, '#form-refund', { payment_id: String(paid), amount: '100.00' });
    assert.equal(result.outcome, 'error');
    assert.match(result.text, /^Refused \(409\): .*would pass the amount paid/);
    // The full refund of what is left.
    result = await act(page, '#form-refund', { payment_id: String(pending), amount: '' });
    assert.equal(result.outcome, 'ok', result.text);
    await fieldIs(page, partner, 'reversed', '18.00');

    // Approval and parked events on demand.
    await page.click('#run-approval');
    result = await confirmAndRead(page);
    assert.equal(result.outcome, 'ok', result.text);
    assert.match(result.text, /^\d+ commissions? approved in \d+ batch(es)?\.$/);
    await page.click('#reapply-parked');
    result = await confirmAndRead(page);
    assert.equal(result.outcome, 'ok', result.text);
    assert.match(result.text, /^\d+ applied, \d+ still parked, \d+ left\.$/);

    // Payouts: run for the partner, then mark it sent and paid from its row.
    result = await act(page, '#form-payouts', { partner_id: String(partner), currency: 'NGN' });
    assert.equal(result.outcome, 'ok', result.text);
    assert.equal(result.text, '1 payout created.');
    const row = page.locator(`#payouts tr[data-partner-id="${partner}"]`);
    await row.waitFor(WAIT);
    const payoutId = await row.getAttribute('data-payout-id');
    assert.match(await row.textContent(), /NGN 12\.00/);
    await row.locator('button[data-mark="sent"]').click();
    result = await confirmAndRead(page, { answer: 'TRF_console_1' });
    assert.equal(result.text, `Payout #${payoutId} is sent.`);
    await page.waitForSelector(`#payouts tr[data-payout-id="${payoutId}"][data-state="sent"]`, WAIT);
    await row.locator('button[data-mark="paid"]').click();
    result = await confirmAndRead(page, { answer: '' });
    assert.equal(result.text, `Payout #${payoutId} is paid.`);
    await page.waitForSelector(`#payouts tr[data-payout-id="${payoutId}"][data-state="paid"]`, WAIT);
    await fieldIs(page, partner, 'paid', '12.00');
    assert.match(await row.textContent(), /TRF_console_1/);

    // A second payout, failed with the provider's reason: the amount is payable again.
    result = await act(page, '#form-payment', { amount: '10.00', currency: 'NGN', partner_id: String(partner), verify: true });
    assert.equal(result.outcome, 'ok', result.text);
    result = await act(page, '#form-payouts', { partner_id: String(partner), currency: '' });
    assert.equal(result.text, '1 payout created.');
    const second = page.locator(`#payouts tr[data-partner-id="${partner}"][data-state="pending"]`);
    await second.waitFor(WAIT);
    const secondId = await second.getAttribute('data-payout-id');
    await second.locator('button[data-mark="failed"]').click();
    result = await confirmAndRead(page, { answer: 'account_closed' });
    assert.equal(result.text, `Payout #${secondId} is failed.`);
    await page.waitForSelector(`#payouts tr[data-payout-id="${secondId}"][data-state="failed"]`, WAIT);
    assert.match(await page.locator(`#payouts tr[data-payout-id="${secondId}"]`).textContent(), /account_closed/);
    await fieldIs(page, partner, 'balance', '2.00');
    // Marking a failed payout paid is refused, in words.
    await page.evaluate((id) => { document.querySelector(`#payouts tr[data-payout-id="${id}"] button[data-mark="paid"]`).click(); }, secondId);
    result = await confirmAndRead(page, { answer: 'TRF_late' });
    assert.equal(result.outcome, 'error');
    assert.match(result.text, /^Refused \(409\): \S+/);

    // Every POST carried an Idempotency-Key of its own.
    assert.ok(keys.length >= 12, `${keys.length} POSTs`);
    assert.ok(keys.every((k) => /^[0-9a-f-]{36}$/.test(k)), JSON.stringify(keys));
    assert.equal(new Set(keys).size, keys.length);

    await page.fill('#partner-filter', 'Console Co');
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(artifacts, 'console.png'), fullPage: true });
    assert.equal(psql('SELECT count(*) FROM commission_audit'), '0');
    assert.deepEqual(page.problems, []);
    await page.close();
  });
});

// The screenshots for the docs, when asked for (tests/e2e/run --update-docs).
after(() => {
  if (process.env.E2E_UPDATE_DOCS !== '1') return;
  for (const [shot, doc] of [['dashboard.png', 'dashboard.png'], ['04-lifecycle.png', 'dashboard-lifecycle.png'], ['console.png', 'console.png']]) {
    if (existsSync(path.join(artifacts, shot))) copyFileSync(path.join(artifacts, shot), path.join(here, '..', '..', 'docs', doc));
  }
});
