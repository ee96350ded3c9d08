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

-- Lifecycle events of handles: whichever instance holds the resource
-- behind a handle (a browser, a sandbox) learns that it is gone, from any
-- instance, to free it. Every deleted row of a kind other than 'session'
-- (destroyed, evicted, pruned or deleted on sight after expiry) is
-- announced on agentsessions_handle_gone as "kind id reason", reason
-- 'expired' when the row had expired by the database's clock, else
-- 'destroyed'. NOTIFY is transactional and in commit order.
-- +goose StatementBegin
CREATE FUNCTION agent_sessions_notify_handle_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentsessions_handle_gone', OLD.kind || ' ' || OLD.id || ' ' ||
        CASE WHEN OLD.expires_at <= now() THEN 'expired' ELSE 'destroyed' END);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER agent_sessions_notify_handle_gone
    AFTER DELETE ON agent_sessions
    FOR EACH ROW WHEN (OLD.kind <> 'session')
    EXECUTE FUNCTION agent_sessions_notify_handle_gone();
ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_handle_gone;

-- +goose Down
DROP TRIGGER agent_sessions_notify_handle_gone ON agent_sessions;
DROP FUNCTION agent_sessions_notify_handle_gone();
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
