package pgxstore

import (
	"context"
	"errors"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Same-agent issues queue instead of aborting, once an agent is contended.
//
// Issues for one agent conflict on its count row: at SERIALIZABLE all but
// one of a burst abort (40001) and retry with backoff, so a reconnect
// storm (every replica's clients of one agent issuing at once) spends most
// of its time aborting. An agent whose issue hit a serialization failure
// on this instance is marked contended for a second; while it is, this
// instance's issues for it first take a session-level advisory lock on
// the agent (its own round trip), then send BEGIN ISOLATION LEVEL
// SERIALIZABLE, the limit statement, COMMIT and the unlock as one batch.
// The snapshot is taken after the lock is granted, so it sees the previous
// holder's commit, and the statement does not conflict with it: issuers
// of every instance queue in the database instead of aborting. The limit
// itself still rests on SERIALIZABLE and the one statement, not on the
// lock (a writer that skips it, an old instance, is still safe). An agent
// that is not contended costs nothing extra; docs/performance.md has the
// numbers.
//
// The lock must never outlive the call on a pooled connection (every
// later issue for that agent would wait on it): the batch ends with the
// unlock; if the batch failed before it, the unlock is sent on its own;
// if that fails too, the connection is closed, which releases the lock.
// Behind a transaction pooler no lock is taken at all (see Scan).

// contendedFor is how long an agent stays contended after a conflict.
const contendedFor = time.Second

// contention remembers the contended agents of one store.
type contention struct {
	mu    sync.Mutex
	until map[limitKey]time.Time
}

type limitKey struct{ agent, kind string }

func (c *contention) is(k limitKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.until[k]
	if ok && time.Now().After(t) {
		delete(c.until, k)
		return false
	}
	return ok
}

func (c *contention) mark(k limitKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.until == nil {
		c.until = make(map[limitKey]time.Time)
	}
	if len(c.until) >= 10_000 { // bounded: drop what has expired, else forget all
		now := time.Now()
		for k, t := range c.until {
			if now.After(t) {
				delete(c.until, k)
			}
		}
		if len(c.until) >= 10_000 {
			clear(c.until)
		}
	}
	c.until[k] = time.Now().Add(contendedFor)
}

// queueLockKey is the advisory lock key of an agent's issues: a 64-bit
// hash of agent and kind under this package's namespace. Two agents that
// collide merely queue behind each other while contended.
func queueLockKey(k limitKey) int64 {
	h := fnv.New64a()
	h.Write([]byte("agentsessions/issue\x00"))
	h.Write([]byte(k.agent))
	h.Write([]byte{0})
	h.Write([]byte(k.kind))
	return int64(h.Sum64())
}

// queuedRow is a [db.DBTX] for the limit statement of a contended agent:
// see above. Only QueryRow is used.
type queuedRow struct {
	rowOnly
	pool    *pgxpool.Pool
	key     int64
	noQueue *atomic.Bool // set for good once the pool turns out to be behind a pooler
}

func (q queuedRow) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return &queuedScan{ctx: ctx, pool: q.pool, key: q.key, noQueue: q.noQueue, sql: sql, args: args}
}

type queuedScan struct {
	ctx     context.Context
	pool    *pgxpool.Pool
	key     int64
	noQueue *atomic.Bool
	sql     string
	args    []any
}

// Scan takes the lock, sends the batch and scans the statement's row.
// Errors follow sendSerializable's rules; a failure to take the lock is
// outcomeKnown (nothing of the issue was sent).
func (r *queuedScan) Scan(dest ...any) (err error) {
	conn, err := r.pool.Acquire(r.ctx)
	if err != nil {
		return err
	}
	locked, unlocked := false, false
	defer func() {
		// sendSerializable rolled a failed batch back; the lock is ours
		// to release.
		if c := conn.Conn(); locked && !unlocked && !c.IsClosed() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), time.Second)
			if _, uerr := c.Exec(rctx, "SELECT pg_advisory_unlock($1)", r.key); uerr != nil {
				_ = c.Close(rctx) // closing the session releases its locks
			}
			cancel()
		}
		conn.Release()
	}()
	// Only on a session of our own: behind a transaction pooler
	// (PgBouncer), whose backend key is not the server's PID, the lock
	// would stay on whichever server connection took it while the unlock
	// ran on another. There the lock is not taken (the WHERE is a
	// one-time filter, checked before the call), and issues for contended
	// agents just retry, as without queuing.
	var none string
	switch err := conn.QueryRow(r.ctx, "SELECT pg_advisory_lock($1)::text WHERE pg_backend_pid() = $2",
		r.key, int32(conn.Conn().PgConn().PID())).Scan(&none); {
	case errors.Is(err, pgx.ErrNoRows):
		r.noQueue.Store(true)
	case err != nil:
		return outcomeKnown{err}
	default:
		locked = true
	}
	if locked {
		unlocked, err = sendSerializable(r.ctx, conn, "", r.sql, r.args, dest, "SELECT pg_advisory_unlock($1)", r.key)
	} else {
		_, err = sendSerializable(r.ctx, conn, "", r.sql, r.args, dest, "")
	}
	return err
}
