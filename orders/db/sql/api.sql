-- Named queries of the HTTP API's own (dispatcher/api/): the readiness probe and the key
-- cache's revocation listener (the keys' other queries are in orders.sql). Each block starts
-- with `-- name --`.

-- ping --
SELECT 1

-- listen_api_keys --
-- The channel the trigger api_keys_announce_revoked notifies with a revoked key's prefix.
LISTEN paydispatch_api_keys
