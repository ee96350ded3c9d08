-- name: GetSession :one
SELECT id, agent_id, issued_at, expires_at, token_digest
FROM agent_sessions
WHERE id = $1;

-- name: DeleteSession :execrows
DELETE FROM agent_sessions
WHERE id = $1;

-- name: DeleteExpiredAgentSessions :execrows
-- Only the calling agent's rows: pruning other agents here would make
-- transactions for unrelated agents conflict with each other.
DELETE FROM agent_sessions
WHERE agent_id = @agent_id AND expires_at <= @now;

-- name: CountAgentSessions :one
-- Runs right after DeleteExpiredAgentSessions in the same transaction, so
-- every row left for the agent is live by the caller's clock.
SELECT count(*) FROM agent_sessions
WHERE agent_id = @agent_id;

-- name: InsertSession :exec
INSERT INTO agent_sessions (id, agent_id, issued_at, expires_at, token_digest)
VALUES (@id, @agent_id, @issued_at, @expires_at, @token_digest);
