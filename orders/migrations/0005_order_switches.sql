-- Which order a buyer's switch to another payment system replaced, and how deep the chain is
-- (issue #12, item 1): an order is replaced at most once, a chain is at most 3 switches long.
-- Orders switched before this version keep naming the order they replaced in metadata only.

ALTER TABLE orders
    ADD COLUMN replaces uuid,
    ADD COLUMN switch_depth smallint NOT NULL DEFAULT 0,
    ADD CONSTRAINT orders_replaces_fkey FOREIGN KEY (replaces) REFERENCES orders (id),
    ADD CONSTRAINT orders_replaces_key UNIQUE (replaces),
    ADD CONSTRAINT orders_switch_depth_check
        CHECK (switch_depth BETWEEN 0 AND 3 AND (replaces IS NULL) = (switch_depth = 0));

INSERT INTO schema_version (version, description) VALUES (5, 'order switches');
