-- +goose Up
-- One row per live (or not yet pruned) session. The token itself is never
-- stored: token_digest is the lowercase hex SHA-256 of the token string.
CREATE TABLE agent_sessions (
    id           text        NOT NULL,
    agent_id     text        NOT NULL,
    issued_at    timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    token_digest text        NOT NULL,
    CONSTRAINT agent_sessions_pkey PRIMARY KEY (id),
    CONSTRAINT agent_sessions_id_length CHECK (octet_length(id) BETWEEN 1 AND 128),
    CONSTRAINT agent_sessions_agent_id_length CHECK (octet_length(agent_id) BETWEEN 1 AND 512),
    CONSTRAINT agent_sessions_expires_after_issued CHECK (expires_at > issued_at),
    CONSTRAINT agent_sessions_token_digest_hex CHECK (token_digest ~ '^[0-9a-f]{64}$')
);

-- "Live sessions of agent X" (the limit check) and "agent X's expired rows"
-- (the in-transaction prune) are both range scans on this index, and it is
-- what SERIALIZABLE takes its predicate locks on. Those locks cover index
-- pages, not keys, so agents whose IDs sort onto the same page can still
-- make each other's transactions retry (false positives, never wrong
-- answers).
CREATE INDEX agent_sessions_agent_expires_idx ON agent_sessions (agent_id, expires_at);

-- Table-wide cleanup of expired rows in batches.
CREATE INDEX agent_sessions_expires_idx ON agent_sessions (expires_at);

-- +goose Down
DROP TABLE agent_sessions;
