-- Greenroom schema, DESIGN.md §3.
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    email         text,
    password_hash text,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_hash   text NOT NULL UNIQUE,
    name       text NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    id                 uuid PRIMARY KEY,
    owner_id           bigint NOT NULL REFERENCES users(id),
    name               text NOT NULL,
    source             jsonb NOT NULL,
    dimension          integer,
    train_status       text NOT NULL DEFAULT 'complete'
                       CHECK (train_status IN ('not_started', 'in_progress', 'complete', 'failed')),
    access_level       text NOT NULL DEFAULT 'private'
                       CHECK (access_level IN ('private', 'protected', 'public')),
    default_permission text NOT NULL DEFAULT 'read' CHECK (default_permission IN ('read', 'write')),
    parent_id          uuid REFERENCES models(id) ON DELETE SET NULL,
    metadata           jsonb NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_owner_name_key UNIQUE (owner_id, name)
);

CREATE TABLE model_permissions (
    model_id   uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    permission text NOT NULL CHECK (permission IN ('read', 'write', 'owner')),
    expires_at timestamptz,
    PRIMARY KEY (model_id, user_id)
);

CREATE TABLE model_dependencies (
    model_id      uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    dependency_id uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    PRIMARY KEY (model_id, dependency_id),
    CHECK (model_id <> dependency_id)
);

CREATE TABLE deployments (
    model_id          uuid PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,
    name              text NOT NULL,
    status            text NOT NULL DEFAULT 'not_started'
                      CHECK (status IN ('not_started', 'starting', 'in_progress', 'complete',
                                        'degraded', 'failed', 'stopped')),
    active_generation integer,
    last_generation   integer NOT NULL DEFAULT 0,
    config            jsonb NOT NULL DEFAULT '{}',
    secrets           bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deployments_name_key UNIQUE (name)
);

CREATE TABLE replicas (
    id              uuid PRIMARY KEY,
    model_id        uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    generation      integer NOT NULL,
    task_id         uuid,
    runtime         text NOT NULL,
    runtime_ref     text,
    endpoint        text,
    state           text NOT NULL DEFAULT 'starting'
                    CHECK (state IN ('starting', 'ready', 'draining', 'stopped', 'failed')),
    reported_status text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replicas_model_generation_idx ON replicas (model_id, generation);
CREATE INDEX replicas_live_idx ON replicas (state) WHERE state IN ('starting', 'ready', 'draining');

CREATE TABLE tasks (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('deploy', 'delete', 'scale')),
    model_id        uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'processing', 'done', 'failed', 'canceled',
                                      'refused')),
    phase           text,
    request         jsonb NOT NULL DEFAULT '{}',
    request_hash    text NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}',
    detail          text,
    attempts        integer NOT NULL DEFAULT 0,
    idempotency_key text,
    enqueued_at     timestamptz,
    lease_until     timestamptz,
    worker_id       text,
    created_by      bigint REFERENCES users(id),
    started_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- §4.3: at most one processing task per model, enforced by the database.
CREATE UNIQUE INDEX tasks_one_processing_per_model ON tasks (model_id) WHERE status = 'processing';
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_model_kind_created_idx ON tasks (model_id, kind, created_at DESC);
CREATE INDEX tasks_open_idx ON tasks (status, enqueued_at) WHERE status IN ('pending', 'processing');

CREATE TABLE deployment_events (
    id         bigserial PRIMARY KEY,
    model_id   uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    task_id    uuid,
    generation integer,
    level      text NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    message    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployment_events_model_idx ON deployment_events (model_id, id DESC);

CREATE TABLE feedback (
    id         bigserial PRIMARY KEY,
    model_id   uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    event      text NOT NULL CHECK (event IN ('upvote', 'associate', 'implicit_upvote')),
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_model_event_created_idx ON feedback (model_id, event, created_at DESC);
