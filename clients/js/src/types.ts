// The wire shapes of the commissions service, as its OpenAPI document
// (`GET /openapi.json`) and the stream protocol (docs/stream.md) describe
// them. Amounts are decimal strings with the currency's
// minor units; never convert them to numbers.

/** A decimal string such as "2.00" (NGN), "25" (JPY) or "0.201" (KWD). */
export type Money = string;

/** A partner's totals in one currency. */
export interface Totals {
  earned: Money;
  /** In the hold period, not yet approved (held included). */
  pending: Money;
  /** Approved and in no payout yet. */
  approved?: Money;
  /** What the next payout would pay; negative while a clawback is owed. */
  balance?: Money;
  /** In payouts created or sent, not yet paid. */
  in_payout?: Money;
  paid: Money;
  reversed: Money;
  held?: Money;
}

/** Per currency: `{"NGN": {...}}`. */
export type TotalsByCurrency = Record<string, Totals>;

export type EventType =
  | 'commission.created'
  | 'commission.reversed'
  | 'commission.reinstated'
  | 'commission.held'
  | 'commission.released'
  | 'commission.approved'
  | 'payout.created'
  | 'payout.sent'
  | 'payout.paid'
  | 'payout.failed';

/** One event of a partner's stream, the same JSON on the socket and from `GET /api/partners/{id}/events`. */
export interface CommissionEvent {
  type: EventType | string;
  /** The admin room's cursor: global, gapless. */
  position: number;
  partner_id: number;
  /** The partner room's cursor: per partner, gapless. */
  seq: number;
  occurred_at: string;
  data: {
    totals?: TotalsByCurrency;
    currency?: string;
    amount?: Money;
    [field: string]: unknown;
  };
}

/** The server's first message on a socket. */
export interface ReadyMessage {
  type: 'ready';
  room: 'partner' | 'admin';
  partner_id?: number;
  seq?: number;
  position?: number;
  totals?: TotalsByCurrency;
  /** How many replayed events follow before live ones. */
  replay?: number;
}

export type ConnectionState = 'connecting' | 'live' | 'reconnecting' | 'offline';

/** Where the token comes from: a fixed string, or a function called before every (re)connection and request (refresh it there). */
export type TokenSource = string | (() => string | Promise<string>);

export interface Partner {
  id: number;
  name: string;
  commission_rate: string;
  last_seq: number;
  hold_days?: number | null;
  recurring_months?: number | null;
  totals: TotalsByCurrency;
  created_at: string;
}

export interface Commission {
  id: number;
  payment_id: number;
  partner_id: number;
  kind: string;
  stage: string;
  amount: Money;
  currency: string;
  rate: string;
  payment_amount: Money;
  created_at: string;
}

export interface Page<T> {
  items: T[];
  next_cursor: number | null;
}

export interface Payout {
  id: number;
  partner_id: number;
  currency: string;
  amount: Money;
  approved_amount: Money;
  clawback_amount: Money;
  state: 'pending' | 'sent' | 'paid' | 'failed';
  provider_reference: string | null;
  failure_reason: string | null;
  items: number;
  created_at: string;
  sent_at: string | null;
  paid_at: string | null;
  failed_at: string | null;
}

export interface Payment {
  id: number;
  amount: Money;
  currency: string;
  status: 'pending' | 'verified' | 'failed' | 'refunded';
  partner_id: number | null;
  provider: string;
  reference: string | null;
  created_at: string;
  verified_at: string | null;
  refunded_at: string | null;
  refunded_amount: Money;
}

export interface Notification {
  id: number;
  partner_id: number;
  event_position: number;
  title: string;
  body: string;
  read_at: string | null;
  created_at: string;
}

/** An RFC 9457 problem, as every error of the API is. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
}
