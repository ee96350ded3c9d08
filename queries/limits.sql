-- Per-(agent, kind) overrides of the default limit. Agent sessions are
-- kind 'session'.

-- name: GetAgentLimit :one
SELECT max_sessions FROM agent_limits
WHERE agent_id = @agent_id AND kind = @kind;

-- name: SetAgentLimit :exec
INSERT INTO agent_limits (agent_id, kind, max_sessions)
VALUES (@agent_id, @kind, @max_sessions)
ON CONFLICT (agent_id, kind) DO UPDATE
SET max_sessions = excluded.max_sessions, updated_at = now();

-- name: DeleteAgentLimit :execrows
DELETE FROM agent_limits
WHERE agent_id = @agent_id AND kind = @kind;

-- name: ListAgentLimits :many
SELECT agent_id, kind, max_sessions FROM agent_limits
WHERE kind = @kind
ORDER BY agent_id;
