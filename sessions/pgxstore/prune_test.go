package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// lockID gives each test its own prune lock: tests share one database, and
// the advisory lock is database-wide.
func lockID() int64 { return rand.Int64() }

func TestPruneBatches(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	store, _ := pgxstore.New(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 35, 5, now)
	cfg := pgxstore.PruneConfig{BatchSize: 10, Clock: func() time.Time { return now }, LockID: lockID()}
	res, err := store.Prune(context.Background(), cfg)
	// 10, 10, 10, 5, then one that finds nothing and ends the pass.
	if err != nil || res != (pgxstore.PruneResult{Deleted: 35, Batches: 5}) {
		t.Fatalf("prune: %+v %v; want 35 deleted in 5 batches", res, err)
	}
	if n := sum(rowsPerAgent(t, d.Pool(t))); n != 5 {
		t.Fatalf("%d rows left, want the 5 live ones", n)
	}
	res, err = store.Prune(context.Background(), cfg)
	if err != nil || res != (pgxstore.PruneResult{Deleted: 0, Batches: 1}) {
		t.Fatalf("second prune: %+v %v", res, err)
	}
}

func TestPruneSkipsWhileLocked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store, _ := pgxstore.New(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 3, 0, now)
	cfg := pgxstore.PruneConfig{Clock: func() time.Time { return now }, LockID: lockID()}
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
	cfg := pgxstore.PruneConfig{BatchSize: 25, Clock: func() time.Time { return now }, LockID: lockID()}
	var stores []*pgxstore.Store
	for range 4 {
		s, _ := pgxstore.New(d.Pool(t), nil)
		stores = append(stores, s)
	}
	seed(t, stores[0], 300, 10, now)
	results := make([]pgxstore.PruneResult, len(stores))
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
	store, _ := pgxstore.New(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 12, 0, now)
	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan pgxstore.PruneResult, 100)
	done := make(chan error)
	go func() {
		done <- store.RunPruner(ctx, pgxstore.PruneConfig{
			Interval: 10 * time.Millisecond, BatchSize: 5, LockID: lockID(),
			Clock:   func() time.Time { return now },
			OnPrune: func(r pgxstore.PruneResult, err error) { reports <- r },
		})
	}()
	first, second := <-reports, <-reports
	if first.Deleted != 12 || first.Batches != 4 || second.Deleted != 0 {
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
	store, _ := pgxstore.New(testdb.New(t).Pool(t), nil)
	for _, c := range []pgxstore.PruneConfig{{BatchSize: -1}, {BatchSize: 1<<20 + 1}, {Interval: -time.Second}} {
		if _, err := store.Prune(context.Background(), c); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// A prune batch that waits on a row a refresh is extending must not delete
// it once the refresh commits: at READ COMMITTED PostgreSQL re-checks only
// the DELETE's own WHERE clause against the new row version, so the expiry
// predicate has to stand there and not only in the subquery that picked
// the ids.
func TestPruneSparesRowExtendedWhileItWaited(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store, _ := pgxstore.New(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	s := sessions.Session{ID: "near-expiry", AgentID: agent, IssuedAt: now.Add(-time.Minute), ExpiresAt: now, TokenDigest: digest("old")}
	if res, err := store.Insert(ctx, s, sessions.InsertRequest{Limit: 5, Now: s.IssuedAt}); err != nil || !res.Inserted {
		t.Fatalf("insert: %+v %v", res, err)
	}

	// The refresh, as ExtendSession runs it, held open in a transaction:
	// its instance's clock still has the session live.
	refresher := d.Conn(t)
	tx, err := refresher.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	n, err := db.New(tx).ExtendSession(ctx, db.ExtendSessionParams{
		ID: s.ID, OldDigest: s.TokenDigest, ExpiresAt: now.Add(time.Minute), NewDigest: digest("new"), Now: now.Add(-time.Second),
	})
	if err != nil || n != 1 {
		t.Fatalf("extend: %d %v", n, err)
	}

	// The pruner's clock has it expired; its batch blocks on the row.
	type result struct {
		res pgxstore.PruneResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := store.Prune(ctx, pgxstore.PruneConfig{Clock: func() time.Time { return now }, LockID: lockID()})
		done <- result{res, err}
	}()
	waitForBlocked(t, d, refresher.PgConn().PID())
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.res.Deleted != 0 {
		t.Fatalf("prune = %+v, %v; want nothing deleted", r.res, r.err)
	}
	got, found, err := store.Get(ctx, s.ID)
	if err != nil || !found {
		t.Fatalf("the session whose refresh committed was pruned (found=%v, %v)", found, err)
	}
	if !got.ExpiresAt.Equal(now.Add(time.Minute)) || got.TokenDigest != digest("new") {
		t.Fatalf("stored %+v, want the refreshed expiry and digest", got)
	}
	checkCounts(t, d.Pool(t))
}

// Refreshes made in the last second before expiry race the pruner, whose
// clock has just passed it (4 instances, 16 refreshing goroutines, pruners
// in a loop). A refresh may lose the race (its session is pruned first and
// Refresh says so), but a refresh that was acknowledged must never be
// lost: its session is stored afterwards with the new expiry.
func TestLoadRefreshNearExpiryLosesNoAcknowledgedRefresh(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	const sessionsN, ttl = 1200, time.Minute
	expiry := time.Unix(1_700_000_000, 0)
	issueClock := newClock(expiry.Add(-ttl).Unix())
	insts := newInstances(t, d, 4, sessionsN, issueClock)
	for i := range insts { // the same stores, with the short TTL
		m, err := sessions.New(insts[i].store, sessions.Config{Secret: []byte(secret), TTL: ttl, Limit: sessionsN, Clock: issueClock.Now})
		if err != nil {
			t.Fatal(err)
		}
		insts[i].mgr = m
	}
	tokens := make([]sessions.Issued, sessionsN)
	for i := range tokens {
		tokens[i] = mustIssue(t, insts[i%4].mgr, fmt.Sprintf("did:agentmesh:near-%03d", i%300))
	}
	// Refreshers run one second before expiry; the pruners at it.
	issueClock.Advance(ttl - time.Second)
	pruneCfg := pgxstore.PruneConfig{BatchSize: 20, Clock: func() time.Time { return expiry }, LockID: lockID()}

	var (
		next             atomic.Int64
		acked            sync.Map // session ID -> refreshed session
		ackedN, refused  atomic.Int64
		pruned, passes   atomic.Int64
		unexpected       = make(chan error, 1)
		refreshing, prun sync.WaitGroup
	)
	stop := make(chan struct{})
	// The pruners start once the first 100 refreshes are acknowledged, so
	// both sides run at once however fast or slow the machine is: on a
	// loaded one they could otherwise prune everything first.
	begun := make(chan struct{})
	var beginOnce sync.Once
	for p := range 2 {
		prun.Go(func() {
			select {
			case <-begun:
			case <-stop:
				return
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := insts[p].store.Prune(ctx, pruneCfg)
				pruned.Add(res.Deleted)
				passes.Add(1)
				if err != nil {
					select {
					case unexpected <- fmt.Errorf("prune: %w", err):
					default:
					}
				}
			}
		})
	}
	for w := range 16 {
		refreshing.Go(func() {
			for i := next.Add(1) - 1; i < sessionsN; i = next.Add(1) - 1 {
				iss := tokens[i]
				ref, err := insts[w%4].mgr.Refresh(ctx, iss.Token, iss.Session.AgentID)
				switch {
				case err == nil:
					acked.Store(iss.Session.ID, ref.Session)
					if ackedN.Add(1) == 100 {
						beginOnce.Do(func() { close(begun) })
					}
				case errors.Is(err, sessions.ErrAccessDenied):
					refused.Add(1) // pruned before the refresh got to it
				default:
					select {
					case unexpected <- fmt.Errorf("refresh: %w", err):
					default:
					}
				}
			}
		})
	}
	refreshing.Wait()
	close(stop)
	prun.Wait()
	select {
	case err := <-unexpected:
		t.Fatal(err)
	default:
	}
	// One last pass: nothing acknowledged has expired by the pruner's clock.
	if _, err := insts[0].store.Prune(ctx, pruneCfg); err != nil {
		t.Fatal(err)
	}
	var lost int
	acked.Range(func(k, v any) bool {
		got, found, err := insts[0].store.Get(ctx, k.(string))
		if err != nil {
			t.Fatal(err)
		}
		if want := v.(sessions.Session); !found || !got.ExpiresAt.Equal(want.ExpiresAt) || got.TokenDigest != want.TokenDigest {
			lost++
		}
		return true
	})
	t.Logf("%d refreshes acknowledged, %d refused (pruned first), %d acknowledged refreshes lost; %d rows pruned in %d passes",
		ackedN.Load(), refused.Load(), lost, pruned.Load(), passes.Load())
	if lost != 0 {
		t.Fatalf("%d of %d acknowledged refreshes were lost to the pruner", lost, ackedN.Load())
	}
	if ackedN.Load() == 0 || refused.Load() == 0 {
		t.Fatalf("refreshes and pruning did not overlap (%d acknowledged, %d pruned first): the test proves nothing", ackedN.Load(), refused.Load())
	}
	checkCounts(t, d.Pool(t))
}

// A batch cut short by rows that an issue deleted while the batch waited
// on them (they are skipped, not replaced) does not end the pass: the
// pass goes on until a batch finds nothing, so no expired row is left
// for the next interval. (Passes used to end at the first short batch.)
func TestPruneContinuesPastShortBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store, _ := pgxstore.New(d.Pool(t), nil)
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 10, 0, now)
	// Another session deletes the two oldest expired rows and waits
	// before committing: the pruner's first batch picks them and blocks.
	other := d.Conn(t)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	// Their counts go down in the same statement, as every writer's do.
	var deleted int
	if err := tx.QueryRow(ctx, `
		WITH gone AS (
			DELETE FROM agent_sessions WHERE id IN (SELECT id FROM agent_sessions ORDER BY expires_at, id LIMIT 2)
			RETURNING agent_id, kind),
		per AS (SELECT agent_id, kind, count(*) AS n FROM gone GROUP BY agent_id, kind),
		counted AS (
			UPDATE agent_session_counts c SET stored = c.stored - per.n
			FROM per WHERE c.agent_id = per.agent_id AND c.kind = per.kind)
		SELECT count(*) FROM gone`).Scan(&deleted); err != nil || deleted != 2 {
		t.Fatalf("delete two: %d %v", deleted, err)
	}
	done := make(chan pgxstore.PruneResult, 1)
	go func() {
		res, err := store.Prune(ctx, pgxstore.PruneConfig{BatchSize: 5, Clock: func() time.Time { return now }, LockID: lockID()})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	waitForBlocked(t, d, other.PgConn().PID())
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Deleted != 8 {
		t.Errorf("prune deleted %d, want the other 8 expired rows (its first batch found only 3 of 5)", res.Deleted)
	}
	if n := sum(rowsPerAgent(t, d.Pool(t))); n != 0 {
		t.Errorf("%d expired rows left after the pass", n)
	}
	checkCounts(t, d.Pool(t))
}
