-- name: GetSession :one
SELECT id, agent_id, issued_at, expires_at, token_digest, metadata, kind, last_used_at
FROM agent_sessions
WHERE id = $1;

-- name: GetSessionBatch :batchone
-- GetSession for lookups that arrived together (sessions/lookups.go): one
-- pipelined round trip for all of them, each its own primary-key lookup.
SELECT id, agent_id, issued_at, expires_at, token_digest, metadata, kind, last_used_at
FROM agent_sessions
WHERE id = $1;

-- name: DeleteSession :one
-- Revoke: the row and its agent's count go together. Returns how many
-- rows were deleted (0 or 1).
WITH gone AS (
    DELETE FROM agent_sessions s WHERE s.id = @id::text RETURNING s.agent_id, s.kind
),
counted AS (
    UPDATE agent_session_counts c
    SET stored = greatest(c.stored - 1, 0),
        oldest_expiry = CASE WHEN c.stored <= 1 THEN 'infinity'::timestamptz ELSE c.oldest_expiry END
    FROM gone
    WHERE c.agent_id = gone.agent_id AND c.kind = gone.kind
)
SELECT count(*) FROM gone;

-- name: DeleteExpiredSession :one
-- Delete on sight (Authenticate saw an expired token): only if the row
-- really expired by the caller's clock, or still holds the presented
-- token's digest. A session refreshed since that token was issued has a
-- later expiry and a new digest and is left alone, so a stale copy of an
-- old token (a retry in flight, a log) cannot log the agent out.
WITH gone AS (
    DELETE FROM agent_sessions s
    WHERE s.id = @id::text
      AND (s.expires_at <= @now::timestamptz OR s.token_digest = @token_digest::text)
    RETURNING s.agent_id, s.kind
),
counted AS (
    UPDATE agent_session_counts c
    SET stored = greatest(c.stored - 1, 0),
        oldest_expiry = CASE WHEN c.stored <= 1 THEN 'infinity'::timestamptz ELSE c.oldest_expiry END
    FROM gone
    WHERE c.agent_id = gone.agent_id AND c.kind = gone.kind
)
SELECT count(*) FROM gone;

-- name: ListAgentSessions :many
SELECT id, agent_id, issued_at, expires_at, token_digest, metadata, kind, last_used_at
FROM agent_sessions
WHERE agent_id = @agent_id AND kind = @kind AND expires_at > @now
ORDER BY issued_at, id;

-- name: DeleteAgentSessions :one
-- Revoke all of an agent's sessions of one kind but except_id ('' for
-- none: IDs are never empty), and lower their count. When one is kept
-- the count row's expiry bound stays as it was: still a lower bound.
WITH gone AS (
    DELETE FROM agent_sessions s
    WHERE s.agent_id = @agent_id::text AND s.kind = @kind::text AND s.id <> @except_id::text
    RETURNING 1
),
counted AS (
    UPDATE agent_session_counts c
    SET stored = greatest(c.stored - (SELECT count(*) FROM gone), 0)::integer,
        oldest_expiry = CASE WHEN c.stored <= (SELECT count(*) FROM gone) THEN 'infinity'::timestamptz ELSE c.oldest_expiry END
    WHERE c.agent_id = @agent_id::text AND c.kind = @kind::text AND EXISTS (SELECT 1 FROM gone)
)
SELECT count(*) FROM gone;

-- name: ExtendSession :one
-- Refresh: only the holder of the current token (its digest) can extend a
-- live session, and concurrent refreshes of one token cannot both win: the
-- second re-checks the WHERE clause after the first commits. The agent's
-- count row is written only if the new expiry is below its oldest_expiry
-- bound (a shorter TTL than before); an ordinary refresh leaves it alone.
WITH extended AS (
    UPDATE agent_sessions
    SET expires_at = @expires_at, token_digest = @new_digest
    WHERE id = @id AND token_digest = @old_digest AND expires_at > @now
    RETURNING agent_id, kind, expires_at
),
bound AS (
    UPDATE agent_session_counts c
    SET oldest_expiry = extended.expires_at
    FROM extended
    WHERE c.agent_id = extended.agent_id AND c.kind = extended.kind AND c.oldest_expiry > extended.expires_at
)
SELECT count(*) FROM extended;

