package sessions

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/db"
)

// PostgresConfig tunes a [PostgresStore]. The zero value gives the defaults.
type PostgresConfig struct {
	// MaxAttempts is how many times a call (the limit transaction, Get or
	// Delete) runs when PostgreSQL aborts it with a serialization failure
	// or deadlock (SQLSTATE 40001/40P01) before giving up with
	// [ErrRetriesExhausted]. Default: 20.
	MaxAttempts int

	// MinBackoff and MaxBackoff bound the wait before a retry: retry n
	// (from 1) waits a uniformly random time in [MinBackoff,
	// min(MaxBackoff, MinBackoff*2^n)], so contending instances spread out
	// instead of colliding again. Defaults: 2ms and 200ms.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// LookupBatches is how many session lookups (Authenticate's query)
	// may be in flight at once. Lookups that arrive while all are busy
	// wait and then go out together, pipelined in one round trip, each
	// still its own primary-key query; a lookup that finds one free goes
	// out at once. Fewer in flight means bigger batches and less client
	// and server work per lookup; more means less waiting behind a slow
	// round trip. Default: GOMAXPROCS/2, at least 1 and at most the
	// pool's MaxConns. On this project's 2-core machine one per instance
	// measured best (see README, Performance).
	LookupBatches int
}

func (c PostgresConfig) withDefaults() (PostgresConfig, error) {
	if c.MaxAttempts < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 || c.LookupBatches < 0 {
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
	pool    *pgxpool.Pool
	q       *db.Queries
	cfg     PostgresConfig
	stats   pgStats
	cache   atomic.Pointer[sessionCache] // set while RunCache runs
	one     *db.Queries                  // runs the limit statement as its own SERIALIZABLE transaction
	lookups *lookups                     // Get's queries, batched when they arrive together
}

type pgStats struct {
	transactions atomic.Uint64
	retries      atomic.Uint64
	exhausted    atomic.Uint64
	reconnects   atomic.Uint64
	lookups      atomic.Uint64
	lookupTrips  atomic.Uint64
}

// PostgresStats counts one store's limit-check transactions and the reruns
// of all its calls.
type PostgresStats struct {
	Transactions uint64 // Insert calls
	Retries      uint64 // attempts retried after 40001/40P01 (any call)
	Exhausted    uint64 // calls that gave up with ErrRetriesExhausted
	Reconnects   uint64 // attempts rerun because their connection broke before commit
	Lookups      uint64 // session lookups (Get) sent to the database
	LookupTrips  uint64 // round trips those took: Lookups/LookupTrips is the mean batch size
}

// NewPostgresStore returns a store on pool. The pool is the caller's to
// close. cfg may be nil for the defaults.
//
// Issue runs its limit check as one statement at SERIALIZABLE. On an
// ordinary pool it is sent with BEGIN and COMMIT in one pipelined batch.
// A pool opened with default_transaction_isolation=serializable (in the
// connection string, or in ConnConfig.RuntimeParams) lets the store send
// the statement alone, which costs the client less (see
// BenchmarkIssuePostgres and `agentsessions bench`); every other query on
// that pool then runs at SERIALIZABLE too, so give the store a pool of its
// own.
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
	p := &PostgresStore{pool: pool, q: db.New(pool), cfg: c}
	slots := c.LookupBatches
	if slots == 0 {
		slots = max(1, min(runtime.GOMAXPROCS(0)/2, int(pool.Config().MaxConns)))
	}
	p.lookups = newLookups(p, slots)
	if serializableByDefault(pool) {
		p.one = p.q // each statement is its own SERIALIZABLE transaction already
	} else {
		p.one = db.New(serializableRow{pool})
	}
	return p, nil
}

