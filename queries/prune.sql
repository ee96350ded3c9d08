-- name: DeleteExpiredBatch :execrows
-- Oldest first, at most batch_size rows per statement, so each batch is a
-- short statement and never a table-wide delete. No FOR UPDATE SKIP
-- LOCKED: it would need UPDATE privilege, which the runtime role does not
-- get. At worst a batch waits for an issue transaction that is deleting
-- the same expired row, which takes milliseconds.
DELETE FROM agent_sessions
WHERE id IN (
    SELECT expired.id FROM agent_sessions AS expired
    WHERE expired.expires_at <= @now
    ORDER BY expired.expires_at
    LIMIT @batch_size
);

-- name: TryAdvisoryLock :one
SELECT pg_try_advisory_lock(@key::bigint);

-- name: AdvisoryUnlock :one
SELECT pg_advisory_unlock(@key::bigint);
