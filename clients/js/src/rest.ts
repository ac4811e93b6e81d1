/**
 * The REST API, typed. Every call sends the token from the token source
 * (called per request, so a refreshed token is used at once); an error
 * answer (always `application/problem+json`) throws an ApiError carrying
 * the problem. Admin writes send an `Idempotency-Key` (one per call unless
 * given), so a retry after a lost response replays instead of repeating.
 */

import type { Commission, Notification, Page, Partner, Payment, Payout, Problem, TokenSource } from './types.js';

export class ApiError extends Error {
  readonly status: number;
  readonly problem: Problem | null;

  constructor(status: number, problem: Problem | null, fallback: string) {
    super(problem?.detail || problem?.title || fallback);
    this.name = 'ApiError';
    this.status = status;
    this.problem = problem;
  }
}

export interface ApiOptions {
  /** The service's origin, e.g. `https://commissions.example.com`. */
  baseUrl: string;
  token: TokenSource;
  /** A fetch implementation (defaults to the global one). */
  fetch?: typeof fetch;
}

export interface PageQuery {
  limit?: number;
  cursor?: number;
}

export interface PayoutQuery extends PageQuery {
  currency?: string;
  state?: Payout['state'];
  partner_id?: number;
}

export interface EventPage {
  partner_id: number;
  last_seq: number;
  events: import('./types.js').CommissionEvent[];
}

export class CommissionsApi {
  private readonly baseUrl: string;
  private readonly tokenSource: TokenSource;
  private readonly fetchImpl: typeof fetch;

  constructor({ baseUrl, token, fetch: fetchImpl }: ApiOptions) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.tokenSource = token;
    this.fetchImpl = fetchImpl ?? globalThis.fetch.bind(globalThis);
  }

  /** The WebSocket URL of this service. */
  get streamUrl(): string {
    return `${this.baseUrl.replace(/^http/, 'ws')}/notifications`;
  }

  partner(id: number): Promise<Partner> {
    return this.get(`/api/partners/${id}`);
  }

  commissions(partnerId: number, query: PageQuery = {}): Promise<Page<Commission>> {
    return this.get(`/api/partners/${partnerId}/commissions${search(query)}`);
  }

  /** The partner's events after `since` (the same JSON as the stream). */
  events(partnerId: number, since = 0, limit?: number): Promise<EventPage> {
    return this.get(`/api/partners/${partnerId}/events${search({ since, limit })}`);
  }

  payouts(partnerId: number, query: Omit<PayoutQuery, 'partner_id'> = {}): Promise<Page<Payout>> {
    return this.get(`/api/partners/${partnerId}/payouts${search(query)}`);
  }

  /** Every partner's payouts (admin). */
  allPayouts(query: PayoutQuery = {}): Promise<Page<Payout>> {
    return this.get(`/api/payouts${search(query)}`);
  }

  notifications(query: { unread?: boolean; limit?: number; cursor?: number } = {}): Promise<{ items: Notification[]; next_cursor: number | null }> {
    return this.get(`/api/notifications${search(query)}`);
  }

  markRead(notificationId: number): Promise<Notification> {
    return this.send('POST', `/api/notifications/${notificationId}/read`, undefined);
  }

  createPartner(partner: { name: string; commission_rate?: string; hold_days?: number | null; recurring_months?: number | null }, idempotencyKey?: string): Promise<Partner> {
    return this.send('POST', '/api/partners', partner, idempotencyKey);
  }

  createPayment(payment: { amount: string; currency: string; partner_id?: number; reference?: string }, idempotencyKey?: string): Promise<Payment> {
    return this.send('POST', '/api/payments', payment, idempotencyKey);
  }

  verifyPayment(paymentId: number, idempotencyKey?: string): Promise<{ payment: Payment; commission: Commission | null }> {
    return this.send('POST', `/api/payments/${paymentId}/verify`, undefined, idempotencyKey);
  }

  /** Refunds `amount` more (a decimal string), or the rest without one. */
  refundPayment(paymentId: number, amount?: string, idempotencyKey?: string): Promise<{ payment: Payment; reversal: Commission | null }> {
    return this.send('POST', `/api/payments/${paymentId}/refund`, amount === undefined ? undefined : { amount }, idempotencyKey);
  }

  runPayouts(scope: { partner_id?: number; currency?: string } = {}, idempotencyKey?: string): Promise<{ payouts: Payout[] }> {
    return this.send('POST', '/api/payouts/run', scope, idempotencyKey);
  }

  markPayoutSent(payoutId: number, providerReference?: string, idempotencyKey?: string): Promise<Payout> {
    return this.send('POST', `/api/payouts/${payoutId}/sent`, { provider_reference: providerReference }, idempotencyKey);
  }

  markPayoutPaid(payoutId: number, providerReference: string, idempotencyKey?: string): Promise<Payout> {
    return this.send('POST', `/api/payouts/${payoutId}/paid`, { provider_reference: providerReference }, idempotencyKey);
  }

  markPayoutFailed(payoutId: number, reason: string, idempotencyKey?: string): Promise<Payout> {
    return this.send('POST', `/api/payouts/${payoutId}/failed`, { reason }, idempotencyKey);
  }

  // ---- internals ----

  private async get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path, undefined, undefined);
  }

  private async send<T>(method: 'POST', path: string, body: unknown, idempotencyKey?: string): Promise<T> {
    return this.request<T>(method, path, body, idempotencyKey ?? newKey());
  }

  private async request<T>(method: string, path: string, body: unknown, idempotencyKey: string | undefined): Promise<T> {
    const token = typeof this.tokenSource === 'function' ? await this.tokenSource() : this.tokenSource;
    const headers: Record<string, string> = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
    const response = await this.fetchImpl(`${this.baseUrl}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) {
      let problem: Problem | null = null;
      try {
        problem = JSON.parse(text) as Problem;
      } catch {
        /* not JSON: keep the status line */
      }
      throw new ApiError(response.status, problem, `${response.status} ${response.statusText}`);
    }
    return (text ? JSON.parse(text) : null) as T;
  }
}

function search(query: object): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) if (value !== undefined && value !== null) params.set(key, String(value));
  const text = params.toString();
  return text ? `?${text}` : '';
}

function newKey(): string {
  return globalThis.crypto.randomUUID();
}
