/**
 * `useCommissionUpdates`: a partner's (or an admin's) live totals, recent
 * events and connection state, for React.
 *
 *   const { totals, events, state } = useCommissionUpdates({
 *     baseUrl: 'https://commissions.example.com',
 *     getToken: () => session.token(),
 *   });
 *
 * For a partner token it first reads the partner (totals and `last_seq`),
 * then follows the stream from that seq, so nothing committed in between is
 * missed, and nothing is counted twice.
 */

import { useEffect, useRef, useState } from 'react';

import { CommissionsApi } from './rest.js';
import { CommissionsClient, decodeTokenPayload } from './stream.js';
import type { CommissionEvent, ConnectionState, TotalsByCurrency } from './types.js';

export interface CommissionUpdatesOptions {
  baseUrl: string;
  /** Called before every request and (re)connection: return a fresh token. */
  getToken: () => string | Promise<string>;
  /** The partner to follow; defaults to the token's `partner_id` (an admin token without it follows the admin room). */
  partnerId?: number;
  /** How many recent events to keep, newest first (default 20). */
  recent?: number;
  /** The WebSocket class, where there is no global one (Node 20: `ws`). */
  webSocket?: ConstructorParameters<typeof CommissionsClient>[0]['webSocket'];
}

export interface CommissionUpdates {
  /** Per currency; `{}` until the first read or `ready`. */
  totals: TotalsByCurrency;
  /** The most recent events, newest first. */
  events: CommissionEvent[];
  state: ConnectionState;
  /** Why, in a few words ('' while live). */
  reason: string;
  /** An error reading the partner, if any (the stream still runs). */
  error: Error | null;
}

export function useCommissionUpdates(options: CommissionUpdatesOptions): CommissionUpdates {
  const { baseUrl, partnerId, recent = 20 } = options;
  const [totals, setTotals] = useState<TotalsByCurrency>({});
  const [events, setEvents] = useState<CommissionEvent[]>([]);
  const [state, setState] = useState<ConnectionState>('connecting');
  const [reason, setReason] = useState('');
  const [error, setError] = useState<Error | null>(null);
  // The latest callbacks without restarting the stream on every render.
  const latest = useRef(options);
  latest.current = options;

  useEffect(() => {
    let client: CommissionsClient | null = null;
    let cancelled = false;
    const getToken = () => latest.current.getToken();
    const api = new CommissionsApi({ baseUrl, token: getToken });
    const merge = (next: TotalsByCurrency | undefined) => {
      if (next) setTotals((current) => ({ ...current, ...next }));
    };

    void (async () => {
      let since: number | undefined;
      let follow = partnerId;
      try {
        follow ??= Number(decodeTokenPayload(await getToken())?.partner_id) || undefined;
        if (follow !== undefined) {
          const partner = await api.partner(follow);
          merge(partner.totals);
          since = partner.last_seq;
        }
      } catch (err) {
        if (!cancelled) setError(err as Error);
      }
      if (cancelled) return;
      client = new CommissionsClient({
        url: api.streamUrl,
        token: getToken,
        since: since ?? null,
        partnerId: partnerId ?? null,
        webSocket: latest.current.webSocket,
      });
      client.on('state', ({ state: s, reason: r }) => {
        setState(s);
        setReason(r);
      });
      client.on('ready', (ready) => merge(ready.totals));
      client.on('event', ({ event, replayed }) => {
        // Replayed events carry the totals of their time; ready has today's.
        if (!replayed) merge(event.data.totals);
        setEvents((list) => [event, ...list].slice(0, recent));
      });
      client.start();
    })();

    return () => {
      cancelled = true;
      client?.stop('unmounted');
    };
  }, [baseUrl, partnerId, recent]);

  return { totals, events, state, reason, error };
}
