-- name: DeleteExpiredBatch :one
-- Oldest first, at most batch_size rows per statement, so each batch is a
-- short statement and never a table-wide delete; the agents' counts go
-- down in the same statement. No FOR UPDATE SKIP LOCKED: it would need
-- UPDATE privilege, which the runtime role does not get. At worst a batch
-- waits for an issue transaction that is deleting the same expired row,
-- which takes milliseconds. oldest_expiry is left as it is (still a lower
-- bound); the agent's next limit check reads its rows once and tightens it.
--
-- The expiry predicate stands on the outer DELETE too, not only in the
-- subquery: at READ COMMITTED, a DELETE that waited on a row a concurrent
-- refresh (ExtendSession) was updating re-checks only its own WHERE
-- clause against the new row version, not the subquery that picked it.
-- Without the outer predicate a session extended while the batch waited
-- would be deleted though its refresh was acknowledged.
WITH gone AS (
    DELETE FROM agent_sessions AS target
    WHERE target.expires_at <= @now
      AND target.id IN (
        SELECT expired.id FROM agent_sessions AS expired
        WHERE expired.expires_at <= @now
        ORDER BY expired.expires_at
        LIMIT @batch_size
    )
    RETURNING target.agent_id, target.kind
),
per_agent AS (
    SELECT agent_id, kind, count(*) AS n FROM gone GROUP BY agent_id, kind
),
counted AS (
    UPDATE agent_session_counts c
    SET stored = greatest(c.stored - per_agent.n, 0)::integer,
        oldest_expiry = CASE WHEN c.stored <= per_agent.n THEN 'infinity'::timestamptz ELSE c.oldest_expiry END
    FROM per_agent
    WHERE c.agent_id = per_agent.agent_id AND c.kind = per_agent.kind
)
SELECT count(*) FROM gone;

-- name: TryAdvisoryLock :one
SELECT pg_try_advisory_lock(@key::bigint);

-- name: AdvisoryUnlock :one
SELECT pg_advisory_unlock(@key::bigint);

-- name: DeleteIdleBatch :one
-- The pruner's pass over idle agent sessions (PruneConfig.IdleTimeout): at
-- most batch_size rows whose last use is at or before cutoff. Last use is
-- not indexed (so that writing it is a HOT update), so each batch scans
-- the table until it has found its rows. As in DeleteExpiredBatch, the
-- outer DELETE repeats the predicate: a row touched while the batch
-- waited for it is re-checked against its new last use and survives.
WITH gone AS (
    DELETE FROM agent_sessions AS target
    WHERE target.kind = 'session'
      AND coalesce(target.last_used_at, target.issued_at) <= @cutoff::timestamptz
      AND target.id IN (
        SELECT idle.id FROM agent_sessions AS idle
        WHERE idle.kind = 'session' AND coalesce(idle.last_used_at, idle.issued_at) <= @cutoff::timestamptz
        LIMIT @batch_size
    )
    RETURNING target.agent_id, target.kind
),
per_agent AS (
    SELECT agent_id, kind, count(*) AS n FROM gone GROUP BY agent_id, kind
),
counted AS (
    UPDATE agent_session_counts c
    SET stored = greatest(c.stored - per_agent.n, 0)::integer,
        oldest_expiry = CASE WHEN c.stored <= per_agent.n THEN 'infinity'::timestamptz ELSE c.oldest_expiry END
    FROM per_agent
    WHERE c.agent_id = per_agent.agent_id AND c.kind = per_agent.kind
)
SELECT count(*) FROM gone;
