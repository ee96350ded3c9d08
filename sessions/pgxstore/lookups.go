package pgxstore

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// maxLookupBatch bounds how many lookups share one round trip, so one
// batch never holds a connection for long.
const maxLookupBatch = 64

// Concurrent session lookups (Authenticate's one query) are coalesced
// (coalesce.go) into pipelined batches, each lookup still its own
// primary-key query. Under load this saves the client and the server a
// write and a read per lookup, which is most of a lookup's client CPU
// (docs/performance.md).
type lookups = coalescer[string, lookupResult]

type lookupResult struct {
	s     sessions.Session
	found bool
	err   error
}

func newLookups(p *Store, slots int) *lookups {
	return &lookups{
		slots: max(slots, 1),
		max:   maxLookupBatch,
		alone: func(ctx context.Context, id string) lookupResult {
			p.stats.lookups.Add(1)
			p.stats.lookupTrips.Add(1)
			s, found, err := p.getOne(ctx, id)
			return lookupResult{s, found, err}
		},
		batch: p.getBatch,
	}
}

// get looks id up, alone or in a batch. It returns when the lookup is
// done or ctx ends, whichever comes first.
func (p *Store) get(ctx context.Context, id string) (sessions.Session, bool, error) {
	r, _, err := p.lookups.do(ctx, id)
	if err != nil {
		return sessions.Session{}, false, p.wrap(ctx, "get", err)
	}
	return r.s, r.found, r.err
}

// getBatch looks up the ids of one batch in one pipelined round trip.
func (p *Store) getBatch(ctx context.Context, ids []string) []lookupResult {
	out := make([]lookupResult, len(ids))
	p.stats.lookups.Add(uint64(len(ids)))
	p.stats.lookupTrips.Add(1)
	rows := make([]db.AgentSession, len(ids))
	errs := make([]error, len(ids))
	err := p.read(ctx, "get", func() error {
		var first error
		p.q.GetSessionBatch(ctx, ids).QueryRow(func(i int, row db.AgentSession, err error) {
			rows[i], errs[i] = row, err
			if err != nil && !errors.Is(err, pgx.ErrNoRows) && first == nil {
				first = err
			}
		})
		return first // a broken connection is rerun for the whole batch
	})
	for i := range ids {
		switch {
		case err != nil:
			out[i].err = err
		case errors.Is(errs[i], pgx.ErrNoRows):
		default:
			out[i].s, out[i].err = sessionFromRow(rows[i])
			out[i].found = out[i].err == nil
		}
	}
	return out
}
