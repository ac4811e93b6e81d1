// The typed client against a real node (no mocked server): REST calls, the
// stream with resume and de-duplication, token refresh on expiry, and the
// React hook. Run by ../run, which builds the package and the binary and
// passes a migrated database and a free port.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createElement } from 'react';
import TestRenderer from 'react-test-renderer';
import WebSocket from 'ws';

import { ApiError, CommissionsApi, CommissionsClient } from '../dist/index.js';
import { useCommissionUpdates } from '../dist/react.js';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run clients/js/run`);
  return value;
};
const BIN = env('CLIENT_TEST_BIN');
const DATABASE_URL = env('CLIENT_TEST_DATABASE_URL');
const PORT = Number(env('CLIENT_TEST_PORT'));
const JWT_SECRET = env('JWT_SECRET');
const BASE = `http://127.0.0.1:${PORT}`;

let server;
process.on('exit', () => server?.kill('SIGKILL'));

async function startServer() {
  server = spawn(BIN, ['serve'], {
    env: { ...process.env, DATABASE_URL, JWT_SECRET, BIND_ADDR: `127.0.0.1:${PORT}`, RUST_LOG: 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${BASE}/readyz`)).ok) return;
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error('the server did not become ready');
    await sleep(100);
  }
}

function mint(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', JWT_SECRET).update(signed).digest('base64url')}`;
}
const inSeconds = (s) => Math.floor(Date.now() / 1000) + s;
const adminToken = () => mint({ sub: 'client-test-admin', role: 'admin', exp: inSeconds(3600) });
const partnerToken = (id, ttl = 3600) => mint({ sub: `partner-${id}`, role: 'partner', partner_id: id, exp: inSeconds(ttl) });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function psql(sql) {
  const out = spawnSync('psql', [DATABASE_URL, '-qAtX', '-v', 'ON_ERROR_STOP=1', '-c', sql], { encoding: 'utf8' });
  if (out.status !== 0) throw new Error(out.stderr);
  return out.stdout.trim();
}

async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const admin = new CommissionsApi({ baseUrl: BASE, token: adminToken });

async function paid(partnerId, amount) {
  const payment = await admin.createPayment({ amount, currency: 'NGN', partner_id: partnerId });
  return admin.verifyPayment(payment.id);
}

before(startServer);
after(() => server?.kill('SIGTERM'));

test('REST calls are typed and errors carry the problem', async () => {
  const partner = await admin.createPartner({ name: 'Client Test Ltd', hold_days: 0 });
  assert.equal(partner.name, 'Client Test Ltd');
  const { commission } = await paid(partner.id, '100.00');
  assert.equal(commission.amount, '2.00');
  const own = new CommissionsApi({ baseUrl: BASE, token: () => partnerToken(partner.id) });
  const read = await own.partner(partner.id);
  assert.equal(read.totals.NGN.earned, '2.00');
  assert.equal(read.totals.NGN.approved, '2.00', 'no hold: approved at once');
  const page = await own.commissions(partner.id, { limit: 1 });
  assert.equal(page.items.length, 1);
  const events = await own.events(partner.id, 0);
  assert.deepEqual(events.events.map((e) => e.type), ['commission.created', 'commission.approved']);

  // Another partner's data: a 403 problem, as an ApiError.
  const err = await own.partner(partner.id + 1000).catch((e) => e);
  assert.ok(err instanceof ApiError);
  assert.equal(err.status, 403);
  assert.equal(err.problem.type, '/problems/forbidden');
  // The same Idempotency-Key replays: one payment.
  const key = `client-test-${Date.now()}`;
  const first = await admin.createPayment({ amount: '5.00', currency: 'NGN' }, key);
  const again = await admin.createPayment({ amount: '5.00', currency: 'NGN' }, key);
  assert.equal(again.id, first.id);
});

test('the stream resumes from its cursor: every event once, in order, across a restart of the client', async () => {
  const partner = await admin.createPartner({ name: 'Stream Test' });
  const got = [];
  const make = (since) => {
    const client = new CommissionsClient({
      url: `ws://127.0.0.1:${PORT}/notifications`,
      token: () => partnerToken(partner.id),
      since,
      webSocket: WebSocket,
      backoff: { baseMs: 50, capMs: 200 },
    });
    client.on('event', ({ event }) => got.push(event.seq));
    return client;
  };
  const first = make(0).start();
  await until('live', () => first.state === 'live');
  await paid(partner.id, '10.00');
  await paid(partner.id, '20.00');
  await until('two events', () => got.length === 2);
  first.stop();
  const cursor = first.cursor;
  // Committed while no client listens: replayed on resume, once.
  await paid(partner.id, '30.00');
  const second = make(cursor).start();
  await paid(partner.id, '40.00');
  await until('four events', () => got.length === 4);
  await sleep(200);
  assert.deepEqual(got, [1, 2, 3, 4]);
  second.stop();
});

test('an expired token is refreshed from the token source and the stream goes on', async () => {
  const partner = await admin.createPartner({ name: 'Refresh Test' });
  let handed = 0;
  const client = new CommissionsClient({
    url: `ws://127.0.0.1:${PORT}/notifications`,
    // The first token expires in 3 s; later ones last an hour.
    token: () => partnerToken(partner.id, handed++ === 0 ? 3 : 3600),
    since: 0,
    webSocket: WebSocket,
    backoff: { baseMs: 50, capMs: 200 },
  });
  const seqs = [];
  client.on('event', ({ event }) => seqs.push(event.seq));
  client.start();
  await until('live', () => client.state === 'live');
  await until('the server to close on expiry and the client to refresh', () => handed >= 2, 15_000);
  await until('live again', () => client.state === 'live');
  await paid(partner.id, '10.00');
  await until('the event after the refresh', () => seqs.length === 1);
  assert.equal(client.state, 'live');
  client.stop();
});

test('useCommissionUpdates: totals from the read, then live, events newest first', async () => {
  const partner = await admin.createPartner({ name: 'Hook Test' });
  await paid(partner.id, '100.00');
  let latest;
  function Probe() {
    latest = useCommissionUpdates({ baseUrl: BASE, getToken: () => partnerToken(partner.id), webSocket: WebSocket });
    return null;
  }
  const renderer = TestRenderer.create(createElement(Probe));
  await until('live', () => latest.state === 'live');
  assert.equal(latest.totals.NGN.earned, '2.00');
  assert.deepEqual(latest.events, [], 'the read covered the first: not replayed as new');
  await paid(partner.id, '50.00');
  await until('the live event', () => latest.events.length === 1);
  assert.equal(latest.totals.NGN.earned, '3.00');
  assert.equal(latest.events[0].seq, 2);
  renderer.unmount();
  assert.equal(psql('SELECT count(*) FROM commission_audit'), '0');
});