// Stats returns the store's counters since it was created.
func (p *PostgresStore) Stats() PostgresStats {
	return PostgresStats{
		Transactions: p.stats.transactions.Load(),
		Retries:      p.stats.retries.Load(),
		Exhausted:    p.stats.exhausted.Load(),
		Reconnects:   p.stats.reconnects.Load(),
		Lookups:      p.stats.lookups.Load(),
		LookupTrips:  p.stats.lookupTrips.Load(),
	}
}

// Get implements [Store]. While [PostgresStore.RunCache] runs, it answers
// from the cache when it can.
func (p *PostgresStore) Get(ctx context.Context, id string) (Session, bool, error) {
	c := p.cache.Load()
	if c == nil {
		return p.get(ctx, id)
	}
	s, ok, ticket := c.get(id)
	if ok {
		return s, true, nil
	}
	s, found, err := p.get(ctx, id)
	if found {
		c.fill(s, ticket)
	}
	return s, found, err
}

// get looks id up through p.lookups, which batches concurrent lookups.
func (p *PostgresStore) get(ctx context.Context, id string) (Session, bool, error) {
	return p.lookups.get(ctx, id)
}

// getOne looks id up with one query of its own.
func (p *PostgresStore) getOne(ctx context.Context, id string) (s Session, found bool, err error) {
	err = p.retry(ctx, "get", func() error {
		row, err := p.q.GetSession(ctx, id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // found stays false
		}
		if err != nil {
			return err
		}
		s, err = sessionFromRow(row)
		found = err == nil
		return err
	})
	return s, found, err
}

// Delete implements [Store]. A delete is rerun after a broken connection
// even if it may have committed: deleting twice is harmless, but then
// found may be false for a session this call did delete.
func (p *PostgresStore) Delete(ctx context.Context, id string) (found bool, err error) {
	defer p.invalidate(id)
	err = p.retry(ctx, "delete", func() error {
		n, err := p.q.DeleteSession(ctx, id)
		found = n > 0
		return err
	})
	return found, err
}

// DeleteExpired implements [Store].
func (p *PostgresStore) DeleteExpired(ctx context.Context, id, digest string, now time.Time) error {
	defer p.invalidate(id)
	return p.retry(ctx, "delete", func() error {
		_, err := p.q.DeleteExpiredSession(ctx, db.DeleteExpiredSessionParams{ID: id, Now: now, TokenDigest: digest})
		return err
	})
}

// invalidate drops sessions from this instance's cache at once; the
// trigger's notification does the same everywhere else.
func (p *PostgresStore) invalidate(ids ...string) {
	if c := p.cache.Load(); c != nil {
		for _, id := range ids {
			c.invalidate(id)
		}
	}
}

// Insert implements [Store] with one SERIALIZABLE transaction. Below the
// limit, with nothing of the agent's expired, it reads and bumps the
// agent's count row and inserts; otherwise it deletes the agent's expired
// rows, counts the rest and reads its override, evicts or gives up at the
// limit, inserts, and rewrites the count (see insertStmt). Serialization failures and deadlocks are
// retried with jittered exponential backoff up to MaxAttempts; the caller
// sees them only as [ErrRetriesExhausted].
func (p *PostgresStore) Insert(ctx context.Context, s Session, req InsertRequest) (res InsertResult, err error) {
	md, err := encodeMetadata(s.Metadata)
	if err != nil {
		return InsertResult{}, err
	}
	p.stats.transactions.Add(1)
	err = p.retry(ctx, "insert", func() (err error) {
		res, err = p.insertStmt(ctx, s, md, req)
		return err
	})
	if err != nil {
		return InsertResult{}, err
	}
	p.invalidate(res.Evicted...)
	return res, nil
}

