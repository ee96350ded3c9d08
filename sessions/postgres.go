package sessions

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/db"
)

// PostgresConfig tunes a [PostgresStore]. The zero value gives the defaults.
type PostgresConfig struct {
	// MaxAttempts is how many times InsertIfBelowLimit runs its transaction
	// when PostgreSQL aborts it with a serialization failure or deadlock
	// (SQLSTATE 40001/40P01) before giving up with [ErrRetriesExhausted].
	// Default: 20.
	MaxAttempts int

	// MinBackoff and MaxBackoff bound the wait before a retry: attempt n
	// waits a uniformly random time in [MinBackoff, min(MaxBackoff,
	// MinBackoff*2^n)], so contending instances spread out instead of
	// colliding again. Defaults: 2ms and 200ms.
	MinBackoff time.Duration
	MaxBackoff time.Duration
}

func (c PostgresConfig) withDefaults() (PostgresConfig, error) {
	if c.MaxAttempts < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 {
		return c, &ConfigError{Field: "PostgresConfig", Reason: "values must not be negative"}
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 20
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 2 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 200 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		return c, &ConfigError{Field: "PostgresConfig.MaxBackoff", Reason: "must not be below MinBackoff"}
	}
	return c, nil
}

// PostgresStore is a [Store] in a PostgreSQL table (created by the
// migrations package) reached through a pgx pool. Any number of processes
// may share one database: the limit check runs as one SERIALIZABLE
// transaction, which PostgreSQL aborts rather than let two of them both
// see room for one more session.
type PostgresStore struct {
	pool  *pgxpool.Pool
	q     *db.Queries
	cfg   PostgresConfig
	stats pgStats
}

type pgStats struct {
	transactions atomic.Uint64
	retries      atomic.Uint64
	exhausted    atomic.Uint64
}

// PostgresStats counts the limit-check transactions of one store.
type PostgresStats struct {
	Transactions uint64 // InsertIfBelowLimit calls that ran a transaction
	Retries      uint64 // transaction attempts retried after 40001/40P01
	Exhausted    uint64 // calls that gave up with ErrRetriesExhausted
}

// NewPostgresStore returns a store on pool. The pool is the caller's to
// close. cfg may be nil for the defaults.
func NewPostgresStore(pool *pgxpool.Pool, cfg *PostgresConfig) (*PostgresStore, error) {
	if pool == nil {
		return nil, &ConfigError{Field: "pool", Reason: "must not be nil"}
	}
	var c PostgresConfig
	if cfg != nil {
		c = *cfg
	}
	c, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	return &PostgresStore{pool: pool, q: db.New(pool), cfg: c}, nil
}

// Stats returns the store's counters since it was created.
func (p *PostgresStore) Stats() PostgresStats {
	return PostgresStats{
		Transactions: p.stats.transactions.Load(),
		Retries:      p.stats.retries.Load(),
		Exhausted:    p.stats.exhausted.Load(),
	}
}

// Get implements [Store].
func (p *PostgresStore) Get(ctx context.Context, id string) (Session, bool, error) {
	row, err := p.q.GetSession(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return Session{}, false, nil
	}
	if err != nil {
		return Session{}, false, p.wrap(ctx, "get", err)
	}
	return Session{
		ID:          row.ID,
		AgentID:     row.AgentID,
		IssuedAt:    row.IssuedAt.UTC(),
		ExpiresAt:   row.ExpiresAt.UTC(),
		TokenDigest: row.TokenDigest,
	}, true, nil
}

// Delete implements [Store].
func (p *PostgresStore) Delete(ctx context.Context, id string) error {
	if _, err := p.q.DeleteSession(ctx, id); err != nil {
		return p.wrap(ctx, "delete", err)
	}
	return nil
}

// InsertIfBelowLimit implements [Store] with one SERIALIZABLE transaction:
// delete the agent's expired rows, count the rest, insert if below limit.
// Serialization failures and deadlocks are retried with jittered
// exponential backoff up to MaxAttempts; the caller sees them only as
// [ErrRetriesExhausted].
func (p *PostgresStore) InsertIfBelowLimit(ctx context.Context, s Session, limit int, now time.Time) (bool, error) {
	p.stats.transactions.Add(1)
	var lastErr error
	for attempt := 0; attempt < p.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			p.stats.retries.Add(1)
			if err := sleepCtx(ctx, p.backoff(attempt)); err != nil {
				return false, p.wrap(ctx, "insert", errors.Join(err, lastErr))
			}
		}
		inserted, err := p.insertTx(ctx, s, limit, now)
		if err == nil {
			return inserted, nil
		}
		if !isSerializationFailure(err) {
			return false, p.wrap(ctx, "insert", err)
		}
		lastErr = err
	}
	p.stats.exhausted.Add(1)
	return false, &StoreError{Op: "insert", Err: fmt.Errorf("%w after %d attempts: %w", ErrRetriesExhausted, p.cfg.MaxAttempts, lastErr)}
}

func (p *PostgresStore) insertTx(ctx context.Context, s Session, limit int, now time.Time) (inserted bool, err error) {
	tx, err := p.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	if err != nil {
		return false, err
	}
	defer func() {
		if err != nil || !inserted {
			// Rollback on a broken connection fails too; the server aborts
			// the transaction when the connection closes either way.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	q := p.q.WithTx(tx)
	if _, err := q.DeleteExpiredAgentSessions(ctx, db.DeleteExpiredAgentSessionsParams{AgentID: s.AgentID, Now: now}); err != nil {
		return false, err
	}
	n, err := q.CountAgentSessions(ctx, s.AgentID)
	if err != nil {
		return false, err
	}
	if n >= int64(limit) {
		// Commit, not roll back: the prune above is worth keeping, and a
		// commit is what lets PostgreSQL check this read against
		// concurrent inserts (it may still fail with 40001 and be retried).
		return false, tx.Commit(ctx)
	}
	err = q.InsertSession(ctx, db.InsertSessionParams{
		ID:          s.ID,
		AgentID:     s.AgentID,
		IssuedAt:    s.IssuedAt,
		ExpiresAt:   s.ExpiresAt,
		TokenDigest: s.TokenDigest,
	})
	if err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// backoff returns the jittered wait before retry number attempt (>= 1).
func (p *PostgresStore) backoff(attempt int) time.Duration {
	ceil := p.cfg.MaxBackoff
	if shift := attempt - 1; shift < 30 {
		if d := p.cfg.MinBackoff << shift; d > 0 && d < ceil {
			ceil = d
		}
	}
	if ceil <= p.cfg.MinBackoff {
		return p.cfg.MinBackoff
	}
	return p.cfg.MinBackoff + rand.N(ceil-p.cfg.MinBackoff)
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

func isSerializationFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// wrap makes err a *StoreError, names a duplicate session ID plainly, and
// puts the context's error in the chain when the context is why the call
// failed, so errors.Is(err, context.DeadlineExceeded) holds.
func (p *PostgresStore) wrap(ctx context.Context, op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "agent_sessions_pkey" {
		err = fmt.Errorf("%w: %w", errDuplicateID, err)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		err = errors.Join(ctxErr, err)
	}
	return &StoreError{Op: op, Err: err}
}
