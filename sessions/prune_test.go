package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

// seed inserts expired and live sessions directly through the store.
func seed(t *testing.T, store sessions.Store, expired, live int, now time.Time) {
	t.Helper()
	ctx := context.Background()
	for i := range expired + live {
		exp := now.Add(-time.Duration(i+1) * time.Second)
		if i >= expired {
			exp = now.Add(time.Hour)
		}
		s := sessions.Session{
			ID: fmt.Sprintf("seed-%d", i), AgentID: fmt.Sprintf("agent-%d", i%7),
			IssuedAt: exp.Add(-2 * time.Hour), ExpiresAt: exp, TokenDigest: digest(fmt.Sprint(i)),
		}
		if res, err := store.Insert(ctx, s, sessions.InsertRequest{Limit: 1 << 20, Now: s.IssuedAt}); err != nil || !res.Inserted {
			t.Fatalf("seed %d: %+v %v", i, res, err)
		}
	}
}

// lockID gives each test its own prune lock: tests share one database, and
// the advisory lock is database-wide.
func lockID() int64 { return rand.Int64() }

func TestPruneBatches(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	store, _ := sessions.NewPostgresStore(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 35, 5, now)
	cfg := sessions.PruneConfig{BatchSize: 10, Clock: func() time.Time { return now }, LockID: lockID()}
	res, err := store.Prune(context.Background(), cfg)
	if err != nil || res != (sessions.PruneResult{Deleted: 35, Batches: 4}) {
		t.Fatalf("prune: %+v %v; want 35 deleted in 4 batches", res, err)
	}
	if n := sum(rowsPerAgent(t, d.Pool(t))); n != 5 {
		t.Fatalf("%d rows left, want the 5 live ones", n)
	}
	res, err = store.Prune(context.Background(), cfg)
	if err != nil || res != (sessions.PruneResult{Deleted: 0, Batches: 1}) {
		t.Fatalf("second prune: %+v %v", res, err)
	}
}

func TestPruneSkipsWhileLocked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store, _ := sessions.NewPostgresStore(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 3, 0, now)
	cfg := sessions.PruneConfig{Clock: func() time.Time { return now }, LockID: lockID()}
	holder := d.Conn(t)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", cfg.LockID); err != nil {
		t.Fatal(err)
	}
	res, err := store.Prune(ctx, cfg)
	if err != nil || !res.Skipped || res.Deleted != 0 {
		t.Fatalf("prune while another holds the lock: %+v %v", res, err)
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", cfg.LockID); err != nil {
		t.Fatal(err)
	}
	if res, err := store.Prune(ctx, cfg); err != nil || res.Deleted != 3 {
		t.Fatalf("prune after unlock: %+v %v", res, err)
	}
}

// Four instances pruning at once delete every expired row exactly once
// between them, without errors.
func TestConcurrentPruners(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	now := time.Unix(1_700_000_000, 0)
	cfg := sessions.PruneConfig{BatchSize: 25, Clock: func() time.Time { return now }, LockID: lockID()}
	var stores []*sessions.PostgresStore
	for range 4 {
		s, _ := sessions.NewPostgresStore(d.Pool(t), nil)
		stores = append(stores, s)
	}
	seed(t, stores[0], 300, 10, now)
	results := make([]sessions.PruneResult, len(stores))
	errs := make([]error, len(stores))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Go(func() { <-start; results[i], errs[i] = s.Prune(context.Background(), cfg) })
	}
	close(start)
	wg.Wait()
	var deleted int64
	for i := range stores {
		if errs[i] != nil {
			t.Fatalf("pruner %d: %v", i, errs[i])
		}
		deleted += results[i].Deleted
	}
	if deleted != 300 || sum(rowsPerAgent(t, d.Pool(t))) != 10 {
		t.Fatalf("pruners deleted %d (want 300); results %+v", deleted, results)
	}
}

func TestRunPrunerReportsAndStops(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	store, _ := sessions.NewPostgresStore(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 12, 0, now)
	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan sessions.PruneResult, 100)
	done := make(chan error)
	go func() {
		done <- store.RunPruner(ctx, sessions.PruneConfig{
			Interval: 10 * time.Millisecond, BatchSize: 5, LockID: lockID(),
			Clock:   func() time.Time { return now },
			OnPrune: func(r sessions.PruneResult, err error) { reports <- r },
		})
	}()
	first, second := <-reports, <-reports
	if first.Deleted != 12 || first.Batches != 3 || second.Deleted != 0 {
		t.Fatalf("passes reported %+v then %+v", first, second)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunPruner returned %v after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunPruner did not stop after its context was canceled")
	}
}

func TestPruneConfigRejected(t *testing.T) {
	t.Parallel()
	store, _ := sessions.NewPostgresStore(testdb.New(t).Pool(t), nil)
	for _, c := range []sessions.PruneConfig{{BatchSize: -1}, {BatchSize: 1<<20 + 1}, {Interval: -time.Second}} {
		if _, err := store.Prune(context.Background(), c); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func TestMemoryStorePruneExpired(t *testing.T) {
	t.Parallel()
	store := sessions.NewMemoryStore()
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 9, 4, now)
	if n := store.PruneExpired(now); n != 9 {
		t.Fatalf("pruned %d, want 9", n)
	}
	if n := store.PruneExpired(now); n != 0 {
		t.Fatalf("second prune removed %d", n)
	}
	if _, found, _ := store.Get(context.Background(), "seed-12"); !found {
		t.Fatal("live session pruned")
	}
}
