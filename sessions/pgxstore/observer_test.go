package pgxstore_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

type callKey struct{}

// storeRecorder is a pgxstore.Observer that records what it is told, and
// which call's context each retry came with.
type storeRecorder struct {
	mu       sync.Mutex
	retries  []pgxstore.RetryEvent
	retryCtx []string
	prunes   []pgxstore.PruneResult
	pruneCtx []string // the call's value seen by the pass (through ctx)
	resyncs  []string
}

func (r *storeRecorder) Retry(ctx context.Context, ev pgxstore.RetryEvent) {
	call, _ := ctx.Value(callKey{}).(string)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retries = append(r.retries, ev)
	r.retryCtx = append(r.retryCtx, call)
}

func (r *storeRecorder) Prune(ctx context.Context) (context.Context, func(pgxstore.PruneResult, error)) {
	return context.WithValue(ctx, callKey{}, "prune"), func(res pgxstore.PruneResult, err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if err == nil {
			r.prunes = append(r.prunes, res)
		}
	}
}

func (r *storeRecorder) CacheResync(_ context.Context, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resyncs = append(r.resyncs, reason)
}

func (r *storeRecorder) snapshot() ([]pgxstore.RetryEvent, []string, []pgxstore.PruneResult, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.retries), slices.Clone(r.retryCtx), slices.Clone(r.prunes), slices.Clone(r.resyncs)
}

// A call whose connection was terminated is rerun, and the observer hears
// of it under the caller's context.
func TestObserverReconnectRerun(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	app := "agentsessions-obs-" + d.Schema
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	rec := &storeRecorder{}
	store, err := pgxstore.New(pool, &pgxstore.Config{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.WithValue(context.Background(), callKey{}, "caller")
	if _, err := store.Delete(ctx, "warm-up"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := d.Conn(t).QueryRow(context.Background(),
		`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d backends (%v), want 1", n, err)
	}
	if _, err := store.Delete(ctx, "after-kill"); err != nil {
		t.Fatal(err)
	}
	retries, calls, _, _ := rec.snapshot()
	if len(retries) != 1 {
		t.Fatalf("retry events %+v, want one reconnect", retries)
	}
	want := pgxstore.RetryEvent{Op: "delete", Reason: pgxstore.RetryReconnect, Attempt: 1, SQLState: retries[0].SQLState}
	if retries[0] != want || calls[0] != "caller" {
		t.Fatalf("retry event %+v under %q, want %+v under the caller's context", retries[0], calls[0], want)
	}
	if s := store.Stats(); s.Reconnects != 1 {
		t.Fatalf("stats %+v, want 1 reconnect", s)
	}
}

// Serialization retries reach the observer exactly as Stats counts them.
func TestObserverSerializationRetriesMatchStats(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	rec := &storeRecorder{}
	store, err := pgxstore.New(d.Pool(t), &pgxstore.Config{Observer: rec, MaxAttempts: 3, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	// Many issues for one agent at once contend on its count row.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 10 {
				_, err := m.Issue(context.Background(), agent)
				if err != nil && !errors.Is(err, pgxstore.ErrRetriesExhausted) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	retries, _, _, _ := rec.snapshot()
	var reruns, gaveUp uint64
	for _, ev := range retries {
		switch {
		case ev.Reason != pgxstore.RetrySerialization || ev.Op != "insert" ||
			(ev.SQLState != "40001" && ev.SQLState != "40P01") || ev.Attempt < 1:
			t.Fatalf("unexpected retry event %+v", ev)
		case ev.GaveUp:
			gaveUp++
			if ev.Backoff != 0 || ev.Attempt != 3 {
				t.Fatalf("give-up event %+v, want attempt 3 and no backoff", ev)
			}
		default:
			reruns++
			if ev.Backoff < time.Millisecond || ev.Backoff > 2*time.Millisecond {
				t.Fatalf("rerun event %+v: backoff outside [1ms, 2ms]", ev)
			}
		}
	}
	s := store.Stats()
	t.Logf("%d reruns, %d gave up; stats %+v", reruns, gaveUp, s)
	if reruns != s.Retries || gaveUp != s.Exhausted {
		t.Fatalf("observer saw %d reruns and %d give-ups, stats say %d and %d", reruns, gaveUp, s.Retries, s.Exhausted)
	}
}

// Every prune pass, by Prune or RunPruner, is observed with its result
// and runs under the context the observer returned.
func TestObserverPrunePasses(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	rec := &storeRecorder{}
	store, err := pgxstore.New(d.Pool(t), &pgxstore.Config{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 7, 2, now)
	cfg := pgxstore.PruneConfig{BatchSize: 5, Clock: func() time.Time { return now }, LockID: lockID()}
	if _, err := store.Prune(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Prune(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	_, _, prunes, _ := rec.snapshot()
	want := []pgxstore.PruneResult{{Deleted: 7, Batches: 3}, {Deleted: 0, Batches: 1}}
	if !slices.Equal(prunes, want) {
		t.Fatalf("observed prunes %+v, want %+v", prunes, want)
	}
}

// Cache resyncs are observed with their reason: the listener connecting,
// then a TRUNCATE.
func TestObserverCacheResyncs(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	rec := &storeRecorder{}
	store, err := pgxstore.New(d.Pool(t), &pgxstore.Config{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		if err := store.RunCache(ctx, pgxstore.CacheConfig{MaxStaleness: 200 * time.Millisecond}); err != nil {
			t.Error(err)
		}
	})
	waitFor(t, 10*time.Second, "cache fresh", func() bool { return store.CacheStats().Fresh })
	if _, err := d.Conn(t).Exec(context.Background(), "TRUNCATE agent_sessions"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "flush resync", func() bool {
		_, _, _, r := rec.snapshot()
		return slices.Contains(r, "flush")
	})
	_, _, _, resyncs := rec.snapshot()
	if resyncs[0] != "connected" || uint64(len(resyncs)) != store.CacheStats().Resyncs {
		t.Fatalf("resyncs %q; stats count %d", resyncs, store.CacheStats().Resyncs)
	}
}
