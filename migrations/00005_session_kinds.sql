-- +goose Up
-- Sessions of a kind: an agent session is kind 'session' (every existing
-- row), and server-minted state handles (MCP 2026-07-28: a browser, a
-- basket, a sandbox, ... bound to the principal that created it) are
-- sessions of their own kinds. The limit is per (agent, kind), so the
-- kind joins the key of the count rows and of the limit overrides; the
-- limit statement still counts one key in one SERIALIZABLE statement.
--
-- Kinds are short names (lowercase letters, digits and '-', starting with
-- a letter) because a handle carries its kind as a visible prefix.
ALTER TABLE agent_sessions
    ADD COLUMN kind text NOT NULL DEFAULT 'session',
    ADD CONSTRAINT agent_sessions_kind_name CHECK (kind ~ '^[a-z][a-z0-9-]{0,15}$');

-- The agent's rows of one kind, by expiry: what the limit statement
-- prunes, counts and evicts from. Replaces (agent_id, expires_at).
CREATE INDEX agent_sessions_agent_kind_expires_idx ON agent_sessions (agent_id, kind, expires_at);
DROP INDEX agent_sessions_agent_expires_idx;

ALTER TABLE agent_session_counts
    ADD COLUMN kind text NOT NULL DEFAULT 'session',
    DROP CONSTRAINT agent_session_counts_pkey,
    ADD CONSTRAINT agent_session_counts_pkey PRIMARY KEY (agent_id, kind);

ALTER TABLE agent_limits
    ADD COLUMN kind text NOT NULL DEFAULT 'session',
    DROP CONSTRAINT agent_limits_pkey,
    ADD CONSTRAINT agent_limits_pkey PRIMARY KEY (agent_id, kind),
    ADD CONSTRAINT agent_limits_kind_name CHECK (kind ~ '^[a-z][a-z0-9-]{0,15}$');

-- +goose Down
-- Only while no row of another kind exists: their counts and limits
-- would collide on the old keys.
DELETE FROM agent_sessions WHERE kind <> 'session';
DELETE FROM agent_session_counts WHERE kind <> 'session';
DELETE FROM agent_limits WHERE kind <> 'session';
ALTER TABLE agent_limits
    DROP CONSTRAINT agent_limits_pkey,
    DROP COLUMN kind,
    ADD CONSTRAINT agent_limits_pkey PRIMARY KEY (agent_id);
ALTER TABLE agent_session_counts
    DROP CONSTRAINT agent_session_counts_pkey,
    DROP COLUMN kind,
    ADD CONSTRAINT agent_session_counts_pkey PRIMARY KEY (agent_id);
CREATE INDEX agent_sessions_agent_expires_idx ON agent_sessions (agent_id, expires_at);
DROP INDEX agent_sessions_agent_kind_expires_idx;
ALTER TABLE agent_sessions DROP COLUMN kind;
