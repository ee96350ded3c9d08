-- name: DeleteExpiredBatch :execrows
-- Oldest first, at most batch_size rows, skipping rows another transaction
-- holds: each batch is a short statement that never waits on an issue
-- transaction and never takes a table-wide lock.
DELETE FROM agent_sessions
WHERE id IN (
    SELECT expired.id FROM agent_sessions AS expired
    WHERE expired.expires_at <= @now
    ORDER BY expired.expires_at
    LIMIT @batch_size
    FOR UPDATE SKIP LOCKED
);

-- name: TryAdvisoryLock :one
SELECT pg_try_advisory_lock(@key::bigint);

-- name: AdvisoryUnlock :one
SELECT pg_advisory_unlock(@key::bigint);
