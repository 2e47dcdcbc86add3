-- Quotas and capacity (issue 19).
-- Per-user overrides of the quota defaults in settings; NULL means "the default".
CREATE TABLE user_quotas (
    user_id        bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    max_models     integer CHECK (max_models >= 0),
    max_deployments integer CHECK (max_deployments >= 0),
    max_replicas   integer CHECK (max_replicas >= 0),
    max_memory_mb  integer CHECK (max_memory_mb >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- The memory each replica was placed with (its limit, or what was assumed for it), so
-- quotas and a worker's capacity add up what is running rather than what is configured now.
ALTER TABLE replicas ADD COLUMN memory_mb integer;
CREATE INDEX tasks_open_deploys_idx ON tasks (model_id) WHERE status = 'processing' AND kind = 'deploy';
