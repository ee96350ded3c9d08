package pgxstore_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Evict-oldest across four instances: 64 concurrent issues for one agent
// with limit 5 all succeed, exactly 5 sessions remain, and every session is
// either live or was reported evicted by exactly one issue.
func TestInvariantEvictOldestFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	var insts []instance
	for range 4 {
		store, err := pgxstore.New(d.Pool(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, instance{store: store, mgr: newManager(t, store, clock, func(c *sessions.Config) {
			c.Limit, c.Policy, c.TTL = 5, sessions.PolicyEvictOldest, time.Hour
		})})
	}
	tl := issueAtOnce(insts, []string{agent}, 64)
	checkNoRawErrors(t, tl)
	if tl.ok[agent] != 64 {
		t.Fatalf("%d of 64 issues succeeded; under evict-oldest all must", tl.ok[agent])
	}
	if n := rowsPerAgent(t, d.Pool(t))[agent]; n != 5 {
		t.Fatalf("%d rows for the agent, want exactly 5", n)
	}
	evicted := map[string]int{}
	for _, ib := range tl.issued {
		for _, id := range ib.iss.Evicted {
			evicted[id]++
		}
	}
	live, _ := insts[0].mgr.List(context.Background(), agent)
	for _, s := range live {
		evicted[s.ID]++
	}
	for _, ib := range tl.issued {
		if evicted[ib.iss.Session.ID] != 1 {
			t.Errorf("session %s: evicted-or-live count %d, want 1", ib.iss.Session.ID, evicted[ib.iss.Session.ID])
		}
	}
	checkCounts(t, d.Pool(t))
	tx, retried, _ := retries(insts)
	t.Logf("evict-oldest, 4 instances, 64 issues: %d transactions, %d retries", tx, retried)
}

// A per-agent override is enforced across instances under contention, and
// changing it concurrently with issuing never lets the agent exceed the
// larger of the old and new limits.
func TestInvariantAgentLimitOverrideFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	insts := newInstances(t, d, 4, 50, clock)
	ctx := context.Background()
	if err := insts[0].mgr.SetAgentLimit(ctx, agent, 2); err != nil {
		t.Fatal(err)
	}
	tl := issueAtOnce(insts, []string{agent, other}, 32)
	checkNoRawErrors(t, tl)
	rows := rowsPerAgent(t, d.Pool(t))
	if tl.ok[agent] != 2 || rows[agent] != 2 || tl.ok[other] != 32 {
		t.Fatalf("override 2: %d issued, %d rows; other agent %d of 32", tl.ok[agent], rows[agent], tl.ok[other])
	}

	// Raise to 4 while 32 more issues race with the change.
	var wg sync.WaitGroup
	var setErr atomic.Value
	wg.Go(func() {
		if err := insts[1].mgr.SetAgentLimit(ctx, agent, 4); err != nil {
			setErr.Store(err)
		}
	})
	tl = issueAtOnce(insts, []string{agent}, 32)
	wg.Wait()
	if err := setErr.Load(); err != nil {
		t.Fatal(err)
	}
	checkNoRawErrors(t, tl)
	if n := rowsPerAgent(t, d.Pool(t))[agent]; n > 4 {
		t.Fatalf("%d rows after raising the limit to 4", n)
	}
	tl = issueAtOnce(insts, []string{agent}, 8)
	if n := rowsPerAgent(t, d.Pool(t))[agent]; n != 4 {
		t.Fatalf("%d rows once the new limit settled, want 4", n)
	}
	checkCounts(t, d.Pool(t))
}

// Eight instances refresh the same token at once: exactly one wins, the
// rest are denied, and only the winner's token works afterwards.
func TestConcurrentRefreshOneWinner(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	insts := newInstances(t, d, 8, 5, clock)
	ctx := context.Background()
	iss := mustIssue(t, insts[0].mgr, agent)
	clock.Advance(time.Minute)
	start := make(chan struct{})
	var mu sync.Mutex
	var winners []string
	var wg sync.WaitGroup
	for _, in := range insts {
		wg.Go(func() {
			<-start
			ref, err := in.mgr.Refresh(ctx, iss.Token, agent)
			switch {
			case err == nil:
				mu.Lock()
				winners = append(winners, ref.Token)
				mu.Unlock()
			case !errors.Is(err, sessions.ErrAccessDenied):
				t.Errorf("refresh: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d refreshes won, want exactly 1", len(winners))
	}
	if _, err := insts[3].mgr.Authenticate(ctx, winners[0], agent); err != nil {
		t.Fatalf("winner's token: %v", err)
	}
	if _, err := insts[5].mgr.Authenticate(ctx, iss.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
		t.Fatalf("superseded token: %v", err)
	}
}
