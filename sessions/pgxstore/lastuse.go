package pgxstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

var _ sessions.TouchStore = (*Store)(nil)

// touchChunk bounds one TouchSessions statement: a manager's batch of a
// busy interval is written as several statements of this many uses.
const touchChunk = 5000

// Touch implements [sessions.TouchStore]: one READ COMMITTED UPDATE per
// 5,000 uses, which sets last_used_at alone (a HOT update; no count row,
// no invalidation).
// It only moves last uses forward, so it is rerun after any failure.
func (p *Store) Touch(ctx context.Context, uses []sessions.Use) error {
	for len(uses) > 0 {
		chunk := uses[:min(len(uses), touchChunk)]
		uses = uses[len(chunk):]
		args := db.TouchSessionsParams{Ids: make([]string, len(chunk)), Ats: make([]time.Time, len(chunk))}
		for i, u := range chunk {
			args.Ids[i], args.Ats[i] = u.ID, u.At
		}
		// READ COMMITTED whatever the pool's default: at SERIALIZABLE
		// (a pool set up for the limit statement alone) the batch would
		// join conflict detection and make issues retry.
		if err := p.write(ctx, "touch", idempotent, func() (touched, error) {
			return touched{}, pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
				return db.New(tx).TouchSessions(ctx, args)
			})
		}); err != nil {
			return err
		}
	}
	return nil
}

// GetLatest implements [sessions.TouchStore]: Get from the database even
// while the cache runs, since last uses written by other instances do not
// invalidate cached sessions (migration 00006). What it reads replaces
// the cached copy, so the next Get of the session is a hit again.
func (p *Store) GetLatest(ctx context.Context, id string) (sessions.Session, bool, error) {
	c := p.cache.Load()
	if c == nil {
		return p.get(ctx, id)
	}
	ticket := c.ticket(id)
	s, found, err := p.get(ctx, id)
	if found {
		c.fill(s, ticket)
	}
	return s, found, err
}
