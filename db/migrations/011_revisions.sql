-- Issue 26: immutable model revisions, generations pinned to a revision and a config, the
-- previous generation kept warm for a rollback, and the `rollback` task kind.
CREATE TABLE model_revisions (
    model_id         uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    number           integer NOT NULL CHECK (number > 0),
    origin           text NOT NULL CHECK (origin IN ('upload', 'source')),
    source           jsonb NOT NULL,
    digest           text NOT NULL,
    size_bytes       bigint NOT NULL DEFAULT 0,
    files_removed_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, number)
);

CREATE TABLE deployment_generations (
    model_id    uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    generation  integer NOT NULL,
    revision    integer NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}',
    rollback_of integer,
    served_at   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, generation),
    FOREIGN KEY (model_id, revision) REFERENCES model_revisions (model_id, number)
);

ALTER TABLE deployments
    ADD COLUMN previous_generation integer,
    ADD COLUMN previous_until timestamptz;

ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_kind_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_kind_check
    CHECK (kind IN ('deploy', 'delete', 'scale', 'rollback'));
