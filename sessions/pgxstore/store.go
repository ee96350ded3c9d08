// Package pgxstore is the PostgreSQL [sessions.Store], on a pgx/v5 pool:
// the tables come from package migrations, the SQL from queries/ through
// the sqlc-generated package db. It owns everything about that schema: the
// limit statement and every other writer of agent_sessions, the verified-
// session cache and its listener ([Store.RunCache]), the pruner
// ([Store.RunPruner]), readiness ([Store.Ready]) and live-session counts
// ([Store.LiveSessions]).
//
// Any number of processes may share one database: the limit check is one
// SERIALIZABLE statement, which PostgreSQL aborts (and the store reruns)
// rather than let two instances both see room for one more session.
package pgxstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// Config tunes a [Store]. The zero value gives the defaults.
type Config struct {
	// MaxAttempts is how many times a call (the limit transaction, Get or
	// Delete) runs when PostgreSQL aborts it with a serialization failure
	// or deadlock (SQLSTATE 40001/40P01), or because its lock table is
	// full (53200, "out of shared memory"), before giving up with
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
	// pool's MaxConns (docs/performance.md has the measurements behind
	// it).
	LookupBatches int

	// IssueBatches is how many issue transactions may be in flight at
	// once. Issues that arrive while all are busy wait and then go out
	// together, up to 16 in one SERIALIZABLE transaction with one commit
	// (issuebatch.go has how the limit is kept); an issue that finds one
	// free goes out at once, alone. Fewer in flight means bigger batches
	// and less server work per issue; more means less waiting behind a
	// slow commit; the pool's MaxConns or more batches only issues that
	// would otherwise wait for a connection. Default: GOMAXPROCS/2, at
	// least 1 and at most the pool's MaxConns, as for LookupBatches
	// (docs/performance.md has the measurements behind it).
	IssueBatches int

	// Observer, if set, is told about reruns after serialization failures
	// and broken connections, prune passes and cache resyncs: see
	// [Observer]. Default: none.
	Observer Observer

	// DirectDatabaseURL, if set, is the connection string for what needs
	// a database session of its own: the LISTEN connections of the cache
	// ([Store.RunCache]) and handle events ([Store.RunHandleEvents]), and
	// the connection each prune pass holds its advisory lock on
	// ([Store.RunPruner]). By default they use the pool's settings (the
	// pruner, a connection of the pool). Set it when the pool goes through
	// a connection pooler in transaction mode (PgBouncer pool_mode =
	// transaction), which cannot carry LISTEN nor a session lock: it must
	// reach PostgreSQL directly (a multi-host URL with
	// target_session_attrs=read-write is fine). Without it, behind such a
	// pooler, RunCache and RunHandleEvents refuse to start and every prune
	// pass fails, saying so. See "High availability and scale" in
	// docs/operations.md.
	DirectDatabaseURL string
}

func (c Config) withDefaults() (Config, error) {
	if c.MaxAttempts < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 || c.LookupBatches < 0 || c.IssueBatches < 0 {
		return c, &sessions.ConfigError{Field: "Config", Reason: "values must not be negative"}
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
		return c, &sessions.ConfigError{Field: "Config.MaxBackoff", Reason: "must not be below MinBackoff"}
	}
	return c, nil
}

// Store is a [Store] in a PostgreSQL table (created by the
// migrations package) reached through a pgx pool. Any number of processes
// may share one database: the limit check runs as one SERIALIZABLE
// transaction, which PostgreSQL aborts rather than let two of them both
// see room for one more session.
type Store struct {
	pool      *pgxpool.Pool
	q         *db.Queries
	cfg       Config
	stats     pgStats
	cache     atomic.Pointer[sessionCache]       // set while RunCache runs
	one       *db.Queries                        // runs the limit statement as its own SERIALIZABLE transaction
	batchOne  *db.Queries                        // the same for IssueSessionBatch, planned as index lookups
	lookups   *lookups                           // Get's queries, batched when they arrive together
	issues    *coalescer[issueCall, issueResult] // Insert's fast paths, batched when they arrive together
	eventsPID atomic.Uint32                      // backend of the handle events listener, for tests
	contended contention                         // agents whose issues queue on an advisory lock (queue.go)
	noQueue   atomic.Bool                        // the pool is behind a transaction pooler: never queue
	pruneOK   atomic.Bool                        // the pool's connections keep a session (checkPrunerSession passed)
}

type pgStats struct {
	transactions atomic.Uint64
	retries      atomic.Uint64
	exhausted    atomic.Uint64
	reconnects   atomic.Uint64
	lookups      atomic.Uint64
	lookupTrips  atomic.Uint64
	issueBatches atomic.Uint64
	issueBatched atomic.Uint64
}

