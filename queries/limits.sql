-- name: GetAgentLimit :one
SELECT max_sessions FROM agent_limits
WHERE agent_id = @agent_id;

-- name: SetAgentLimit :exec
INSERT INTO agent_limits (agent_id, max_sessions)
VALUES (@agent_id, @max_sessions)
ON CONFLICT (agent_id) DO UPDATE
SET max_sessions = excluded.max_sessions, updated_at = now();

-- name: DeleteAgentLimit :execrows
DELETE FROM agent_limits
WHERE agent_id = @agent_id;

-- name: ListAgentLimits :many
SELECT agent_id, max_sessions FROM agent_limits
ORDER BY agent_id;
