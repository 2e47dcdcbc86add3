-- Accounts, permissions and feedback reads (issue 6).
-- GET /feedbacks reads the newest N events of one kind for one model: one index range
-- scan in index order, with id as the tie-breaker for events in the same microsecond.
DROP INDEX IF EXISTS feedback_model_event_created_idx;
CREATE INDEX feedback_model_event_recent_idx
    ON feedback (model_id, event, created_at DESC, id DESC);
CREATE INDEX model_permissions_user_idx ON model_permissions (user_id);
CREATE INDEX model_dependencies_dependency_idx ON model_dependencies (dependency_id);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);