// Stats counts one store's limit-check transactions and the reruns
// of all its calls.
type Stats struct {
	Transactions uint64 // Insert calls
	Retries      uint64 // attempts retried after 40001/40P01/53200 (any call)
	Exhausted    uint64 // calls that gave up with ErrRetriesExhausted
	Reconnects   uint64 // attempts rerun because their connection broke before commit
	Lookups      uint64 // session lookups (Get) sent to the database
	LookupTrips  uint64 // round trips those took: Lookups/LookupTrips is the mean batch size
	IssueBatches uint64 // transactions that decided two or more issues at once (issuebatch.go)
	IssueBatched uint64 // issues inserted by those
}

// NewStore returns a store on pool. The pool is the caller's to
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
//
// Through a connection pooler in transaction mode (PgBouncer 1.18,
// pool_mode = transaction), open the pool with
// default_query_exec_mode=cache_describe in its connection string (or
// ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe), and
// set Config.DirectDatabaseURL. pgx's default mode prepares named
// statements, which such a pooler does not carry from one transaction to
// the next; exec and simple_protocol send jsonb metadata as bytea, which
// fails; describe_exec splits each query over two round trips, which the
// pooler may send to two server connections. In cache_describe the
// pipelined BEGIN, statement and COMMIT stay one round trip and one
// transaction on one server connection. It costs server CPU (every
// statement is planned again): see "High availability and scale" in
// docs/operations.md for the measurements.
func New(pool *pgxpool.Pool, cfg *Config) (*Store, error) {
	if pool == nil {
		return nil, &sessions.ConfigError{Field: "pool", Reason: "must not be nil"}
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := c.checkDirectURL(); err != nil {
		return nil, err
	}
	p := &Store{pool: pool, q: db.New(pool), cfg: c}
	// LookupBatches and IssueBatches: the same default.
	slots := func(n int) int {
		if n == 0 {
			n = max(1, min(runtime.GOMAXPROCS(0)/2, int(pool.Config().MaxConns)))
		}
		return n
	}
	p.lookups = newLookups(p, slots(c.LookupBatches))
	p.issues = newIssues(p, slots(c.IssueBatches))
	p.batchOne = db.New(serializableRow{pool: pool, before: planForLookups})
	if serializableByDefault(pool) {
		p.one = p.q // each statement is its own SERIALIZABLE transaction already
	} else {
		p.one = db.New(serializableRow{pool: pool})
	}
	return p, nil
}

// Stats returns the store's counters since it was created.
func (p *Store) Stats() Stats {
	return Stats{
		Transactions: p.stats.transactions.Load(),
		Retries:      p.stats.retries.Load(),
		Exhausted:    p.stats.exhausted.Load(),
		Reconnects:   p.stats.reconnects.Load(),
		Lookups:      p.stats.lookups.Load(),
		LookupTrips:  p.stats.lookupTrips.Load(),
		IssueBatches: p.stats.issueBatches.Load(),
		IssueBatched: p.stats.issueBatched.Load(),
	}
}

// maxReconnects bounds how often one call is rerun because its connection
// broke before commit: enough to get past the stale connections a pool
// holds after a server restart or pg_terminate_backend, few enough that a
// real outage fails fast.
const maxReconnects = 4

// retry runs attempt until it succeeds or fails for good. It reruns
// attempts that certainly did not commit: serialization failures,
// deadlocks and a full lock table (with backoff, up to MaxAttempts; see
// needsBackoff) and broken connections (at once, up to maxReconnects).
func (p *Store) retry(ctx context.Context, op string, attempt func() error) error {
	var conflicts, reconnects int
	for {
		err := attempt()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil && needsBackoff(err):
			// As below: a serialization failure never reaches callers raw.
			return &sessions.StoreError{Op: op, Err: fmt.Errorf("%w while retrying a serialization failure", ctx.Err())}
		case ctx.Err() != nil:
			return p.wrap(ctx, op, err)
		case needsBackoff(err):
			conflicts++
			reason := backoffReason(err)
			if conflicts >= p.cfg.MaxAttempts {
				p.stats.exhausted.Add(1)
				p.observeRetry(ctx, RetryEvent{Op: op, Reason: reason, Attempt: conflicts, GaveUp: true}, err)
				return &sessions.StoreError{Op: op, Err: fmt.Errorf("%w after %d attempts: %w", ErrRetriesExhausted, conflicts, err)}
			}
			p.stats.retries.Add(1)
			wait := p.backoff(conflicts)
			p.observeRetry(ctx, RetryEvent{Op: op, Reason: reason, Attempt: conflicts, Backoff: wait}, err)
			if err := sleepCtx(ctx, wait); err != nil {
				// The serialization failure stays out of the chain: callers
				// see one only as ErrRetriesExhausted.
				return &sessions.StoreError{Op: op, Err: fmt.Errorf("%w while waiting to retry a serialization failure", err)}
			}
		case brokenBeforeCommit(err) && reconnects < maxReconnects:
			reconnects++
			p.stats.reconnects.Add(1)
			p.observeRetry(ctx, RetryEvent{Op: op, Reason: RetryReconnect, Attempt: reconnects}, err)
		default:
			return p.wrap(ctx, op, err)
		}
	}
}

