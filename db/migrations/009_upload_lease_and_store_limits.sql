-- Review M5: an upload holds its model under a lease that the API renews while it streams.
-- A model whose lease passed (the API died mid-upload) reads as the status it had before
-- (`upload_status_before`), and may be uploaded or deployed again; `upload_id` names the
-- upload's scratch folder under <store>/.incoming, so a sweep keeps only live uploads'.
ALTER TABLE models ADD COLUMN upload_id text,
                   ADD COLUMN upload_lease_until timestamptz,
                   ADD COLUMN upload_status_before text,
                   -- Review M14: bytes the model's folder holds in the store (per-user quota).
                   ADD COLUMN store_bytes bigint NOT NULL DEFAULT 0;
CREATE INDEX models_uploading_idx ON models (owner_id) WHERE upload_id IS NOT NULL;
ALTER TABLE user_quotas ADD COLUMN max_store_mb integer CHECK (max_store_mb >= 0);
