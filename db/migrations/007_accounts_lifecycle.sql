-- Accounts lifecycle (issue 25, review M11). Every user JWT carries its user's
-- token_version (claim `ver`); bumping it (logout, password change, disable) revokes every
-- token issued before. A disabled user (disabled_at set) cannot log in, and their tokens
-- and API keys stop working.
ALTER TABLE users
    ADD COLUMN token_version integer NOT NULL DEFAULT 0,
    ADD COLUMN disabled_at timestamptz;
