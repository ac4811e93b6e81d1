-- Views for the people who read the engine in psql. Each is dropped and
-- recreated on every migrate, so a column change here just works.

DROP VIEW IF EXISTS commission_audit, commission_ledger, partner_summary, parked_events, payment_refunds_and_disputes,
    rejected_webhook_events;

CREATE VIEW partner_summary AS
SELECT p.id                           AS partner_id,
       p.name,
       p.commission_rate,
       partner_last_seq(p.id)         AS last_seq,
       b.currency,
       coalesce(b.earned, 0)          AS earned,
       coalesce(b.pending, 0)         AS pending,
       coalesce(b.paid, 0)            AS paid,
       coalesce(b.reversed, 0)        AS reversed,
       coalesce(b.held, 0)            AS held,
       coalesce(b.approved, 0)        AS approved,
       coalesce(b.balance, 0)         AS balance,
       coalesce(b.in_payout, 0)       AS in_payout,
       partner_hold_days(p.id)        AS hold_days,
       (SELECT count(*) FROM commissions c
         WHERE c.partner_id = p.id AND c.currency = b.currency AND c.kind = 'earned') AS commissions_earned
  FROM partners p
  LEFT JOIN partner_balances b ON b.partner_id = p.id;
COMMENT ON VIEW partner_summary IS 'One row per partner and currency: rate, hold period, event sequence and totals (a partner with no commission yet has one row with NULL currency).';

CREATE VIEW commission_ledger AS
SELECT c.id          AS commission_id,
       c.created_at,
       c.partner_id,
       p.name        AS partner_name,
       c.kind,
       c.reason,
       c.stage,
       c.amount,
       c.currency,
       c.rate,
       c.payment_id,
       c.payment_amount,
       pay.refunded_amount,
       pay.status    AS payment_status,
       pay.provider,
       pay.provider_reference
  FROM commissions c
  JOIN partners p ON p.id = c.partner_id
  JOIN payments pay ON pay.id = c.payment_id;
COMMENT ON VIEW commission_ledger IS 'The ledger joined to its payments and partners: SELECT * FROM commission_ledger WHERE partner_id = 1 ORDER BY commission_id DESC;';

CREATE VIEW parked_events AS
SELECT w.provider, w.event_id, w.event_type, w.parked_reason, w.reference, w.action,
       w.amount_minor, w.currency, w.partner_id, w.object_id, w.object_state,
       w.occurred_at, w.received_at,
       CASE w.parked_reason
           WHEN 'unknown_payment'      THEN 'applies by itself when the provider''s payment event arrives'
           WHEN 'payment_not_verified' THEN 'applies by itself when the payment is verified'
           WHEN 'unknown_partner'      THEN format('create partner %s, then SELECT * FROM reapply_parked_events()', w.partner_id)
           WHEN 'unsupported_currency' THEN format('add currency %s to currencies, then SELECT * FROM reapply_parked_events()', upper(w.currency))
       END AS what_applies_it
  FROM webhook_events w
 WHERE w.outcome = 'parked';
COMMENT ON VIEW parked_events IS 'Provider events received but not yet applied, and why; nothing a provider sent is dropped. SELECT * FROM reapply_parked_events() retries them all.';

CREATE VIEW rejected_webhook_events AS
SELECT w.provider, w.event_id, w.event_type, w.rejected_reason, w.received_at, w.payload
  FROM webhook_events w
 WHERE w.outcome = 'rejected';
COMMENT ON VIEW rejected_webhook_events IS 'Authenticated provider events that can never apply (no id, a NUL character, not JSON, ...), with why. Each was answered 200 so the provider stops retrying, and changed nothing else.';

CREATE VIEW payment_refunds_and_disputes AS
SELECT pay.id AS payment_id, pay.partner_id, pay.currency, pay.amount, pay.refunded_amount, pay.status,
       d.provider, d.dispute_id, d.amount AS disputed_amount, d.state AS dispute_state, d.updated_at AS dispute_updated_at
  FROM payments pay
  LEFT JOIN disputes d ON d.payment_id = pay.id
 WHERE pay.refunded_amount > 0 OR d.payment_id IS NOT NULL;
