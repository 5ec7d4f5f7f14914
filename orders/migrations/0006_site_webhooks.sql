-- Issue #12, items 5 and 6.
--
-- A revoked (or deleted) API key is announced on the channel paydispatch_api_keys, so every API
-- process drops it from its cache of verified keys at once, not when the cache entry ages out.
--
-- Billing webhooks are per site: each site's URL and signing secret, set with `paydispatch
-- sites`. During a secret rotation the previous secret signs every delivery too, until
-- previous_until. The outbox no longer fixes the URL when the event is written: a delivery goes
-- to the site's URL of the moment, and `url` records where the last attempt went.

CREATE FUNCTION api_keys_announce_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('paydispatch_api_keys', OLD.prefix);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_announce_revoked
    AFTER UPDATE OF revoked_at, key_hash, site, prefix OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_announce_revoked();

CREATE TABLE site_webhooks (
    site            text PRIMARY KEY CHECK (length(site) BETWEEN 1 AND 64),
    url             text NOT NULL CHECK (url ~ '^https?://[^[:space:][:cntrl:]]+$'
                                         AND length(url) <= 2048),
    secret          text NOT NULL CHECK (length(secret) >= 32),
    previous_secret text CHECK (length(previous_secret) >= 32),
    previous_until  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT site_webhooks_previous_check
        CHECK ((previous_secret IS NULL) = (previous_until IS NULL))
);

ALTER TABLE billing_outbox ALTER COLUMN url DROP NOT NULL;

INSERT INTO schema_version (version, description) VALUES (6, 'site webhooks, key revocation notices');
