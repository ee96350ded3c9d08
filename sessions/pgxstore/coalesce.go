package pgxstore

import (
	"context"
	"sync"
	"time"
)

// coalescer runs calls of one kind (session lookups, issues) alone while
// one of its slots is free, and in batches while none is: calls that
// arrive while every slot is busy queue, and the next free slot takes all
// of them (up to max) as one batch. A call that finds a free slot goes
// out at once, on its caller's goroutine and under its context, so
// nothing waits for company and an idle store behaves as if there were no
// batching at all. Under load a batch saves the client and the server the
// per-round-trip (and, for issues, per-commit) work of all but one call.
type coalescer[C, R any] struct {
	slots int // batches (or lone calls) in flight at most
	max   int // calls per batch at most, so a batch never holds a connection for long

	// alone runs one call: on its caller's goroutine under its context,
	// or as a batch of one (under the batch's context).
	alone func(ctx context.Context, c C) R
	// batch runs the calls of one batch of two or more under a context of
	// its own (batchContext) and returns their results in order.
	batch func(ctx context.Context, cs []C) []R

	mu      sync.Mutex
	queue   []*waiter[C, R]
	running int
}

type waiter[C, R any] struct {
	ctx   context.Context
	c     C
	done  chan struct{} // closed when r is set
	r     R
	taken bool // handed to a batch (coalescer.mu)
}

// do runs c, alone or in a batch. It returns c's result, or ctx's error
// if ctx ends first; sent then says whether c had already been handed to
// a batch, which may still run it.
func (b *coalescer[C, R]) do(ctx context.Context, c C) (r R, sent bool, err error) {
	b.mu.Lock()
	if b.running < b.slots && len(b.queue) == 0 {
		b.running++
		b.mu.Unlock()
		r = b.alone(ctx, c)
		b.release()
		return r, true, nil
	}
	w := &waiter[C, R]{ctx: ctx, c: c, done: make(chan struct{})}
	b.queue = append(b.queue, w)
	start := b.running < b.slots
	if start {
		b.running++
	}
	b.mu.Unlock()
	if start {
		go b.drain()
	}
	select {
	case <-w.done:
		return w.r, true, nil
	case <-ctx.Done():
		b.mu.Lock()
		sent = w.taken // take skips w from now on: its ctx has ended
		b.mu.Unlock()
		select {
		case <-w.done:
			return w.r, true, nil
		default:
			return r, sent, ctx.Err()
		}
	}
}

// release frees a slot, or hands it to a goroutine that sends the calls
// queued meanwhile.
func (b *coalescer[C, R]) release() {
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
func (b *coalescer[C, R]) drain() {
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

// take removes up to max calls whose callers still wait. b.mu is held.
func (b *coalescer[C, R]) take() []*waiter[C, R] {
	var batch []*waiter[C, R]
	n := 0
	for _, w := range b.queue {
		n++
		if w.ctx.Err() == nil {
			w.taken = true
			batch = append(batch, w)
			if len(batch) == b.max {
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
// so one caller giving up cannot fail the others' calls.
func (b *coalescer[C, R]) send(batch []*waiter[C, R]) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	if len(batch) == 1 {
		batch[0].r = b.alone(ctx, batch[0].c)
		close(batch[0].done)
		return
	}
	cs := make([]C, len(batch))
	for i, w := range batch {
		cs[i] = w.c
	}
	rs := b.batch(ctx, cs)
	for i, w := range batch {
		w.r = rs[i]
		close(w.done)
	}
}

// batchGrace keeps a batch alive a little past its callers' latest
// deadline, so each caller is released by its own context (and sees its
// own context's error) rather than by the batch's timer firing first.
const batchGrace = 50 * time.Millisecond

// batchContext ends batchGrace after the latest deadline among batch's
// callers, or never if one of them has none.
func batchContext[C, R any](batch []*waiter[C, R]) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, w := range batch {
		d, ok := w.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.Background())
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.Background(), latest.Add(batchGrace))
}