COMMENT ON VIEW payment_refunds_and_disputes IS 'Every payment with a refund or a dispute: how much is refunded, and each dispute''s amount and state.';

CREATE VIEW commission_audit AS
WITH ledger AS (
    SELECT c.partner_id, c.currency,
           coalesce(sum(c.amount) FILTER (WHERE c.kind = 'earned'), 0) AS earned,
           coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reversed'), 0)
             - coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reinstated'), 0) AS reversed,
           coalesce(sum(c.amount) FILTER (WHERE c.kind = 'held'), 0)
             - coalesce(sum(c.amount) FILTER (WHERE c.kind = 'released'), 0) AS held,
           coalesce(sum(entry_pending_delta(c.kind, c.stage, c.amount)), 0) AS pending,
           coalesce(sum(entry_payable_delta(c.kind, c.stage, c.amount)) FILTER (WHERE c.stage = 'approved' AND i.commission_id IS NULL), 0) AS approved,
           coalesce(sum(entry_payable_delta(c.kind, c.stage, c.amount)) FILTER (WHERE i.commission_id IS NULL), 0) AS balance
      FROM commissions c
      LEFT JOIN payout_items i ON i.commission_id = c.id AND i.live
     GROUP BY c.partner_id, c.currency
), paid_out AS (
    SELECT o.partner_id, o.currency,
           coalesce(sum(o.amount) FILTER (WHERE o.state IN ('pending', 'sent')), 0) AS in_payout,
           coalesce(sum(o.amount) FILTER (WHERE o.state = 'paid'), 0) AS paid
      FROM payouts o
     GROUP BY o.partner_id, o.currency
), totals AS (
    SELECT coalesce(b.partner_id, l.partner_id) AS partner_id,
           coalesce(b.currency, l.currency)     AS currency,
           jsonb_build_object(
               'earned',    jsonb_build_array(coalesce(b.earned, 0),    coalesce(l.earned, 0)),
               'reversed',  jsonb_build_array(coalesce(b.reversed, 0),  coalesce(l.reversed, 0)),
               'held',      jsonb_build_array(coalesce(b.held, 0),      coalesce(l.held, 0)),
               'pending',   jsonb_build_array(coalesce(b.pending, 0),   coalesce(l.pending, 0)),
               'approved',  jsonb_build_array(coalesce(b.approved, 0),  coalesce(l.approved, 0)),
               'balance',   jsonb_build_array(coalesce(b.balance, 0),   coalesce(l.balance, 0)),
               'in_payout', jsonb_build_array(coalesce(b.in_payout, 0), coalesce(o.in_payout, 0)),
               'paid',      jsonb_build_array(coalesce(b.paid, 0),      coalesce(o.paid, 0))) AS pairs
      FROM partner_balances b
      FULL JOIN ledger l ON l.partner_id = b.partner_id AND l.currency = b.currency
      LEFT JOIN paid_out o ON o.partner_id = coalesce(b.partner_id, l.partner_id) AND o.currency = coalesce(b.currency, l.currency)
), mismatched AS (
    SELECT t.partner_id, t.currency,
           string_agg(format('%s %s (the ledger says %s)', p.key, p.value ->> 0, p.value ->> 1), ', ' ORDER BY p.key) AS what
      FROM totals t
     CROSS JOIN LATERAL jsonb_each(t.pairs) p
     WHERE (p.value ->> 0)::numeric <> (p.value ->> 1)::numeric
     GROUP BY t.partner_id, t.currency
), per_payment AS (
    SELECT pay.id AS payment_id, pay.partner_id, pay.currency,
           e.amount AS earned,
           e.partner_id = pay.partner_id AND pay.status IN ('verified', 'refunded')
             AND e.payment_amount = pay.amount
             AND e.amount = round(pay.amount * e.rate, pay.minor_units) AS earned_by_rule,
           coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reversed'), 0)
             - coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reinstated'), 0) AS reversed,
           coalesce(sum(c.amount) FILTER (WHERE c.kind = 'held'), 0)
             - coalesce(sum(c.amount) FILTER (WHERE c.kind = 'released'), 0) AS held,
           round(e.amount * least(pay.amount, pay.refunded_amount
                 + coalesce((SELECT sum(d.amount) FROM disputes d
                              WHERE d.payment_id = pay.id AND d.state IN ('funds_withdrawn', 'lost')), 0))
                 / pay.amount, pay.minor_units) AS reversed_by_rule,
           coalesce((SELECT sum(d.amount) FROM disputes d
                      WHERE d.payment_id = pay.id AND d.state = 'open'), 0) AS open_disputes,
           least(pay.amount, pay.refunded_amount
                 + coalesce((SELECT sum(d.amount) FROM disputes d
                              WHERE d.payment_id = pay.id AND d.state IN ('funds_withdrawn', 'lost')), 0)) AS basis,
           pay.amount, pay.minor_units
      FROM payments pay
      JOIN commissions e ON e.payment_id = pay.id AND e.kind = 'earned'
      LEFT JOIN commissions c ON c.payment_id = pay.id AND c.kind NOT IN ('earned', 'approved')
     GROUP BY pay.id, e.amount, e.partner_id, e.payment_amount, e.rate
), checked AS (
    SELECT *,
           least(round(earned * least(open_disputes, amount - basis) / amount, minor_units),
                 earned - reversed_by_rule) AS held_by_rule
      FROM per_payment
)
SELECT partner_id, currency,
       'totals differ from the ledger and payouts: ' || what AS problem,
       NULL::bigint AS payment_id
  FROM mismatched
