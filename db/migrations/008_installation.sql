-- Issue 25 (M13): this database's installation id, drawn once here. Workers derive their
-- runtime's default cluster label from it, so two installations sharing a Docker Engine
-- (or Swarm) never list, and so never reap, each other's replicas.
CREATE TABLE installation (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    id uuid NOT NULL DEFAULT gen_random_uuid()
);
INSERT INTO installation DEFAULT VALUES;
