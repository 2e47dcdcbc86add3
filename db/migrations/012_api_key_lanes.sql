-- Issue 29: an API key's priority lane on the data plane and its rate limits (per model
-- it calls; NULL: the gateway's default, GREENROOM_GATEWAY_KEY_*_PER_S, unlimited unset).
ALTER TABLE api_keys
    ADD COLUMN lane text NOT NULL DEFAULT 'interactive'
        CHECK (lane IN ('interactive', 'batch')),
    ADD COLUMN requests_per_s double precision CHECK (requests_per_s > 0),
    ADD COLUMN tokens_per_s double precision CHECK (tokens_per_s > 0);
