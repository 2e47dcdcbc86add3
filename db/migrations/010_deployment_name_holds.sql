-- Review M10: a deployment name freed by a rename stays its previous model's for a while
-- (GREENROOM_DEPLOYMENT_NAME_HOLD_S), so nobody takes over the URL its clients still call.
CREATE TABLE deployment_name_holds (
    name      text PRIMARY KEY,
    model_id  uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    until     timestamptz NOT NULL
);
