-- Autoscaling (issue 14): the replica count the autoscaler (or the owner's scale) last
-- asked for, shown beside the ready count by the status endpoints. NULL: never scaled.
ALTER TABLE deployments ADD COLUMN desired_replicas integer CHECK (desired_replicas >= 0);
