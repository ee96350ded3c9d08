-- +goose Up
-- One row per agent that has ever been issued a session: how many session
-- rows it holds (stored) and a lower bound on their earliest expiry
-- (oldest_expiry; 'infinity' when it holds none). Every statement of the
-- library that inserts or deletes session rows keeps these in step, in
-- the same statement.
--
-- Why: the limit check used to count the agent's rows through
-- agent_sessions_agent_expires_idx. At SERIALIZABLE that read takes a
-- predicate lock on the index page, and pages are shared by agents whose
-- IDs sort together, so unrelated agents made each other retry (about 20
-- per 1,000 issues at 32 clients). Reading and updating this one row
-- instead takes a lock on the row alone, and the update is HOT (fillfactor
-- 50 leaves room on the page), so it adds nothing to any index page: two
-- agents now conflict only when they are the same agent. When the row says
-- the agent is at its limit or may hold expired rows, the check still
-- reads the agent's session rows, prunes, counts, and rewrites the row
-- from what it found, so a count that ran high (rows deleted behind the
-- library's back, TRUNCATE) heals itself.
--
-- Rows are inserted into agent_sessions only by the library's limit
-- statement (or COPY followed by a recount, as the bench does); a writer
-- that inserted rows without raising stored would let that agent exceed
-- its limit. All instances must run a version that knows this table
-- before sessions are issued with it.
CREATE TABLE agent_session_counts (
    agent_id      text        NOT NULL,
    stored        integer     NOT NULL DEFAULT 0,
    oldest_expiry timestamptz NOT NULL DEFAULT 'infinity',
    CONSTRAINT agent_session_counts_pkey PRIMARY KEY (agent_id),
    CONSTRAINT agent_session_counts_agent_id_length CHECK (octet_length(agent_id) BETWEEN 1 AND 512),
    CONSTRAINT agent_session_counts_stored_nonnegative CHECK (stored >= 0)
) WITH (fillfactor = 50);

INSERT INTO agent_session_counts (agent_id, stored, oldest_expiry)
SELECT agent_id, count(*), min(expires_at)
FROM agent_sessions
GROUP BY agent_id;

-- +goose Down
DROP TABLE agent_session_counts;