UNION ALL
SELECT o.partner_id, o.currency,
       format('payout %s: its amount %s is not the sum of its items (%s), or an item is not what its entry adds (%s)',
              o.id, o.amount, coalesce(sum(i.amount), 0), coalesce(sum(entry_payable_delta(c.kind, c.stage, c.amount)), 0)),
       NULL
  FROM payouts o
  LEFT JOIN payout_items i ON i.payout_id = o.id
  LEFT JOIN commissions c ON c.id = i.commission_id
 GROUP BY o.id
HAVING o.amount <> coalesce(sum(i.amount), 0)
    OR coalesce(sum(i.amount), 0) <> coalesce(sum(entry_payable_delta(c.kind, c.stage, c.amount)), 0)
    OR bool_or(i.live) IS DISTINCT FROM (o.state <> 'failed')
    OR bool_and(i.live) IS DISTINCT FROM (o.state <> 'failed')
    OR bool_or(c.partner_id <> o.partner_id OR c.currency <> o.currency)
UNION ALL
SELECT partner_id, currency,
       CASE WHEN NOT earned_by_rule
            THEN format('payment %s: its earned entry %s does not follow from the payment (partner, status, amount or rate)', payment_id, earned)
            ELSE format('payment %s: reversed %s and held %s of an earned %s (the rules reverse %s and hold %s)',
                        payment_id, reversed, held, earned, reversed_by_rule, held_by_rule)
       END,
       payment_id
  FROM checked
 WHERE NOT earned_by_rule OR reversed <> reversed_by_rule OR held <> held_by_rule
UNION ALL
SELECT a.partner_id, a.currency,
       format('payment %s: its approval of %s is not what was left of its commission when it was approved (%s)',
              a.payment_id, a.amount, a.amount + sum(entry_pending_delta(c.kind, c.stage, c.amount))),
       a.payment_id
  FROM commissions a
  JOIN commissions c ON c.payment_id = a.payment_id
 WHERE a.approval_id IS NOT NULL
 GROUP BY a.id
