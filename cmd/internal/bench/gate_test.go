package bench

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The gate lets one holder per key through at a time, never blocks other
// keys, gives a canceled waiter's place up, and forgets keys nobody holds.
func TestAgentGateOneHolderPerKey(t *testing.T) {
	g := newAgentGate()
	ctx := context.Background()
	var inside, most atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			release, err := g.acquire(ctx, "agent-1")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(100 * time.Microsecond)
			inside.Add(-1)
			release()
		})
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Errorf("%d holders of one key at once, want 1", most.Load())
	}
	if g.len() != 0 {
		t.Errorf("%d keys left after every holder released", g.len())
	}

	release, err := g.acquire(ctx, "agent-1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := g.acquire(ctx, "agent-2") // another key: not blocked
	if err != nil {
		t.Fatal(err)
	}
	other()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := g.acquire(cctx, "agent-1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter on a held key: %v, want its deadline", err)
	}
	release()
	if g.len() != 0 {
		t.Errorf("%d keys left after a canceled waiter and the release", g.len())
	}
}
