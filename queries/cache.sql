-- Queries of the verified-session cache (sessions/cache.go).

-- name: ListenInvalidations :exec
LISTEN agentsessions_invalidate;

-- name: ListenHeartbeats :exec
LISTEN agentsessions_heartbeat;

-- NotifyHeartbeat is sent through the pool and comes back on the listener
-- connection after every invalidation committed before it.
-- name: NotifyHeartbeat :exec
SELECT pg_notify('agentsessions_heartbeat', sqlc.arg(payload)::text);

-- InvalidationTriggerEnabled says whether migration 00003 is applied and
-- its trigger enabled on the agent_sessions table in the search path.
-- name: InvalidationTriggerEnabled :one
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_trigger
    WHERE tgrelid = to_regclass('agent_sessions')
      AND tgname = 'agent_sessions_notify_invalidate'
      AND tgenabled <> 'D'
) AS enabled;