HAVING sum(entry_pending_delta(c.kind, c.stage, c.amount)) <> 0
UNION ALL
SELECT b.partner_id, b.currency,
       format('approval batch %s says %s commissions of %s, its entries are %s of %s',
              b.id, b.commissions, b.amount, count(c.id), coalesce(sum(c.amount), 0)),
       NULL
  FROM commission_approvals b
  LEFT JOIN commissions c ON c.approval_id = b.id
 GROUP BY b.id
HAVING b.commissions <> count(c.id) OR b.amount <> coalesce(sum(c.amount), 0)
    OR bool_or(c.partner_id <> b.partner_id OR c.currency <> b.currency)
UNION ALL
SELECT p.id, NULL,
       format('last_seq is %s but the event log holds %s events (max seq %s)', partner_last_seq(p.id), count(e.seq), max(e.seq)),
       NULL
  FROM partners p
  LEFT JOIN commission_events e ON e.partner_id = p.id
 GROUP BY p.id
HAVING partner_last_seq(p.id) <> count(e.seq) OR partner_last_seq(p.id) <> coalesce(max(e.seq), 0)
UNION ALL
SELECT NULL, NULL,
       format('event_log_head is at %s but the event log holds %s events (max position %s)', h.position, count(e.position), max(e.position)),
       NULL
  FROM event_log_head h
  LEFT JOIN commission_events e ON true
 GROUP BY h.position
HAVING h.position <> coalesce(max(e.position), 0);
COMMENT ON VIEW commission_audit IS 'Every partner whose totals (earned, reversed, held, pending, approved, balance, in_payout, paid) disagree with the ledger and payouts, every payout whose amount is not its items, every approval that does not match its commission, every payment whose reversals disagree with its refunds and disputes, and every gap in an event sequence. Always empty (read it outside an open engine transaction: balances follow the ledger at commit); a row here is a bug to report.';

CREATE OR REPLACE FUNCTION partner_daily_earnings(p_partner_id bigint, p_days integer)
RETURNS TABLE (day date, currency char(3), earned text, reversed text, net text)
LANGUAGE sql STABLE
AS $$
    -- Every day of the window (UTC), in every currency the partner has earned
    -- in, with zeros where nothing happened: a chart needs the empty days.
    WITH days AS (
        SELECT d::date AS day
          FROM generate_series((now() AT TIME ZONE 'UTC')::date - (p_days - 1),
                               (now() AT TIME ZONE 'UTC')::date, interval '1 day') d
    ), currencies AS (
        SELECT DISTINCT c.currency FROM commissions c WHERE c.partner_id = p_partner_id
    ), sums AS (
        SELECT (c.created_at AT TIME ZONE 'UTC')::date AS day, c.currency,
               coalesce(sum(c.amount) FILTER (WHERE c.kind = 'earned'), 0) AS earned,
               coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reversed'), 0)
                 - coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reinstated'), 0) AS reversed
          FROM commissions c
         WHERE c.partner_id = p_partner_id
           AND c.created_at >= ((now() AT TIME ZONE 'UTC')::date - (p_days - 1)) AT TIME ZONE 'UTC'
         GROUP BY 1, 2
    )
    SELECT d.day, cur.currency,
           money_text(coalesce(s.earned, 0), cur.currency),
           money_text(coalesce(s.reversed, 0), cur.currency),
           money_text(coalesce(s.earned, 0) - coalesce(s.reversed, 0), cur.currency)
      FROM days d
     CROSS JOIN currencies cur
      LEFT JOIN sums s ON s.day = d.day AND s.currency = cur.currency
     ORDER BY cur.currency, d.day
$$;
COMMENT ON FUNCTION partner_daily_earnings(bigint, integer) IS
    'A partner''s commissions per UTC day over the last p_days days, per currency: earned, reversed (net of reinstatements) and net = earned - reversed, as decimal strings with the currency''s minor units; days with nothing are zeros. Holds and approvals move no money between earned and reversed and are not counted. For the dashboard''s chart (GET /api/partners/{id}/earnings).';
