-- Issue 31: a deployment's traffic, latency and replicas over time, one row per 10 s bucket
-- and generation, written by the workers (worker/series.py) from the gateways' reports and
-- pruned past 24 h (worker/retention.py). The latency histogram is kept (counts per bucket
-- of schemas.gateway.LATENCY_BOUNDS_S) so a reader merging buckets reads exact percentiles.
CREATE TABLE deployment_series (
    model_id         uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    generation       integer NOT NULL,
    bucket           timestamptz NOT NULL,
    requests_per_s   double precision NOT NULL DEFAULT 0,
    errors_per_s     double precision NOT NULL DEFAULT 0,
    latency_buckets  integer[] NOT NULL DEFAULT '{}',
    replicas         integer NOT NULL DEFAULT 0,
    desired          integer NOT NULL DEFAULT 0,
    inflight         integer NOT NULL DEFAULT 0,
    PRIMARY KEY (model_id, bucket, generation)
);
CREATE INDEX deployment_series_bucket ON deployment_series (bucket);
