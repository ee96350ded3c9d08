package pgxstore

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// maxLookupBatch bounds how many lookups share one round trip, so one
// batch never holds a connection for long.
const maxLookupBatch = 64

// lookups coalesces concurrent session lookups (Authenticate's one query)
// into pipelined batches: while every batch slot is busy, new lookups
// queue, and the next free slot sends all of them in one round trip, each
// still its own primary-key lookup. A lookup that finds a free slot goes
// out at once, alone, so nothing waits for company. Under load this saves
// the client and the server a write and a read per lookup, which is most
// of a lookup's client CPU (docs/performance.md).
type lookups struct {
	store *Store
	slots int // batches in flight at most: the pool's connections

	mu      sync.Mutex
	queue   []*lookup
	running int
}

type lookup struct {
	ctx   context.Context
	id    string
	done  chan struct{}
	s     sessions.Session
	found bool
	err   error
}

func newLookups(p *Store, slots int) *lookups {
	return &lookups{store: p, slots: max(slots, 1)}
}

// get looks id up, alone or in a batch. It returns when the lookup is
// done or ctx ends, whichever comes first.
func (b *lookups) get(ctx context.Context, id string) (sessions.Session, bool, error) {
	b.mu.Lock()
	if b.running < b.slots && len(b.queue) == 0 {
		// Nothing to wait for: look up on this goroutine, under ctx, as
		// if there were no batching at all.
		b.running++
		b.mu.Unlock()
		b.store.stats.lookups.Add(1)
		b.store.stats.lookupTrips.Add(1)
		s, found, err := b.store.getOne(ctx, id)
		b.release()
		return s, found, err
	}
	l := &lookup{ctx: ctx, id: id, done: make(chan struct{})}
	b.queue = append(b.queue, l)
	start := b.running < b.slots
	if start {
		b.running++
	}
	b.mu.Unlock()
	if start {
		go b.drain()
	}
	select {
	case <-l.done:
		return l.s, l.found, l.err
	case <-ctx.Done():
		return sessions.Session{}, false, b.store.wrap(ctx, "get", ctx.Err())
	}
}

// release frees a slot, or hands it to a goroutine that sends the
// lookups queued meanwhile.
func (b *lookups) release() {
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.running--
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	go b.drain()
}

// drain sends batches until the queue is empty, then frees its slot.
func (b *lookups) drain() {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.running--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.send(batch)
	}
}

// take removes up to maxLookupBatch lookups whose callers still wait.
// b.mu is held.
func (b *lookups) take() []*lookup {
	var batch []*lookup
	n := 0
	for _, l := range b.queue {
		n++
		if l.ctx.Err() == nil {
			batch = append(batch, l)
			if len(batch) == maxLookupBatch {
				break
			}
		}
	}
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil // let the backing array go
	}
	return batch
}

// send runs one batch and hands each caller its result. It runs under a
// context of its own, ending with the latest of the callers' deadlines,
// so one caller giving up cannot fail the others' lookups.
func (b *lookups) send(batch []*lookup) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	b.store.stats.lookups.Add(uint64(len(batch)))
	b.store.stats.lookupTrips.Add(1)
	if len(batch) == 1 {
		l := batch[0]
		l.s, l.found, l.err = b.store.getOne(ctx, l.id)
		close(l.done)
		return
	}
	ids := make([]string, len(batch))
	for i, l := range batch {
		ids[i] = l.id
	}
	rows := make([]db.AgentSession, len(batch))
	errs := make([]error, len(batch))
	err := b.store.read(ctx, "get", func() error {
		var first error
		b.store.q.GetSessionBatch(ctx, ids).QueryRow(func(i int, row db.AgentSession, err error) {
			rows[i], errs[i] = row, err
			if err != nil && !errors.Is(err, pgx.ErrNoRows) && first == nil {
				first = err
			}
		})
		return first // a broken connection is rerun for the whole batch
	})
	for i, l := range batch {
		switch {
		case err != nil:
			l.err = err
		case errors.Is(errs[i], pgx.ErrNoRows):
		default:
			l.s, l.err = sessionFromRow(rows[i])
			l.found = l.err == nil
		}
		close(l.done)
	}
}

// batchGrace keeps a batch alive a little past its callers' latest
// deadline, so each caller is released by its own context (and sees its
// own context's error) rather than by the batch's timer firing first.
const batchGrace = 50 * time.Millisecond

// batchContext ends batchGrace after the latest deadline among batch's
// callers, or never if one of them has none.
func batchContext(batch []*lookup) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, l := range batch {
		d, ok := l.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.Background())
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.Background(), latest.Add(batchGrace))
}
