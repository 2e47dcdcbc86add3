-- The console's live view (issue 17): every change of a task's status or phase, of a
-- deployment's status or generation, of a replica's state, and every new deployment event
-- is announced on the `greenroom_changes` channel, whoever wrote it (API, worker,
-- reconciler). NOTIFY is delivered on commit, so a listener never sees an uncommitted row.
-- The payload names only what changed; readers fetch the rows through the API, which
-- applies its access rules.
CREATE OR REPLACE FUNCTION greenroom_notify_change() RETURNS trigger AS $$
DECLARE
    payload jsonb;
BEGIN
    IF TG_TABLE_NAME = 'tasks' THEN
        payload := jsonb_build_object('kind', 'task', 'model_id', NEW.model_id,
                                      'task_id', NEW.id, 'status', NEW.status,
                                      'phase', NEW.phase);
    ELSIF TG_TABLE_NAME = 'deployments' THEN
        payload := jsonb_build_object('kind', 'deployment', 'model_id', NEW.model_id,
                                      'status', NEW.status);
    ELSIF TG_TABLE_NAME = 'replicas' THEN
        payload := jsonb_build_object('kind', 'replica', 'model_id', NEW.model_id,
                                      'status', NEW.state);
    ELSE
        payload := jsonb_build_object('kind', 'event', 'model_id', NEW.model_id,
                                      'task_id', NEW.task_id, 'status', NEW.level);
    END IF;
    PERFORM pg_notify('greenroom_changes', payload::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tasks_notify_change AFTER INSERT OR UPDATE OF status, phase ON tasks
    FOR EACH ROW EXECUTE FUNCTION greenroom_notify_change();
CREATE TRIGGER deployments_notify_change
    AFTER INSERT OR UPDATE OF status, active_generation ON deployments
    FOR EACH ROW EXECUTE FUNCTION greenroom_notify_change();
CREATE TRIGGER replicas_notify_change AFTER INSERT OR UPDATE OF state, endpoint ON replicas
    FOR EACH ROW EXECUTE FUNCTION greenroom_notify_change();
CREATE TRIGGER deployment_events_notify_change AFTER INSERT ON deployment_events
    FOR EACH ROW EXECUTE FUNCTION greenroom_notify_change();