-- name: EnsureAgentCount :exec
-- Creates the agent's count row (migration 00004) before its first limit
-- check, in a transaction of its own: inserting a new key inside the
-- SERIALIZABLE limit check would lock and write an index page shared with
-- other agents, the very conflict the row is there to avoid. The count is
-- belt and braces: sessions are inserted only once the row exists, so
-- there is nothing to count unless rows came from elsewhere.
--
-- Its commit does not wait for the WAL flush (synchronous_commit off for
-- this transaction only; HAVING runs set_config once, rows or none): if
-- the server crashes first, the row is simply missing and made again,
-- and the limit check's own commit flushes the WAL past this one anyway.
-- That saves an agent's first issue one of its two disk flushes.
INSERT INTO agent_session_counts (agent_id, kind, stored, oldest_expiry)
SELECT @agent_id::text, @kind::text, count(*), coalesce(min(s.expires_at), 'infinity'::timestamptz)
FROM agent_sessions s
WHERE s.agent_id = @agent_id::text AND s.kind = @kind::text
HAVING set_config('synchronous_commit', 'off', true) IS NOT NULL
ON CONFLICT (agent_id, kind) DO NOTHING;

-- name: IssueSession :one
-- The whole limit check as one statement, for pgxstore.Store.Insert. It
-- starts from the agent's count row (migration 00004):
--
--   - fast path: the count is below the limit and no stored row can have
--     expired (stored = 0 or oldest_expiry > now), so live = stored. The
--     agent's session rows are not read at all; the only predicate lock is
--     on the count row. Insert the session and bump the count.
--   - otherwise (at the limit, or rows may have expired): prune the agent's
--     expired and idle rows, count its live ones, evict the oldest or the
--     least recently used (evict policies only) and insert if there is
--     room; then rewrite the count row from what was found, so a count
--     that drifted high heals.
--
-- A row is idle when its last use (last_used_at, else issued_at) is at or
-- before idle_cutoff: now minus the idle timeout and a margin for uses
-- not yet written (sessions.IdleDeleteCutoff), the year 1 when there is
-- no idle timeout. The fast path ignores idleness, and need not look: it inserts
-- only below the limit, and idle rows only make the true live count
-- smaller still.
--
-- The (SELECT ... FROM mode) conditions become one-time filters: when
-- false, PostgreSQL never starts the scan under them. With no count row
-- nothing is done and known is false; the caller runs EnsureAgentCount and
-- tries again. All parts see one snapshot, so the live scan sees rows as
-- they were before the prune and skips expired ones itself. The caller
-- runs this at SERIALIZABLE; at any lower isolation it evicts and inserts
-- nothing and says so in serializable, since the limit would not hold.
WITH cnt AS (
    SELECT c.stored, c.oldest_expiry FROM agent_session_counts c
    WHERE c.agent_id = @agent_id::text AND c.kind = @kind::text
),
lim AS (
    SELECT coalesce((SELECT o.max_sessions FROM agent_limits o WHERE o.agent_id = @agent_id::text AND o.kind = @kind::text),
                    @default_limit::integer) AS n
),
mode AS (
    SELECT EXISTS (SELECT 1 FROM cnt) AS known,
           coalesce((SELECT cnt.stored < (SELECT n FROM lim)
                            AND (cnt.stored = 0 OR cnt.oldest_expiry > @now::timestamptz) FROM cnt), false) AS fast
),
pruned AS (
    DELETE FROM agent_sessions p
    WHERE (SELECT known AND NOT fast FROM mode)
      AND p.agent_id = @agent_id::text AND p.kind = @kind::text
      AND (p.expires_at <= @now::timestamptz OR coalesce(p.last_used_at, p.issued_at) <= @idle_cutoff::timestamptz)
),
scanned AS (
    SELECT count(*) AS n, min(l.expires_at) AS oldest FROM agent_sessions l
    WHERE (SELECT known AND NOT fast FROM mode)
      AND l.agent_id = @agent_id::text AND l.kind = @kind::text AND l.expires_at > @now::timestamptz
      AND coalesce(l.last_used_at, l.issued_at) > @idle_cutoff::timestamptz
),
live AS (
    SELECT CASE WHEN (SELECT fast FROM mode) THEN (SELECT stored FROM cnt) ELSE (SELECT n FROM scanned) END AS n
),
evicted AS (
    -- Picked by a subquery like the pruner's batch, but safe without
    -- repeating its predicate: at SERIALIZABLE a row changed by a
    -- concurrent transaction fails the statement with 40001 (and a
    -- rerun) instead of being re-checked against the new version.
    DELETE FROM agent_sessions e
    WHERE @evict::boolean AND (SELECT known AND NOT fast FROM mode)
      AND current_setting('transaction_isolation') = 'serializable' AND e.id IN (
        SELECT s.id FROM agent_sessions s
        WHERE s.agent_id = @agent_id::text AND s.kind = @kind::text AND s.expires_at > @now::timestamptz
          AND coalesce(s.last_used_at, s.issued_at) > @idle_cutoff::timestamptz
        -- evict-oldest: by issue time; evict-least-recently-used: by
        -- last use first, the later of the stored one and the issuing
        -- instance's own not yet written (recent_ids, recent_ats). The
        -- ID breaks ties (whole seconds) for both.
        ORDER BY CASE WHEN @lru::boolean THEN greatest(coalesce(s.last_used_at, s.issued_at), (
                     SELECT max(r.at) FROM (SELECT unnest(@recent_ids::text[]) AS id, unnest(@recent_ats::timestamptz[]) AS at) r
                     WHERE r.id = s.id)) END,
                 s.issued_at, s.id
        LIMIT greatest(0, (SELECT n FROM live) - (SELECT n FROM lim) + 1)
    )
    RETURNING e.id
),
inserted AS (
    INSERT INTO agent_sessions (id, agent_id, kind, issued_at, expires_at, token_digest, metadata)
    SELECT @id::text, @agent_id::text, @kind::text, @issued_at::timestamptz, @expires_at::timestamptz,
           @token_digest::text, sqlc.narg(metadata)::jsonb
    WHERE (SELECT known FROM mode)
      AND (@evict::boolean OR (SELECT n FROM live) < (SELECT n FROM lim))
      AND current_setting('transaction_isolation') = 'serializable'
    RETURNING agent_sessions.expires_at
),
next AS (
    SELECT ((SELECT n FROM live) - (SELECT count(*) FROM evicted) + (SELECT count(*) FROM inserted))::integer AS stored,
           least(CASE WHEN (SELECT fast FROM mode) THEN (SELECT oldest_expiry FROM cnt)
                      ELSE coalesce((SELECT oldest FROM scanned), 'infinity'::timestamptz) END,
                 coalesce((SELECT min(expires_at) FROM inserted), 'infinity'::timestamptz)) AS oldest_expiry
),
counted AS (
    -- Written only when the count changes, when the bound must come down
    -- (a new session expiring before the agent's others, as after a TTL
    -- cut), or when the bound has passed and would keep the agent off the
    -- fast path: a refusal at the limit stays a read-only transaction,
    -- which conflicts with nothing.
    UPDATE agent_session_counts c
    SET stored = next.stored, oldest_expiry = next.oldest_expiry
    FROM next
    WHERE c.agent_id = @agent_id::text AND c.kind = @kind::text
      AND (c.stored <> next.stored
           OR next.oldest_expiry < c.oldest_expiry
           OR (c.oldest_expiry <= @now::timestamptz AND c.oldest_expiry <> next.oldest_expiry))
)
SELECT current_setting('transaction_isolation') = 'serializable' AS serializable,
       (SELECT known FROM mode) AS known,
       (SELECT count(*) FROM inserted)::integer AS inserted,
       (SELECT n FROM lim)::integer AS effective_limit,
       coalesce((SELECT array_agg(evicted.id) FROM evicted), '{}')::text[] AS evicted;

