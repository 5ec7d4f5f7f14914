-- Issue #14: the payment system's id of the money taken (Stripe's PaymentIntent, PayPal's
-- capture, Robokassa's OpKey), stored when the order becomes paid. Refunds and chargebacks the
-- payment system reports by that id (Stripe's charge.refunded and charge.dispute.* events) are
-- matched to their order with it. Unique per payment system among the orders that have one; the
-- index holds only those, so creating an order costs nothing more.
ALTER TABLE orders ADD COLUMN psp_payment_id text;
ALTER TABLE orders_archive ADD COLUMN psp_payment_id text;

CREATE UNIQUE INDEX orders_psp_payment_id_idx ON orders (adapter, psp_payment_id)
    WHERE psp_payment_id IS NOT NULL;

INSERT INTO schema_version (version, description) VALUES (13, 'payment ids');
