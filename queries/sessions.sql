-- name: GetSession :one
SELECT id, agent_id, issued_at, expires_at, token_digest, metadata
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
-- every row left for the agent is live by the caller's clock. The agent's
-- limit override (0 when there is none) comes back in the same round trip.
SELECT count(*) AS live,
       coalesce((SELECT max_sessions FROM agent_limits l WHERE l.agent_id = @agent_id), 0)::integer AS override
FROM agent_sessions
WHERE agent_sessions.agent_id = @agent_id;

-- name: EvictOldestAgentSessions :many
-- Makes room under the evict-oldest policy: the agent's n oldest sessions,
-- ties broken by ID so every instance picks the same ones.
DELETE FROM agent_sessions
WHERE id IN (
    SELECT s.id FROM agent_sessions s
    WHERE s.agent_id = @agent_id
    ORDER BY s.issued_at, s.id
    LIMIT @n
)
RETURNING id;

-- name: InsertSession :exec
INSERT INTO agent_sessions (id, agent_id, issued_at, expires_at, token_digest, metadata)
VALUES (@id, @agent_id, @issued_at, @expires_at, @token_digest, @metadata);

-- name: ListAgentSessions :many
SELECT id, agent_id, issued_at, expires_at, token_digest, metadata
FROM agent_sessions
WHERE agent_id = @agent_id AND expires_at > @now
ORDER BY issued_at, id;

-- name: DeleteAgentSessions :execrows
DELETE FROM agent_sessions
WHERE agent_id = @agent_id;

-- name: ExtendSession :execrows
-- Refresh: only the holder of the current token (its digest) can extend a
-- live session, and concurrent refreshes of one token cannot both win: the
-- second re-checks the WHERE clause after the first commits.
UPDATE agent_sessions
SET expires_at = @expires_at, token_digest = @new_digest
WHERE id = @id AND token_digest = @old_digest AND expires_at > @now;

-- name: IssueSession :one
-- The whole limit check as one statement, for PostgresStore.Insert: prune
-- the agent's expired rows, count its live ones, read its override, evict
-- the oldest (evict-oldest policy only) and insert if there is room. All
-- parts see one snapshot, so live counts rows as they were before the
-- prune; it skips expired rows itself. The caller runs it at SERIALIZABLE;
-- at any lower isolation it evicts and inserts nothing and says so in
-- serializable, since the limit would not hold.
WITH pruned AS (
    DELETE FROM agent_sessions p
    WHERE p.agent_id = @agent_id::text AND p.expires_at <= @now::timestamptz
),
live AS (
    SELECT count(*) AS n FROM agent_sessions l
    WHERE l.agent_id = @agent_id::text AND l.expires_at > @now::timestamptz
),
lim AS (
    SELECT coalesce((SELECT o.max_sessions FROM agent_limits o WHERE o.agent_id = @agent_id::text),
                    @default_limit::integer) AS n
),
evicted AS (
    DELETE FROM agent_sessions e
    WHERE @evict::boolean AND current_setting('transaction_isolation') = 'serializable' AND e.id IN (
        SELECT s.id FROM agent_sessions s
        WHERE s.agent_id = @agent_id::text AND s.expires_at > @now::timestamptz
        ORDER BY s.issued_at, s.id
        LIMIT greatest(0, (SELECT n FROM live) - (SELECT n FROM lim) + 1)
    )
    RETURNING e.id
),
inserted AS (
    INSERT INTO agent_sessions (id, agent_id, issued_at, expires_at, token_digest, metadata)
    SELECT @id::text, @agent_id::text, @issued_at::timestamptz, @expires_at::timestamptz,
           @token_digest::text, sqlc.narg(metadata)::jsonb
    WHERE (@evict::boolean OR (SELECT n FROM live) < (SELECT n FROM lim))
      AND current_setting('transaction_isolation') = 'serializable'
    RETURNING agent_sessions.id
)
SELECT current_setting('transaction_isolation') = 'serializable' AS serializable,
       (SELECT count(*) FROM inserted)::integer AS inserted,
       (SELECT n FROM lim)::integer AS effective_limit,
       coalesce((SELECT array_agg(evicted.id) FROM evicted), '{}')::text[] AS evicted;
