-- Issue 27: a canary or shadow rollout's traffic split. NULL: the serving generation
-- takes every request (the green rollout). Else {"generation": the candidate,
-- "weight": percent of requests it takes (0-100), "shadow_percent": percent of requests
-- also sent to it, answers discarded}: written by the worker's traffic phase only.
ALTER TABLE deployments ADD COLUMN traffic jsonb;
