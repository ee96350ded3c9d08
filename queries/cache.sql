-- Queries of the verified-session cache (sessions/cache.go).

-- name: ListenInvalidations :exec
LISTEN agentsessions_invalidate;

-- name: ListenFlushes :exec
LISTEN agentsessions_flush;

-- name: ListenHeartbeats :exec
LISTEN agentsessions_heartbeat;

-- NotifyHeartbeat is sent through the pool and comes back on the listener
-- connection after every invalidation committed before it.
-- name: NotifyHeartbeat :exec
SELECT pg_notify('agentsessions_heartbeat', sqlc.arg(payload)::text);

-- InvalidationTriggerEnabled says whether migration 00003 is applied and
-- both its triggers are enabled on the agent_sessions table in the search
-- path.
-- name: InvalidationTriggerEnabled :one
SELECT count(*) = 2 AS enabled
FROM pg_catalog.pg_trigger
WHERE tgrelid = to_regclass('agent_sessions')
  AND tgname IN ('agent_sessions_notify_invalidate', 'agent_sessions_notify_flush')
  AND tgenabled <> 'D';
