-- Queries of the benchmark (cmd/internal/bench) and of tools that load
-- or check a whole table. Not used on any request path.

-- name: TruncateSessions :exec
-- Empties the session tables, counts included (a TRUNCATE fires the
-- flush trigger: caches drop everything).
TRUNCATE agent_sessions, agent_session_counts;

-- name: EnsureAgentCounts :exec
-- Gives agents '1' .. n a count row (holding nothing) if they have none,
-- as agents that were issued sessions before have.
INSERT INTO agent_session_counts (agent_id)
SELECT g::text FROM generate_series(1, @n::integer) g
ON CONFLICT (agent_id, kind) DO NOTHING;

-- name: VacuumSessions :exec
-- After a bulk load: fresh statistics, and nothing left for autovacuum
-- to do while a workload runs.
VACUUM (ANALYZE) agent_sessions, agent_session_counts;

-- name: CheckLimit :one
-- The invariant, asked of the database: agents holding more rows (live
-- or not) than the limit, and how many rows there are.
SELECT (SELECT count(*) FROM (SELECT 1 FROM agent_sessions GROUP BY agent_id, kind HAVING count(*) > @max_sessions::integer) over_limit)::bigint AS over_limit_agents,
       (SELECT count(*) FROM agent_sessions)::bigint AS rows;

-- name: RecountAgents :exec
-- Sets the count rows of these agents from their session rows, after a
-- bulk load (Store.Import).
INSERT INTO agent_session_counts (agent_id, kind, stored, oldest_expiry)
SELECT s.agent_id, s.kind, count(*), min(s.expires_at) FROM agent_sessions s
WHERE s.agent_id = ANY(@agent_ids::text[])
GROUP BY s.agent_id, s.kind
ON CONFLICT (agent_id, kind) DO UPDATE SET stored = excluded.stored, oldest_expiry = excluded.oldest_expiry;

-- name: SessionTableBytes :one
-- The session table's size on disk with its indexes and TOAST, and its
-- rows: the bench reports bytes per stored session.
SELECT pg_total_relation_size('agent_sessions')::bigint AS bytes,
       (SELECT count(*) FROM agent_sessions)::bigint AS rows;

-- name: CountExpiredSessions :one
-- Expired rows still stored (after a prune pass: none should be left).
SELECT count(*)::bigint FROM agent_sessions WHERE expires_at <= now();

-- name: RestorePrefill :one
-- Deletes every session but the prefilled ones (decimal IDs first_id ..
-- last_id) and takes them off their agents' counts: after a workload that
-- only added sessions (issue) or none (authenticate), the table is back to
-- its prefill without loading it again. Returns the rows deleted.
WITH gone AS (
    DELETE FROM agent_sessions AS s
    WHERE NOT (CASE WHEN s.id ~ '^[0-9]{1,18}$' THEN s.id::bigint BETWEEN @first_id::bigint AND @last_id::bigint ELSE false END)
    RETURNING s.agent_id, s.kind
),
per_agent AS (
    SELECT agent_id, kind, count(*) AS n FROM gone GROUP BY agent_id, kind
),
counted AS (
    UPDATE agent_session_counts c
    SET stored = greatest(c.stored - per_agent.n, 0)::integer
    FROM per_agent
    WHERE c.agent_id = per_agent.agent_id AND c.kind = per_agent.kind
)
SELECT count(*)::bigint FROM gone;
