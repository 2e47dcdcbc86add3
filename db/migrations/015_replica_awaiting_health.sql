-- Issue 27, item 3: autoscaling during a canary or shadow adds replicas to the candidate
-- generation (worker/scaling/phase_scaling.py). A candidate's replicas stay `starting`
-- until the switch and the gateways route to every one of them, so a replica added in
-- the traffic phase is recorded as awaiting its health check and is not routed until its
-- /health answers. Every other replica is written false (unchanged behaviour).
ALTER TABLE replicas ADD COLUMN awaiting_health boolean NOT NULL DEFAULT false;
