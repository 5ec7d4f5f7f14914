-- Issue #15, item 1: a long table. The sweeper's gauges no longer scan the orders table, and
-- finished orders can leave it (`paydispatch db archive`).
--
-- Orders per adapter and status are counted as they change: statement-level triggers append
-- one signed row per (adapter, status) a statement changed to order_count_deltas, and the
-- sweeper folds those rows into order_counts every stats interval. Appending never waits for
-- another transaction, where one counter row per (adapter, status) would make every create of
-- an adapter queue behind the previous one's commit (and sharded rows touched in different
-- orders by batched statements could deadlock). A read sums both tables in one snapshot, so it
-- is exact whenever the fold last ran.
--
-- Orders past their deadline are found through a partial index on the active rows only, and
-- the orders table is vacuumed by its number of dead rows, not by a fraction of its length.
--
-- The archive: finished orders nothing else refers to leave orders (and their events leave
-- order_events) for these two tables, in the same database. wallet_entries.order_id gets an
-- index, because deleting an order checks that no ledger entry refers to it.

CREATE TABLE order_counts (
    adapter text NOT NULL,
    status  text NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (adapter, status)
);

CREATE TABLE order_count_deltas (
    adapter text NOT NULL,
    status  text NOT NULL,
    n       bigint NOT NULL
);

CREATE FUNCTION orders_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (adapter, status, n)
    SELECT adapter, status, count(*) FROM inserted_orders GROUP BY adapter, status;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (adapter, status, n)
    SELECT adapter, status, sum(n) FROM (
        SELECT adapter, status, 1 AS n FROM new_orders
        UNION ALL
        SELECT adapter, status, -1 AS n FROM old_orders
    ) AS moved
    GROUP BY adapter, status
    HAVING sum(n) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_count_deltas (adapter, status, n)
    SELECT adapter, status, -count(*) FROM deleted_orders GROUP BY adapter, status;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM order_count_deltas;
    DELETE FROM order_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_count_inserted
    AFTER INSERT ON orders REFERENCING NEW TABLE AS inserted_orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_inserted();
CREATE TRIGGER orders_count_updated
    AFTER UPDATE ON orders REFERENCING OLD TABLE AS old_orders NEW TABLE AS new_orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_updated();
CREATE TRIGGER orders_count_deleted
    AFTER DELETE ON orders REFERENCING OLD TABLE AS deleted_orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_deleted();
CREATE TRIGGER orders_count_truncated
    AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_truncated();

-- The orders already there, counted once, in the transaction that creates the triggers (which
-- locks out writes to orders until it commits).
INSERT INTO order_counts (adapter, status, n)
SELECT adapter, status, count(*) FROM orders GROUP BY adapter, status;

CREATE INDEX orders_active_expires_idx ON orders (expires_at)
    WHERE status IN ('new', 'submitting', 'awaiting_payment');

-- A long table would be vacuumed only once a fifth of it changed (the default scale factor):
-- by then the few active rows, rewritten by every claim and step, leave hundreds of thousands
-- of dead versions in the due index, which the claim and the gauges step over. Vacuum by the
-- number of dead rows instead, whatever the table's length.
ALTER TABLE orders SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

CREATE INDEX wallet_entries_order_idx ON wallet_entries (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE orders_archive (LIKE orders, archived_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE orders_archive ADD PRIMARY KEY (id);

CREATE TABLE order_events_archive (LIKE order_events);
ALTER TABLE order_events_archive ADD PRIMARY KEY (id);
CREATE INDEX order_events_archive_order_idx ON order_events_archive (order_id, id);

INSERT INTO schema_version (version, description) VALUES (8, 'order counts, archive');
