package pgxstore_test

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// soakDuration is AGENTSESSIONS_SOAK (a Go duration, e.g. 10m) or def.
func soakDuration(t *testing.T, def time.Duration) time.Duration {
	t.Helper()
	if testing.Short() {
		t.Skip("soak tests are off in -short mode")
	}
	v := os.Getenv("AGENTSESSIONS_SOAK")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("AGENTSESSIONS_SOAK=%q: want a positive Go duration like 10m", v)
	}
	return d
}

// soak runs 8 instances (own pools, real clock, 2s TTL so sessions expire
// all the time) with a pruner each, 32 workers over 300 agents with limit
// 3, and a checker asking the database every 25ms whether any agent holds
// more than 3 sessions. fault, if set, runs alongside.
func soak(t *testing.T, url string, pool *pgxpool.Pool, d time.Duration, fault func()) {
	const limit = 3
	mgrs, stores := faultInstances(t, url, "agentsessions-soak", 8, limit, 2*time.Second)
	stats := &loadStats{}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()

	var pruned, passes atomic.Int64
	var bg sync.WaitGroup
	lock := lockID()
	for _, s := range stores {
		bg.Go(func() {
			_ = s.RunPruner(ctx, pgxstore.PruneConfig{Interval: 500 * time.Millisecond, LockID: lock,
				OnPrune: func(r pgxstore.PruneResult, err error) {
					if err == nil && !r.Skipped {
						passes.Add(1)
						pruned.Add(r.Deleted)
					}
				}})
		})
	}
	bg.Go(func() { checkInvariant(ctx, pool, limit, 25*time.Millisecond, stats) })
	if fault != nil {
		bg.Go(fault)
	}
	(&load{mgrs: mgrs, agents: agentNames(300), limit: limit, workers: 32, stats: stats}).run(ctx)
	bg.Wait()

	pg := totalStats(stores)
	t.Logf("soak %v: %s; issue transactions=%d serialization_retries=%d (%.1f per 1000) exhausted=%d reconnects=%d; prune passes=%d rows_pruned=%d",
		d, stats, pg.Transactions, pg.Retries, 1000*float64(pg.Retries)/float64(max(pg.Transactions, 1)),
		pg.Exhausted, pg.Reconnects, passes.Load(), pruned.Load())
	stats.check(t)
	if stats.issued.Load() == 0 || stats.authOK.Load() == 0 || stats.expired.Load() == 0 || stats.checks.Load() == 0 || passes.Load() == 0 {
		t.Fatalf("the soak did not exercise everything: %s, prune passes %d", stats, passes.Load())
	}
	if over := overLimit(t, pool, limit); over != "" {
		t.Fatal(over)
	}
	checkCounts(t, pool)
}

// Bounded by default (30s); AGENTSESSIONS_SOAK=10m make test runs longer.
func TestSoak(t *testing.T) {
	d := soakDuration(t, 30*time.Second)
	db := testdb.New(t)
	soak(t, db.URL, db.Pool(t), d, nil)
}

// The same with the database server restarted halfway through.
func TestSoakWithRestart(t *testing.T) {
	d := soakDuration(t, 20*time.Second)
	c, url := newCluster(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := migrations.Up(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	soak(t, url, pool, d, func() {
		time.Sleep(d / 2)
		c.stop()
		time.Sleep(time.Second)
		c.start()
	})
}
