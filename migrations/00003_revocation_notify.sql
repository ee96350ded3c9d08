-- +goose Up
-- Every deleted or updated session row (revoke, revoke-all, eviction,
-- pruning, refresh) is announced on the agentsessions_invalidate channel
-- with the session ID as payload; a TRUNCATE on agentsessions_flush. Instances that cache verified sessions
-- (PostgresStore.RunCache) listen there. NOTIFY is transactional: the
-- notice goes out only if the change commits, and in commit order.
-- +goose StatementBegin
CREATE FUNCTION agent_sessions_notify_invalidate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentsessions_invalidate', OLD.id);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER agent_sessions_notify_invalidate
    AFTER DELETE OR UPDATE ON agent_sessions
    FOR EACH ROW EXECUTE FUNCTION agent_sessions_notify_invalidate();

-- TRUNCATE fires no row triggers: tell caches to drop everything.
-- +goose StatementBegin
CREATE FUNCTION agent_sessions_notify_flush() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentsessions_flush', '');
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER agent_sessions_notify_flush
    AFTER TRUNCATE ON agent_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION agent_sessions_notify_flush();

-- ALWAYS: fire also under session_replication_role = replica (logical
-- replication apply), so caches hear of rows changed that way too.
ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_invalidate;
ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_flush;

-- +goose Down
DROP TRIGGER agent_sessions_notify_flush ON agent_sessions;
DROP FUNCTION agent_sessions_notify_flush();
DROP TRIGGER agent_sessions_notify_invalidate ON agent_sessions;
DROP FUNCTION agent_sessions_notify_invalidate();
