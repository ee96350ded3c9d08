package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/sessions"
)

// The CTE prototype (engine "agentsessions-cte", variant "cte") runs the
// limit check and insert as one data-modifying statement on connections
// whose default isolation is SERIALIZABLE (default_transaction_isolation
// set as a runtime parameter of the pool): one round trip, with no BEGIN or
// COMMIT sent at all. PostgreSQL runs the statement as its own SERIALIZABLE
// transaction and aborts it with 40001 where it would abort an explicit
// one: the count of live rows takes the same predicate locks on the agent's
// index range. Get and Delete are the library's, on the same connections,
// so they run at SERIALIZABLE too: that is this design's cost, and the
// authenticate workload shows it.
//
// It lives here, not in the library, so that it can be measured beside
// the library's own issue path (whatever that is: the pgbench reference
// replays what the library sends) in one run. It implements only
// PolicyReject.

// cteInsertSQL is the whole limit check and insert. Within one statement
// every part sees the same snapshot, so the DELETE of expired rows is not
// visible to the count; the count therefore counts only live rows
// (expires_at > now), which is what remains after that DELETE.
//
//	$1 id, $2 agent_id, $3 issued_at, $4 expires_at, $5 token_digest,
//	$6 metadata (NULL for none), $7 now, $8 the default limit.
//
// It returns whether it inserted and the limit it applied.
const cteInsertSQL = `WITH pruned AS (
    DELETE FROM agent_sessions WHERE agent_id = $2::text AND expires_at <= $7::timestamptz
), lim AS (
    SELECT coalesce((SELECT max_sessions FROM agent_limits WHERE agent_id = $2::text), $8::integer) AS n
), live AS (
    SELECT count(*) AS n FROM agent_sessions WHERE agent_id = $2::text AND expires_at > $7::timestamptz
), ins AS (
    INSERT INTO agent_sessions (id, agent_id, issued_at, expires_at, token_digest, metadata)
    SELECT $1::text, $2::text, $3::timestamptz, $4::timestamptz, $5::text, $6::jsonb
    FROM live, lim WHERE live.n < lim.n
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins) = 1 AS inserted, lim.n AS applied_limit FROM lim`

// serializableDefault makes every transaction on connections from cfg
// SERIALIZABLE unless it asks otherwise.
func serializableDefault(cfg *pgxpool.Config) {
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "serializable"
}

// cteStore is the library's PostgresStore with Insert replaced by
// cteInsertSQL. Its pool must come from a config passed through
// serializableDefault; Insert refuses to run otherwise.
type cteStore struct {
	*sessions.PostgresStore
	pool        *pgxpool.Pool
	maxAttempts int
	ownRetries  atomic.Int64
	exhausted   atomic.Int64
}

func newCTEStore(pool *pgxpool.Pool, maxAttempts int) (*cteStore, error) {
	if pool.Config().ConnConfig.RuntimeParams["default_transaction_isolation"] != "serializable" {
		return nil, errors.New("bench: the CTE store needs a pool with default_transaction_isolation=serializable")
	}
	ps, err := sessions.NewPostgresStore(pool, &sessions.PostgresConfig{MaxAttempts: maxAttempts})
	if err != nil {
		return nil, err
	}
	return &cteStore{PostgresStore: ps, pool: pool, maxAttempts: maxAttempts}, nil
}

// Insert implements sessions.Store with one statement, retrying
// serialization failures with the library's default backoff (uniform in
// [2ms, min(200ms, 2ms*2^n)]).
func (c *cteStore) Insert(ctx context.Context, s sessions.Session, req sessions.InsertRequest) (sessions.InsertResult, error) {
	if req.Policy != sessions.PolicyReject {
		return sessions.InsertResult{}, fmt.Errorf("bench: the CTE prototype implements only the reject policy: %w", errors.ErrUnsupported)
	}
	var md []byte
	if len(s.Metadata) > 0 {
		var err error
		if md, err = json.Marshal(s.Metadata); err != nil {
			return sessions.InsertResult{}, err
		}
	}
	var res sessions.InsertResult
	for attempt := 1; ; attempt++ {
		var limit int32
		err := c.pool.QueryRow(ctx, cteInsertSQL, s.ID, s.AgentID, s.IssuedAt, s.ExpiresAt, s.TokenDigest, md, req.Now, req.Limit).
			Scan(&res.Inserted, &limit)
		if err == nil {
			res.Limit = int(limit)
			return res, nil
		}
		if !isSerializationFailure(err) || ctx.Err() != nil {
			return res, err
		}
		if attempt >= c.maxAttempts {
			c.exhausted.Add(1)
			return res, fmt.Errorf("%w after %d attempts: %w", sessions.ErrRetriesExhausted, attempt, err)
		}
		c.ownRetries.Add(1)
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return res, err
		}
	}
}

// retries counts serialization-failure reruns of Insert and of the
// library's Get and Delete.
func (c *cteStore) retries() int64 {
	return c.ownRetries.Load() + int64(c.PostgresStore.Stats().Retries)
}

func isSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// backoff is the library's default: uniform in [2ms, min(200ms, 2ms*2^attempt)].
func backoff(attempt int) time.Duration {
	const lo, hi = 2 * time.Millisecond, 200 * time.Millisecond
	ceil := hi
	if attempt < 30 {
		if d := lo << attempt; d < ceil {
			ceil = d
		}
	}
	return lo + rand.N(ceil-lo+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
