-- Site API keys for the HTTP API.

-- Site API keys: only a hash is stored; the key is shown once, by `paydispatch keys create`.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    site         text NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    -- The key's public first part, to find the row without scanning hashes.
    prefix       text NOT NULL,
    key_hash     text NOT NULL,
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_prefix_key UNIQUE (prefix)
);
CREATE INDEX api_keys_site_idx ON api_keys (site);

INSERT INTO schema_version (version, description) VALUES (2, 'api keys');
