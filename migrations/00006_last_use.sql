-- +goose Up
-- When each session was last used, for idle timeouts (sessions
-- Config.IdleTimeout) and least-recently-used eviction. NULL means never
-- recorded: the session counts as last used when it was issued. Managers
-- collect uses in memory and write them in batches (TouchSessions), so
-- this lags the real last use by at most the flush interval; it only ever
-- moves forward.
--
-- Deliberately not indexed: a batch that sets only this column is then a
-- HOT update, which writes no index page, provided the row's page has
-- room for the new version: fillfactor 90 leaves a tenth of every page
-- filled from now on free for that (pages written before keep none).
ALTER TABLE agent_sessions ADD COLUMN last_used_at timestamptz;
ALTER TABLE agent_sessions SET (fillfactor = 90);

-- A change of last_used_at alone is not an invalidation: caches keep the
-- verified session (its token, agent and expiry are unchanged) and read
-- the row again only when it looks idle. So the trigger fires on updates
-- of every other column (a column added later must be added here), and
-- a batch of last uses costs no NOTIFY and no commit serialization.
DROP TRIGGER agent_sessions_notify_invalidate ON agent_sessions;
CREATE TRIGGER agent_sessions_notify_invalidate
    AFTER DELETE OR UPDATE OF id, agent_id, kind, issued_at, expires_at, token_digest, metadata ON agent_sessions
    FOR EACH ROW EXECUTE FUNCTION agent_sessions_notify_invalidate();
ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_invalidate;

-- +goose Down
DROP TRIGGER agent_sessions_notify_invalidate ON agent_sessions;
CREATE TRIGGER agent_sessions_notify_invalidate
    AFTER DELETE OR UPDATE ON agent_sessions
    FOR EACH ROW EXECUTE FUNCTION agent_sessions_notify_invalidate();
ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_invalidate;
ALTER TABLE agent_sessions RESET (fillfactor);
ALTER TABLE agent_sessions DROP COLUMN last_used_at;
