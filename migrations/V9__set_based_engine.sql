-- Engine v2, part 2: many payments per commit (docs/engine.md, "Many
-- payments per commit"). The engine runs once per statement over the rows it
-- verifies, and the publisher publishes every ledger entry of a transaction
-- at once, at COMMIT. It needs to know two things, both kept where only the
-- engine writes:
--
--   * which entries a transaction appended: commissions.xact_id, the
--     top-level transaction id (pg_current_xact_id(), the same inside a
--     savepoint or a PL/pgSQL exception block);
--   * which of them it has published already: partner_streams says, per
--     partner, the last entry published into the stream and by which
--     transaction, so a later deferred call of the same transaction finds
--     its entry published and returns.
--
-- Rows written before this migration have NULL: they were published one by one.

ALTER TABLE commissions ADD COLUMN xact_id xid8;
ALTER TABLE commissions ALTER COLUMN xact_id SET DEFAULT pg_current_xact_id();
COMMENT ON COLUMN commissions.xact_id IS
    'The top-level transaction that appended the entry (pg_current_xact_id()): the publisher finds a transaction''s entries by it at COMMIT. NULL for entries written before V9.';

ALTER TABLE partner_streams
    ADD COLUMN last_commission_id bigint,
    ADD COLUMN last_xact xid8;
COMMENT ON COLUMN partner_streams.last_commission_id IS
    'The last ledger entry published into this stream (set by publish_commission_entries; approvals and payouts leave it).';
COMMENT ON COLUMN partner_streams.last_xact IS
    'The transaction that published last_commission_id: an entry of the same transaction with an id up to it is published already.';