// ListAgent implements [AgentStore].
func (p *PostgresStore) ListAgent(ctx context.Context, agentID string, now time.Time) (out []Session, err error) {
	err = p.retry(ctx, "list", func() error {
		rows, err := p.q.ListAgentSessions(ctx, db.ListAgentSessionsParams{AgentID: agentID, Now: now})
		if err != nil {
			return err
		}
		out = make([]Session, len(rows))
		for i, row := range rows {
			if out[i], err = sessionFromRow(row); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// DeleteAgent implements [AgentStore].
func (p *PostgresStore) DeleteAgent(ctx context.Context, agentID string) (n int, err error) {
	defer func() {
		if c := p.cache.Load(); c != nil {
			c.invalidateAgent(agentID)
		}
	}()
	err = p.retry(ctx, "delete agent", func() error {
		rows, err := p.q.DeleteAgentSessions(ctx, agentID)
		n = int(rows)
		return mayHaveCommitted(err)
	})
	return n, err
}

// Extend implements [RefreshStore] with one UPDATE.
func (p *PostgresStore) Extend(ctx context.Context, id, oldDigest string, expiresAt time.Time, newDigest string, now time.Time) (ok bool, err error) {
	defer p.invalidate(id)
	err = p.retry(ctx, "extend", func() error {
		rows, err := p.q.ExtendSession(ctx, db.ExtendSessionParams{
			ID: id, OldDigest: oldDigest, ExpiresAt: expiresAt, NewDigest: newDigest, Now: now,
		})
		ok = rows == 1
		return mayHaveCommitted(err)
	})
	return ok, err
}

// AgentLimit implements [LimitStore].
func (p *PostgresStore) AgentLimit(ctx context.Context, agentID string) (limit int, found bool, err error) {
	err = p.retry(ctx, "get limit", func() error {
		n, err := p.q.GetAgentLimit(ctx, agentID)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		limit, found = int(n), err == nil
		return err
	})
	return limit, found, err
}

// SetAgentLimit implements [LimitStore].
func (p *PostgresStore) SetAgentLimit(ctx context.Context, agentID string, limit int) error {
	if limit < 1 || limit > math.MaxInt32 {
		return fmt.Errorf("limit %d out of range [1, %d]", limit, math.MaxInt32)
	}
	return p.retry(ctx, "set limit", func() error {
		return mayHaveCommitted(p.q.SetAgentLimit(ctx, db.SetAgentLimitParams{AgentID: agentID, MaxSessions: int32(limit)}))
	})
}

// DeleteAgentLimit implements [LimitStore].
func (p *PostgresStore) DeleteAgentLimit(ctx context.Context, agentID string) (found bool, err error) {
	err = p.retry(ctx, "delete limit", func() error {
		n, err := p.q.DeleteAgentLimit(ctx, agentID)
		found = n > 0
		return mayHaveCommitted(err)
	})
	return found, err
}

// AgentLimits implements [LimitStore].
func (p *PostgresStore) AgentLimits(ctx context.Context) (out []AgentLimitOverride, err error) {
	err = p.retry(ctx, "list limits", func() error {
		rows, err := p.q.ListAgentLimits(ctx)
		out = make([]AgentLimitOverride, len(rows))
		for i, r := range rows {
			out[i] = AgentLimitOverride{AgentID: r.AgentID, Limit: int(r.MaxSessions)}
		}
		return err
	})
	return out, err
}

// maxReconnects bounds how often one call is rerun because its connection
// broke before commit: enough to get past the stale connections a pool
// holds after a server restart or pg_terminate_backend, few enough that a
// real outage fails fast.
const maxReconnects = 4

// retry runs attempt until it succeeds or fails for good. It reruns
// attempts that certainly did not commit: serialization failures and
// deadlocks (with backoff, up to MaxAttempts) and broken connections (at
// once, up to maxReconnects).
func (p *PostgresStore) retry(ctx context.Context, op string, attempt func() error) error {
	var conflicts, reconnects int
	for {
		err := attempt()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil && isSerializationFailure(err):
			// As below: a serialization failure never reaches callers raw.
			return &StoreError{Op: op, Err: fmt.Errorf("%w while retrying a serialization failure", ctx.Err())}
		case ctx.Err() != nil:
			return p.wrap(ctx, op, err)
		case isSerializationFailure(err):
			conflicts++
			if conflicts >= p.cfg.MaxAttempts {
				p.stats.exhausted.Add(1)
				return &StoreError{Op: op, Err: fmt.Errorf("%w after %d attempts: %w", ErrRetriesExhausted, conflicts, err)}
			}
			p.stats.retries.Add(1)
			if err := sleepCtx(ctx, p.backoff(conflicts)); err != nil {
				// The serialization failure stays out of the chain: callers
				// see one only as ErrRetriesExhausted.
				return &StoreError{Op: op, Err: fmt.Errorf("%w while waiting to retry a serialization failure", err)}
			}
		case brokenBeforeCommit(err) && reconnects < maxReconnects:
			reconnects++
			p.stats.reconnects.Add(1)
		default:
			return p.wrap(ctx, op, err)
		}
	}
}

// insertStmt is the limit check as one statement (queries/sessions.sql,
// IssueSession) in one round trip: pipelined with BEGIN and COMMIT, or
// alone on a pool whose connections default to SERIALIZABLE (less client
// work: no batch, two fewer statements). It replaced a transaction of five
// round trips (BEGIN, prune, count, insert, COMMIT): BenchmarkIssuePostgres
// on 2026-11-24 (2 cores, 4 goroutines, 10,000 agents, medians of 3)
// measured 287 µs/op and 20 retries per 1,000 issues for the statement,
// 421 µs/op and 72 for the transaction.
//
// The statement works from the agent's count row (migration 00004), so
// agents do not make each other retry; an agent without one gets it from
// EnsureAgentCount, in its own short transaction, and the statement runs
// again. The statement refuses to insert below SERIALIZABLE (a connection
// whose default was changed after connecting), so a misconfigured pool
// fails loudly instead of breaking the limit.
func (p *PostgresStore) insertStmt(ctx context.Context, s Session, md []byte, req InsertRequest) (res InsertResult, err error) {
	args := db.IssueSessionParams{
		AgentID:      s.AgentID,
		Now:          req.Now,
		DefaultLimit: int32(min(req.Limit, math.MaxInt32)),
		Evict:        req.Policy == PolicyEvictOldest,
		ID:           s.ID,
		IssuedAt:     s.IssuedAt,
		ExpiresAt:    s.ExpiresAt,
		TokenDigest:  s.TokenDigest,
		Metadata:     md,
	}
	row, err := p.one.IssueSession(ctx, args)
	if err == nil && !row.Known && row.Serializable {
		if err = p.q.EnsureAgentCount(ctx, s.AgentID); err != nil {
			return res, err // nothing of this issue was written yet
		}
		row, err = p.one.IssueSession(ctx, args)
	}
	if err != nil {
		return res, mayHaveCommitted(err)
	}
	if !row.Serializable {
		return res, &ConfigError{Field: "pool", Reason: "the limit statement ran below SERIALIZABLE isolation; " +
			"do not change default_transaction_isolation on the store's connections except to serializable"}
	}
	if !row.Known {
		// Only a concurrent TRUNCATE or DELETE of agent_session_counts
		// between the two statements gets here.
		return res, fmt.Errorf("count row of agent %q vanished before the limit check", s.AgentID)
	}
	res = InsertResult{Inserted: row.Inserted == 1, Limit: int(row.EffectiveLimit)}
	if len(row.Evicted) > 0 {
		res.Evicted = row.Evicted
	}
	return res, nil
}

// serializableByDefault reports whether the pool's connections start with
// default_transaction_isolation=serializable (set in the connection
// string or ConnConfig.RuntimeParams).
func serializableByDefault(pool *pgxpool.Pool) bool {
	v := pool.Config().ConnConfig.RuntimeParams["default_transaction_isolation"]
	return strings.EqualFold(strings.TrimSpace(v), "serializable")
}

func sessionFromRow(row db.AgentSession) (Session, error) {
	md, err := decodeMetadata(row.Metadata)
	if err != nil {
		return Session{}, err
	}
	return Session{
		ID:          row.ID,
		AgentID:     row.AgentID,
		IssuedAt:    row.IssuedAt.UTC(),
		ExpiresAt:   row.ExpiresAt.UTC(),
		TokenDigest: row.TokenDigest,
		Metadata:    md,
	}, nil
}

// commitError marks a failure of COMMIT itself. A serialization failure
// reported by COMMIT means it did not commit; after any other failure it
// may have.
type commitError struct{ err error }

func (e *commitError) Error() string { return "commit: " + e.err.Error() }
func (e *commitError) Unwrap() error { return e.err }

// mayHaveCommitted classifies the error of a statement that commits by
// itself (autocommit, or pipelined with its COMMIT): once it was sent,
// only an ordinary server error proves it did not commit. A broken
// connection or a FATAL reply leaves the outcome unknown, so it must not
// be rerun: rerunning an UPDATE that did commit would report it as lost
// (Extend: ok=false with the new digest stored). Serialization failures
// stay retryable, as they did not commit.
func mayHaveCommitted(err error) error {
	if err == nil || pgconn.SafeToRetry(err) || connectFailed(err) {
		return err
	}
	var ce *commitError
	if errors.As(err, &ce) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !connectionGone(pgErr.Code) {
		return err
	}
	return &commitError{err}
}

// brokenBeforeCommit reports whether err means the connection failed (not
// the statement), at a point where nothing can have been committed: before
// COMMIT was sent, or with nothing sent at all.
func brokenBeforeCommit(err error) bool {
	if pgconn.SafeToRetry(err) {
		return true // nothing reached the server
	}
	if connectFailed(err) {
		// Nothing was sent. A refused dial or a server starting up or
		// shutting down (57P03) may pass; a wrong password or a missing
		// database will not, so those are not rerun.
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return connectionGone(pgErr.Code)
		}
		return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	var ce *commitError
	if errors.As(err, &ce) {
		// Even a FATAL in reply to COMMIT is ambiguous: the backend can be
		// terminated after the commit record is flushed.
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return connectionGone(pgErr.Code)
	}
	// Not a server error: the network, EOF, or a closed connection.
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// connectFailed reports whether err is a failure to open a connection
// (the pool's dial or startup handshake), so nothing of the call itself
// was sent and it cannot have committed.
func connectFailed(err error) bool {
	var ce *pgconn.ConnectError
	return errors.As(err, &ce)
}

// connectionGone: the server ended the session (admin or crash shutdown,
// not accepting connections yet) or reports a connection exception.
func connectionGone(code string) bool {
	return code == "57P01" || code == "57P02" || code == "57P03" || strings.HasPrefix(code, "08")
}

// backoff returns the jittered wait before retry number attempt (>= 1):
// uniform in [MinBackoff, min(MaxBackoff, MinBackoff*2^attempt)], so even
// the first retries of transactions that failed together spread out.
func (p *PostgresStore) backoff(attempt int) time.Duration {
	ceil := p.cfg.MaxBackoff
	if attempt < 30 {
		if d := p.cfg.MinBackoff << attempt; d > 0 && d < ceil {
			ceil = d
		}
	}
	if ceil <= p.cfg.MinBackoff {
		return p.cfg.MinBackoff
	}
	return p.cfg.MinBackoff + rand.N(ceil-p.cfg.MinBackoff+1)
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
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "agent_sessions_pkey":
		err = fmt.Errorf("%w: %w", errDuplicateID, err)
	case errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42703"):
		// undefined_table, undefined_column: the schema is missing or
		// older than this code. Say how to fix it.
		err = fmt.Errorf("%w: apply the migrations with migrations.Up "+
			"(or: agentsessions migrate up --database-url URL): %w", ErrNotMigrated, err)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		err = errors.Join(ctxErr, err)
	}
	return &StoreError{Op: op, Err: err}
}
