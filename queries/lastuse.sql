-- Last use of sessions (migration 00006), for idle timeouts and
-- least-recently-used eviction.

-- name: TouchSessions :exec
-- A manager's batch of last uses, one statement for all of them. It only
-- moves last_used_at forward, so batches from several instances (whose
-- clocks may differ) and reruns of one batch may land in any order. It
-- writes nothing but last_used_at: no count changes, and the
-- invalidation trigger (UPDATE OF every other column) stays quiet.
UPDATE agent_sessions s
SET last_used_at = u.at
FROM (SELECT unnest(@ids::text[]) AS id, unnest(@ats::timestamptz[]) AS at) AS u
WHERE s.id = u.id AND u.at > coalesce(s.last_used_at, s.issued_at);