-- name: IssueSessionBatch :one
-- The fast path of IssueSession for several issues at once, for
-- pgxstore's issue batches (issuebatch.go): one SERIALIZABLE statement
-- and one commit for issues that arrived together. An (agent, kind) that
-- comes twice takes part once, by its first issue (DISTINCT ON; the
-- UPDATE would in any case bump a count row once and return one of its
-- inputs, and only the inputs it returns are inserted).
-- An issue is done here exactly when IssueSession would take its fast
-- path: the agent has a count row, is below its limit (its override, else
-- default_limit), and nothing of it can have expired (stored = 0 or
-- oldest_expiry > now). Then its count row is bumped and its session
-- inserted, as the fast path does; everything else (no count row, at the
-- limit, rows that may have expired: pruning, eviction, refusal) is left
-- to IssueSession, which the caller runs for the issues not in done.
-- Like IssueSession it does nothing below SERIALIZABLE and says so.
-- Inputs are sorted by (agent, kind) by the caller, so two batches bump
-- shared count rows in one order instead of deadlocking.
WITH inp AS (
    SELECT DISTINCT ON (i.agent_id, i.kind) i.*
    FROM (SELECT g.ord, (@agent_ids::text[])[g.ord] AS agent_id, (@kinds::text[])[g.ord] AS kind,
                 (@ids::text[])[g.ord] AS id, (@issued_ats::timestamptz[])[g.ord] AS issued_at,
                 (@expires_ats::timestamptz[])[g.ord] AS expires_at, (@token_digests::text[])[g.ord] AS token_digest,
                 (@metadata::text[])[g.ord] AS metadata, (@default_limits::integer[])[g.ord] AS default_limit
          FROM generate_subscripts(@agent_ids::text[], 1) AS g(ord)) i
    ORDER BY i.agent_id, i.kind, i.ord
),
lim AS (
    SELECT inp.*, coalesce((SELECT o.max_sessions FROM agent_limits o WHERE o.agent_id = inp.agent_id AND o.kind = inp.kind),
                           inp.default_limit) AS n
    FROM inp
),
bumped AS (
    UPDATE agent_session_counts c
    SET stored = c.stored + 1, oldest_expiry = least(c.oldest_expiry, lim.expires_at)
    FROM lim
    WHERE c.agent_id = lim.agent_id AND c.kind = lim.kind
      AND c.stored < lim.n
      AND (c.stored = 0 OR c.oldest_expiry > @now::timestamptz)
      AND current_setting('transaction_isolation') = 'serializable'
    RETURNING lim.ord, lim.n
),
inserted AS (
    INSERT INTO agent_sessions (id, agent_id, kind, issued_at, expires_at, token_digest, metadata)
    SELECT lim.id, lim.agent_id, lim.kind, lim.issued_at, lim.expires_at, lim.token_digest,
           nullif(lim.metadata, '')::jsonb
    FROM lim JOIN bumped ON bumped.ord = lim.ord
    RETURNING agent_sessions.id
)
SELECT current_setting('transaction_isolation') = 'serializable' AS serializable,
       (SELECT count(*) FROM inserted)::integer AS inserted,
       coalesce((SELECT array_agg(bumped.ord::integer ORDER BY bumped.ord) FROM bumped), '{}')::integer[] AS done,
       coalesce((SELECT array_agg(bumped.n ORDER BY bumped.ord) FROM bumped), '{}')::integer[] AS limits;

-- name: CountLiveSessions :one
-- Live sessions by the caller's clock, for metrics: every live row is
-- scanned (an index-only scan where the planner can), so callers cache
-- the result rather than count on every scrape.
SELECT count(*) FROM agent_sessions WHERE kind = 'session' AND expires_at > @now;
