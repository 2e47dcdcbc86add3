-- An idempotency key (a task's `id` or the Idempotency-Key header) is the caller's own
-- (review L1): the same key from two users names two tasks, so a reused key never returns
-- another user's task. Tasks made without a user (job tokens, the autoscaler) share one
-- scope, 0. The index keeps its name: the accept path recognises its unique violation.
DROP INDEX tasks_idempotency_key;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (COALESCE(created_by, 0), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