// observeRetry tells the observer, if any, about ev; err is the attempt's
// error, for its SQLSTATE.
func (p *Store) observeRetry(ctx context.Context, ev RetryEvent, err error) {
	if p.cfg.Observer == nil {
		return
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		ev.SQLState = pgErr.Code
	}
	p.cfg.Observer.Retry(ctx, ev)
}

// serializableByDefault reports whether the pool's connections start with
// default_transaction_isolation=serializable (set in the connection
// string or ConnConfig.RuntimeParams).
func serializableByDefault(pool *pgxpool.Pool) bool {
	v := pool.Config().ConnConfig.RuntimeParams["default_transaction_isolation"]
	return strings.EqualFold(strings.TrimSpace(v), "serializable")
}

func sessionFromRow(row db.AgentSession) (sessions.Session, error) {
	md, err := decodeMetadata(row.Metadata)
	if err != nil {
		return sessions.Session{}, err
	}
	s := sessions.Session{
		ID:          row.ID,
		AgentID:     row.AgentID,
		Kind:        row.Kind,
		IssuedAt:    row.IssuedAt.UTC(),
		ExpiresAt:   row.ExpiresAt.UTC(),
		TokenDigest: row.TokenDigest,
		LastUsedAt:  row.IssuedAt.UTC(), // NULL: never recorded
		Metadata:    md,
	}
	if row.LastUsedAt.Valid && row.LastUsedAt.Time.After(row.IssuedAt) {
		s.LastUsedAt = row.LastUsedAt.Time.UTC()
	}
	return s, nil
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
	var known outcomeKnown
	if err == nil || pgconn.SafeToRetry(err) || connectFailed(err) || errors.As(err, &known) {
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
func (p *Store) backoff(attempt int) time.Duration {
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

// outOfSharedMemory reports SQLSTATE 53200, which PostgreSQL raises when a
// shared lock table is full. At SERIALIZABLE that is mostly the predicate
// lock table (sized by max_pred_locks_per_transaction), filled for the
// moment by other transactions' locks (a prune pass beside a burst of
// issues did it in the bench): once they end there is room again, so the
// statement, which committed nothing, is worth rerunning after a backoff.
func outOfSharedMemory(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "53200"
}

// needsBackoff reports the errors retry reruns after a backoff.
func needsBackoff(err error) bool { return isSerializationFailure(err) || outOfSharedMemory(err) }

// backoffReason is the [RetryEvent.Reason] of a needsBackoff error.
func backoffReason(err error) string {
	if outOfSharedMemory(err) {
		return RetrySharedMemory
	}
	return RetrySerialization
}

// wrap makes err a *sessions.StoreError, names a duplicate session ID plainly, and
// puts the context's error in the chain when the context is why the call
// failed, so errors.Is(err, context.DeadlineExceeded) holds.
func (p *Store) wrap(ctx context.Context, op string, err error) error {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "agent_sessions_pkey":
		err = fmt.Errorf("%w: %w", sessions.ErrDuplicateSessionID, err)
	case errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42703"):
		// undefined_table, undefined_column: the schema is missing or
		// older than this code. Say how to fix it.
		err = fmt.Errorf("%w: apply the migrations with migrations.Up "+
			"(or: agentsessions migrate up --database-url URL): %w", ErrNotMigrated, err)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		err = errors.Join(ctxErr, err)
	}
	return &sessions.StoreError{Op: op, Err: err}
}

// encodeMetadata is the jsonb value for md: nil (SQL NULL) when empty.
// The Manager validated md before the store sees it.
func encodeMetadata(md map[string]string) ([]byte, error) {
	if len(md) == 0 {
		return nil, nil
	}
	return json.Marshal(md)
}

// decodeMetadata reads what encodeMetadata wrote (via jsonb, which may
// reorder keys; a map does not care).
func decodeMetadata(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var md map[string]string
	if err := json.Unmarshal(b, &md); err != nil {
		return nil, fmt.Errorf("stored metadata is not a JSON object of strings: %w", err)
	}
	return md, nil
}

// cloneSession copies the metadata map, so callers cannot change what the
// cache holds.
func cloneSession(s sessions.Session) sessions.Session {
	s.Metadata = maps.Clone(s.Metadata)
	return s
}
