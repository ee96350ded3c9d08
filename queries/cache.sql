-- Queries of the verified-session cache (sessions/cache.go).

-- name: ListenInvalidations :exec
LISTEN agentsessions_invalidate;

-- name: ListenFlushes :exec
LISTEN agentsessions_flush;

-- name: ListenHeartbeats :exec
LISTEN agentsessions_heartbeat;

-- NotifyHeartbeat is sent through the pool and comes back on the listener
-- connection after every invalidation committed before it. It carries
-- the state of the invalidation triggers as this statement saw them (the
-- same expression as InvalidationTriggerState), so a cache learns from
-- its heartbeats, not only when it connects, that the triggers were
-- disabled or changed, and stops trusting what it holds.
-- name: NotifyHeartbeat :exec
SELECT pg_notify('agentsessions_heartbeat', sqlc.arg(payload)::text || '/' || (
    SELECT CASE WHEN count(*) = 2 AND bool_and(t.tgenabled = 'A')
                THEN md5(string_agg(t.oid::text || ':' || t.xmin::text || ':' || f.oid::text || ':' || f.xmin::text, ',' ORDER BY t.tgname))
                ELSE 'off' END
    FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
    WHERE t.tgrelid = to_regclass('agent_sessions')
      AND t.tgname IN ('agent_sessions_notify_invalidate', 'agent_sessions_notify_flush')));

-- InvalidationTriggerState is 'off' unless migration 00003's two triggers
-- are on the agent_sessions table in the search path and fire ALWAYS
-- (tgenabled 'A', as the migration leaves them: they then fire for
-- replication-role sessions too). Otherwise it is a fingerprint of their
-- catalog rows and functions, which any ALTER TABLE ... ENABLE/DISABLE
-- TRIGGER, DROP/CREATE TRIGGER or CREATE OR REPLACE FUNCTION changes
-- (each writes a new row version, with a new xmin).
-- name: InvalidationTriggerState :one
SELECT (CASE WHEN count(*) = 2 AND bool_and(t.tgenabled = 'A')
             THEN md5(string_agg(t.oid::text || ':' || t.xmin::text || ':' || f.oid::text || ':' || f.xmin::text, ',' ORDER BY t.tgname))
             ELSE 'off' END)::text AS state
FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
WHERE t.tgrelid = to_regclass('agent_sessions')
  AND t.tgname IN ('agent_sessions_notify_invalidate', 'agent_sessions_notify_flush');

-- name: ListenHandleEvents :exec
LISTEN agentsessions_handle_gone;

-- HandleEventsTriggerEnabled says whether migration 00005's trigger is on
-- agent_sessions and fires always.
-- name: HandleEventsTriggerEnabled :one
SELECT count(*) = 1 AS enabled
FROM pg_catalog.pg_trigger
WHERE tgrelid = to_regclass('agent_sessions')
  AND tgname = 'agent_sessions_notify_handle_gone'
  AND tgenabled = 'A';
