package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/sessions"
)

// The lock prototype (engine "agentsessions-lock") enforces the limit
// without SERIALIZABLE: issuers of one agent queue on a transaction-scoped
// advisory lock keyed by the agent, then run cteInsertSQL at READ
// COMMITTED. Both statements go in one pgx batch: one round trip, one
// implicit transaction (a single Sync), no BEGIN or COMMIT, and the lock is
// released when that transaction commits. At READ COMMITTED every statement
// takes a new snapshot, so the count runs after the lock is held and sees
// every session its previous holder committed. There are no predicate locks,
// so agents never make each other retry: serialization failures cannot
// happen (two agents whose hashes collide only wait for each other).
//
// Only Insert takes the lock: Delete and the pruner can only make room.
// Every writer that adds sessions must take it, so the library could use
// this only if nothing else inserts rows.

// lockClass is the first key of the two-key advisory lock space (which
// does not overlap the one-bigint space the library's pruner uses); the
// second is hashtext(agent_id).
const lockClass = 0x61730001 // "as" 0x0001

// lockSQL waits for the agent's lock.
const lockSQL = `SELECT pg_advisory_xact_lock($1::integer, hashtext($2::text))`

// lockStore is the library's PostgresStore (for Get and Delete) with
// Insert replaced by the batch above.
type lockStore struct {
	*sessions.PostgresStore
	pool *pgxpool.Pool
}

func newLockStore(pool *pgxpool.Pool, maxAttempts int) (*lockStore, error) {
	ps, err := sessions.NewPostgresStore(pool, &sessions.PostgresConfig{MaxAttempts: maxAttempts})
	if err != nil {
		return nil, err
	}
	return &lockStore{PostgresStore: ps, pool: pool}, nil
}

// Insert implements sessions.Store: lock the agent, then cteInsertSQL,
// in one round trip.
func (l *lockStore) Insert(ctx context.Context, s sessions.Session, req sessions.InsertRequest) (sessions.InsertResult, error) {
	if req.Policy != sessions.PolicyReject {
		return sessions.InsertResult{}, fmt.Errorf("bench: the lock prototype implements only the reject policy: %w", errors.ErrUnsupported)
	}
	var md []byte
	if len(s.Metadata) > 0 {
		var err error
		if md, err = json.Marshal(s.Metadata); err != nil {
			return sessions.InsertResult{}, err
		}
	}
	var res sessions.InsertResult
	var limit int32
	b := &pgx.Batch{}
	b.Queue(lockSQL, lockClass, s.AgentID)
	b.Queue(cteInsertSQL, s.ID, s.AgentID, s.IssuedAt, s.ExpiresAt, s.TokenDigest, md, req.Now, req.Limit).
		QueryRow(func(row pgx.Row) error { return row.Scan(&res.Inserted, &limit) })
	if err := l.pool.SendBatch(ctx, b).Close(); err != nil {
		return sessions.InsertResult{}, err
	}
	res.Limit = int(limit)
	return res, nil
}

// retries counts the library's Get and Delete reruns (Insert has none).
func (l *lockStore) retries() int64 { return int64(l.PostgresStore.Stats().Retries) }
