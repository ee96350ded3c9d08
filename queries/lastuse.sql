-- Last use of sessions (migration 00006), for idle timeouts and
-- least-recently-used eviction.

-- name: TouchSessions :exec
-- A manager's batch of last uses, one statement for all of them. It only
-- moves last_used_at forward, so batches from several instances (whose
-- clocks may differ) and reruns of one batch may land in any order. It
-- writes nothing but last_used_at: no count changes, and the
-- invalidation trigger (UPDATE OF every other column) stays quiet.
--
-- A use timed more than a minute past the database's clock is written as
-- that: since last uses never move back, an instance whose clock ran far
-- ahead (an NTP step) could otherwise keep the sessions it served from
-- going idle for as long as it was ahead.
UPDATE agent_sessions s
SET last_used_at = u.at
FROM (SELECT v.id, least(v.at, statement_timestamp() + interval '1 minute') AS at
      FROM (SELECT unnest(@ids::text[]) AS id, unnest(@ats::timestamptz[]) AS at) AS v) AS u
WHERE s.id = u.id AND u.at > coalesce(s.last_used_at, s.issued_at);
