-- One wallet operation as paydispatch's Wallets.debit/credit issues it (dispatcher/billing/
-- queries.sql): look the idempotency key up, update the wallet under its row lock with the
-- no-overdraft condition, append the entry; one transaction. Even clients credit, odd debit,
-- so the hot wallet neither runs dry nor grows without bound.
--
--   pgbench -n -M prepared -c 8 -j 2 -T 10 -D wallets=1 -f bench/wallet.pgbench.sql DB
--
-- -D wallets=1: every client on one hot wallet; -D wallets=1000: spread over 1000 wallets.
-- The wallets (user ids 'u1'..'uN', USD) are created with a starting balance by bench/wallet.py.

\set user random(1, :wallets)
\set nonce random(1, 1000000000000)
\set sign (:client_id % 2) * -2 + 1
\set amount 100 * :sign

BEGIN;
SELECT * FROM wallet_entries WHERE site = 'bench' AND idempotency_key = 'pgb-' || :client_id || '-' || :nonce;
UPDATE wallets SET balance = balance + :amount, updated_at = now()
WHERE site = 'bench' AND user_id = 'u' || :user AND currency = 'USD'
  AND balance + :amount >= 0
RETURNING balance AS balance_after \gset
INSERT INTO wallet_entries (
    site, user_id, currency, amount, balance_after, kind, order_id, idempotency_key, description
) VALUES (
    'bench', 'u' || :user, 'USD', :amount, :balance_after, 'adjustment', NULL,
    'pgb-' || :client_id || '-' || :nonce, 'pgbench'
);
COMMIT;
