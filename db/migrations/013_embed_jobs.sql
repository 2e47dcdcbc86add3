-- Issue 30: bulk embedding as a task. A job is a task of kind `embed` (claimed, leased and
-- re-offered like the others) plus this row: the generation it is pinned to, its files'
-- sizes, its counts and the checkpoint a resumed run starts from.
ALTER TABLE tasks DROP CONSTRAINT tasks_kind_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_kind_check
    CHECK (kind IN ('deploy', 'delete', 'scale', 'rollback', 'embed'));
-- An embed job runs beside the model's rollouts and scales, and beside its other jobs:
-- only the other kinds keep one processing task per model.
DROP INDEX tasks_one_processing_per_model;
CREATE UNIQUE INDEX tasks_one_processing_per_model ON tasks (model_id)
    WHERE status = 'processing' AND kind <> 'embed';

CREATE TABLE embed_jobs (
    id               uuid PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    owner_id         bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    model_id         uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    generation       integer NOT NULL,
    dimensions       integer,
    normalize        boolean NOT NULL DEFAULT true,
    -- what the upload held: its bytes and its lines (each line one input)
    input_bytes      bigint NOT NULL,
    total            integer NOT NULL,
    -- the checkpoint: inputs finished, and the input and results files' byte offsets
    -- after them (a resumed run truncates the results file to `results_bytes`)
    done             integer NOT NULL DEFAULT 0,
    failed           integer NOT NULL DEFAULT 0,
    tokens           bigint NOT NULL DEFAULT 0,
    input_offset     bigint NOT NULL DEFAULT 0,
    results_bytes    bigint NOT NULL DEFAULT 0,
    dimension        integer,
    -- the rate's base: where this run started (a resumed run counts from its own start)
    run_started_at   timestamptz,
    run_started_done integer NOT NULL DEFAULT 0,
    checkpoint_at    timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- set when the job ends: its files and this row go after it
    expires_at       timestamptz
);
CREATE INDEX embed_jobs_owner_idx ON embed_jobs (owner_id, created_at DESC);
CREATE INDEX embed_jobs_expires_idx ON embed_jobs (expires_at) WHERE expires_at IS NOT NULL;
