-- Dispatch hardening (issue #12): late payments of another amount and deadlines passed before
-- submission have moves of their own, and a step's errors are counted apart from its polls.

-- Consecutive failed steps of an order; its retries back off by this count (not by its polls),
-- and any step that ends well sets it back to 0.
ALTER TABLE orders ADD COLUMN errors integer NOT NULL DEFAULT 0 CHECK (errors >= 0);

-- A late payment of another amount on a given-up order waits for a person (needs_review); an
-- order whose deadline passed before any invoice was made expires without one.
INSERT INTO order_transitions (from_status, to_status) VALUES
    ('new', 'expired'), ('submitting', 'expired'),
    ('rejected', 'needs_review'), ('expired', 'needs_review'), ('cancelled', 'needs_review');

INSERT INTO schema_version (version, description) VALUES (4, 'dispatch hardening');
