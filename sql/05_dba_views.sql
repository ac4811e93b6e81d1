-- Views for the people who read the engine in psql. Each is dropped and
-- recreated on every migrate, so a column change here just works.

DROP VIEW IF EXISTS commission_audit, commission_ledger, partner_summary;

CREATE VIEW partner_summary AS
SELECT p.id                           AS partner_id,
       p.name,
       p.commission_rate,
       p.last_seq,
       b.currency,
       coalesce(b.earned, 0)          AS earned,
       coalesce(b.pending, 0)         AS pending,
       coalesce(b.paid, 0)            AS paid,
       coalesce(b.reversed, 0)        AS reversed,
       (SELECT count(*) FROM commissions c
         WHERE c.partner_id = p.id AND c.currency = b.currency AND c.kind = 'earned') AS commissions_earned
  FROM partners p
  LEFT JOIN partner_balances b ON b.partner_id = p.id;
COMMENT ON VIEW partner_summary IS 'One row per partner and currency: rate, event sequence and totals (a partner with no commission yet has one row with NULL currency).';

CREATE VIEW commission_ledger AS
SELECT c.id          AS commission_id,
       c.created_at,
       c.partner_id,
       p.name        AS partner_name,
       c.kind,
       c.amount,
       c.currency,
       c.rate,
       c.payment_id,
       c.payment_amount,
       pay.status    AS payment_status,
       pay.provider,
       pay.provider_reference
  FROM commissions c
  JOIN partners p ON p.id = c.partner_id
  JOIN payments pay ON pay.id = c.payment_id;
COMMENT ON VIEW commission_ledger IS 'The ledger joined to its payments and partners: SELECT * FROM commission_ledger WHERE partner_id = 1 ORDER BY commission_id DESC;';

CREATE VIEW commission_audit AS
WITH ledger AS (
    SELECT partner_id, currency,
           sum(amount) FILTER (WHERE kind = 'earned')   AS earned,
           sum(amount) FILTER (WHERE kind = 'reversed') AS reversed
      FROM commissions
     GROUP BY partner_id, currency
), totals AS (
    SELECT coalesce(b.partner_id, l.partner_id) AS partner_id,
           coalesce(b.currency, l.currency)     AS currency,
           coalesce(b.earned, 0)   AS balance_earned,   coalesce(l.earned, 0)   AS ledger_earned,
           coalesce(b.reversed, 0) AS balance_reversed, coalesce(l.reversed, 0) AS ledger_reversed,
           coalesce(b.pending, 0)  AS balance_pending,
           coalesce(b.paid, 0)     AS balance_paid
      FROM partner_balances b
      FULL JOIN ledger l ON l.partner_id = b.partner_id AND l.currency = b.currency
)
SELECT partner_id, currency,
       'balance differs from the sum of its ledger entries' AS problem,
       balance_earned, ledger_earned, balance_reversed, ledger_reversed, balance_pending, balance_paid
  FROM totals
 WHERE balance_earned <> ledger_earned
    OR balance_reversed <> ledger_reversed
    OR balance_pending <> balance_earned - balance_reversed - balance_paid
UNION ALL
SELECT p.id, NULL, format('last_seq is %s but the event log holds %s events (max seq %s)', p.last_seq, count(e.seq), max(e.seq)),
       NULL, NULL, NULL, NULL, NULL, NULL
  FROM partners p
  LEFT JOIN commission_events e ON e.partner_id = p.id
 GROUP BY p.id, p.last_seq
HAVING p.last_seq <> count(e.seq) OR p.last_seq <> coalesce(max(e.seq), 0);
COMMENT ON VIEW commission_audit IS 'Every partner whose totals disagree with the ledger, or whose event sequence has a gap. Always empty; a row here is a bug to report.';
