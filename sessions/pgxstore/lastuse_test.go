package pgxstore_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

const idle = time.Minute

// idleInstances are n instances (a pool, store and manager each) with a
// one-minute idle timeout on clock, caching verified sessions if cached.
func idleInstances(t *testing.T, d *testdb.DB, n int, clock *fakeClock, cached bool, mutate func(*sessions.Config)) []instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	out := make([]instance, n)
	for i := range out {
		store, err := pgxstore.New(d.Pool(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 100, Clock: clock.Now, IdleTimeout: idle}
		if mutate != nil {
			mutate(&cfg)
		}
		m, err := sessions.New(store, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close(context.Background()) })
		out[i] = instance{store: store, mgr: m}
		if cached {
			wg.Go(func() {
				if err := store.RunCache(ctx, pgxstore.CacheConfig{}); err != nil {
					t.Errorf("RunCache: %v", err)
				}
			})
			waitFor(t, 10*time.Second, "cache fresh", func() bool { return store.CacheStats().Fresh })
		}
	}
	return out
}

func closeManager(t *testing.T, m *sessions.Manager) {
	t.Helper()
	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// A session used only through instance b stays alive on a, whose cache
// (when on) holds the session as a first saw it: b's writes of last use
// invalidate nothing, and a reads the row again only when its copy looks
// idle, once, then answers from the cache again.
func TestIdleAcrossInstances(t *testing.T) {
	for _, cached := range []bool{false, true} {
		name := map[bool]string{false: "cache off", true: "cache on"}[cached]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			d := testdb.New(t)
			// In the past: uses far ahead of the database's clock would be
			// capped (TouchFarAheadIsCapped).
			clock := newClock(1_700_000_000)
			in := idleInstances(t, d, 2, clock, cached, nil)
			a, b := in[0], in[1]
			iss := mustIssue(t, a.mgr, agent)
			authenticateTwice(t, a.mgr, iss)
			closeManager(t, a.mgr)
			clock.Advance(20 * time.Second)
			authenticateTwice(t, b.mgr, iss)
			resyncs := a.store.CacheStats().Resyncs
			closeManager(t, b.mgr)
			if cached {
				// b's write did not invalidate a's copy: a hit, no query.
				// (Unless the cache was emptied meanwhile: channels are
				// database-wide, and a test in another schema may TRUNCATE.)
				lookups := a.store.Stats().Lookups
				if _, err := a.mgr.Authenticate(ctx, iss.Token, agent); err != nil {
					t.Fatal(err)
				}
				if n := a.store.Stats().Lookups - lookups; n != 0 && a.store.CacheStats().Resyncs == resyncs {
					t.Errorf("a read the database %d times after b wrote a last use; the write must not invalidate caches", n)
				}
				closeManager(t, a.mgr)
			}
			for range 4 { // then used every 40s through b only
				clock.Advance(40 * time.Second)
				authenticateTwice(t, b.mgr, iss)
				closeManager(t, b.mgr)
			}
			if got := b.mgr.LastUseStats(); got.Flushes != 5 || got.Uses != 5 || got.Failures != 0 {
				t.Errorf("b's LastUseStats %+v, want 5 flushes of one use each", got)
			}
			lookups := a.store.Stats().Lookups
			if _, err := a.mgr.Authenticate(ctx, iss.Token, agent); err != nil {
				t.Fatalf("a, 160s after it last saw the session, 40s after b used it: %v", err)
			}
			if cached {
				if n := a.store.Stats().Lookups - lookups; n != 1 && a.store.CacheStats().Resyncs == resyncs {
					t.Errorf("a read the database %d times for a session that looked idle in its cache, want 1", n)
				}
				lookups = a.store.Stats().Lookups
				if _, err := a.mgr.Authenticate(ctx, iss.Token, agent); err != nil {
					t.Fatal(err)
				}
				if n := a.store.Stats().Lookups - lookups; n != 0 {
					t.Errorf("the next authenticate on a read the database %d times, want 0 (cache refilled)", n)
				}
			}
			closeManager(t, a.mgr)
			clock.Advance(idle)
			for i, x := range in {
				if _, err := x.mgr.Authenticate(ctx, iss.Token, agent); !errors.Is(err, sessions.ErrSessionIdle) {
					t.Errorf("instance %d after a minute without use: %v, want ErrSessionIdle", i, err)
				}
			}
		})
	}
}

// Hundreds of concurrent authenticates of ten sessions are one write of
// ten rows, at Close (the timer's interval is longer than the test).
func TestLastUseWrittenInOneBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	clock := newClock(time.Now().Unix())
	in := idleInstances(t, d, 1, clock, true, func(c *sessions.Config) { c.IdleTimeout, c.LastUseInterval = time.Hour, 50*time.Minute })
	m := in[0].mgr
	var tokens []string
	for range 10 {
		tokens = append(tokens, mustIssue(t, m, agent).Token)
	}
	clock.Advance(5 * time.Second)
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			for i := range 10 {
				if _, err := m.Authenticate(ctx, tokens[(g+i)%10], agent); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	var written int
	if err := d.Pool(t).QueryRow(ctx, "SELECT count(*) FROM agent_sessions WHERE last_used_at IS NOT NULL").Scan(&written); err != nil {
		t.Fatal(err)
	}
	if written != 0 {
		t.Fatalf("%d rows have a last use before any flush; uses must not be written per authenticate", written)
	}
	closeManager(t, m)
	if got := m.LastUseStats(); got.Flushes != 1 || got.Uses != 10 {
		t.Errorf("LastUseStats %+v, want 1 flush of 10 uses for 500 authenticates", got)
	}
	if err := d.Pool(t).QueryRow(ctx, "SELECT count(*) FROM agent_sessions WHERE last_used_at = $1", clock.Now()).Scan(&written); err != nil {
		t.Fatal(err)
	}
	if written != 10 {
		t.Errorf("%d rows carry the use's time after Close, want 10", written)
	}
}

// The pruner's idle pass deletes exactly the sessions unused for the idle
// timeout, and keeps the agents' counts in step.
func TestPruneIdle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	in := idleInstances(t, d, 1, clock, false, nil)
	m := in[0].mgr
	var used []sessions.Issued
	for i := range 6 {
		iss := mustIssue(t, m, []string{agent, other}[i%2])
		if i < 3 {
			used = append(used, iss)
		}
	}
	clock.Advance(30 * time.Second)
	for _, iss := range used {
		if _, err := m.Authenticate(ctx, iss.Token, iss.Session.AgentID); err != nil {
			t.Fatal(err)
		}
	}
	closeManager(t, m)
	clock.Advance(50 * time.Second) // 80s after issue, 50s after the uses
	// Within the margin for unwritten uses (2 x 6s): nothing goes yet.
	cfg := pgxstore.PruneConfig{Clock: func() time.Time { return clock.Now().Add(-10 * time.Second) }, BatchSize: 2, IdleTimeout: idle}
	if res, err := in[0].store.Prune(ctx, cfg); err != nil || res.Deleted != 0 {
		t.Fatalf("prune 70s after issue: %+v, %v; want nothing deleted (idle for 10s, margin 12s)", res, err)
	}
	cfg = pgxstore.PruneConfig{Clock: clock.Now, BatchSize: 2}
	res, err := in[0].store.Prune(ctx, cfg) // no idle timeout: nothing has expired
	if err != nil || res.Deleted != 0 {
		t.Fatalf("prune without IdleTimeout: %+v, %v; want nothing deleted", res, err)
	}
	cfg.IdleTimeout = idle
	res, err = in[0].store.Prune(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted != 3 || res.Idle != 3 {
		t.Errorf("prune: %+v, want 3 idle rows deleted", res)
	}
	for _, iss := range used {
		if _, err := m.Authenticate(ctx, iss.Token, iss.Session.AgentID); err != nil {
			t.Errorf("a session used 40s ago: %v", err)
		}
	}
	if n := sum(rowsPerAgent(t, d.Pool(t))); n != 3 {
		t.Errorf("%d rows left, want the 3 used sessions", n)
	}
	checkCounts(t, d.Pool(t))
}

// Idle sessions free their slots under contention: an agent at its limit
// whose sessions all went idle gets exactly limit new ones from 64
// concurrent issues on four instances.
func TestInvariantIdleFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	insts := idleInstances(t, d, 4, clock, false, func(c *sessions.Config) { c.Limit = 3 })
	for range 3 {
		mustIssue(t, insts[0].mgr, agent)
	}
	clock.Advance(idle + 2*sessions.DefaultLastUseInterval(idle)) // idle, and past the margin for unwritten uses
	tl := issueAtOnce(insts, []string{agent}, 64)
	checkNoRawErrors(t, tl)
	if tl.ok[agent] != 3 || tl.limited[agent] != 61 {
		t.Fatalf("%d issued, %d refused; want exactly 3 issued (the idle sessions' slots) and 61 refused", tl.ok[agent], tl.limited[agent])
	}
	if n := rowsPerAgent(t, d.Pool(t))[agent]; n != 3 {
		t.Fatalf("%d rows for the agent, want 3 (the idle ones pruned)", n)
	}
	checkCounts(t, d.Pool(t))
}

// Least-recently-used eviction across four instances, while the sessions
// are used and their uses written concurrently: 64 issues at limit 5 all
// succeed, exactly 5 rows remain, and every session is either live or was
// reported evicted by exactly one issue.
func TestInvariantEvictLeastRecentlyUsedFourInstances(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	insts := idleInstances(t, d, 4, clock, false, func(c *sessions.Config) {
		c.Limit, c.Policy, c.IdleTimeout = 5, sessions.PolicyEvictLeastRecentlyUsed, 0
	})
	// Sessions in use before the storm: each instance keeps using the
	// ones it can and writing the uses while the issues run.
	var warm []sessions.Issued
	for range 5 {
		warm = append(warm, mustIssue(t, insts[0].mgr, agent))
	}
	stop := make(chan struct{})
	var users, warmed sync.WaitGroup
	for _, in := range insts {
		warmed.Add(1)
		users.Go(func() {
			first := true
			defer func() {
				if first {
					warmed.Done()
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				clock.Advance(time.Second) // so that each round's uses are later than the last
				for _, iss := range warm {
					_, _ = in.mgr.Authenticate(ctx, iss.Token, agent) // evicted ones fail, as they should
				}
				if err := in.mgr.Close(ctx); err != nil {
					t.Errorf("writing uses: %v", err)
				}
				if first {
					first = false
					warmed.Done()
				}
			}
		})
	}
	// Every instance has written a round of uses before the issues start
	// (and keeps writing while they run): the storm may be over before a
	// user that started with it writes anything.
	warmed.Wait()
	tl := issueAtOnce(insts, []string{agent}, 64)
	close(stop)
	users.Wait()
	checkNoRawErrors(t, tl)
	if tl.ok[agent] != 64 {
		t.Fatalf("%d of 64 issues succeeded; under evict-least-recently-used all must", tl.ok[agent])
	}
	if n := rowsPerAgent(t, d.Pool(t))[agent]; n != 5 {
		t.Fatalf("%d rows for the agent, want exactly 5", n)
	}
	seen := map[string]int{}
	for _, ib := range tl.issued {
		for _, id := range ib.iss.Evicted {
			seen[id]++
		}
	}
	live, err := insts[0].mgr.List(ctx, agent)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range live {
		seen[s.ID]++
	}
	for _, iss := range append(warm, issuedSessions(tl)...) {
		if seen[iss.Session.ID] != 1 {
			t.Errorf("session %s: evicted-or-live count %d, want 1", iss.Session.ID, seen[iss.Session.ID])
		}
	}
	checkCounts(t, d.Pool(t))
	var written uint64
	for _, in := range insts {
		written += in.mgr.LastUseStats().Uses
	}
	if written == 0 {
		t.Fatal("no last use was written during the issues: the test did not exercise eviction by last use")
	}
	tx, retried, _ := retries(insts)
	t.Logf("evict-least-recently-used, 4 instances, 64 issues with %d last uses written meanwhile: %d transactions, %d retries", written, tx, retried)
}

func issuedSessions(tl *tally) []sessions.Issued {
	out := make([]sessions.Issued, len(tl.issued))
	for i, ib := range tl.issued {
		out[i] = ib.iss
	}
	return out
}

// A use an instance has seen but not yet written keeps the session from
// being deleted as idle, by the pruner or by another issue's limit check,
// even when it came a second before the idle timeout.
func TestIdleUseNotYetWrittenIsNotDeleted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	in := idleInstances(t, d, 1, clock, false, func(c *sessions.Config) { c.Limit, c.Policy = 1, sessions.PolicyEvictOldest })
	m := in[0].mgr
	iss := mustIssue(t, m, agent)
	clock.Advance(59 * time.Second)
	if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil { // pending: LastUseInterval is 6s
		t.Fatal(err)
	}
	clock.Advance(6 * time.Second) // idle by the stored last use (issue time), for 5s
	if res, err := in[0].store.Prune(ctx, pgxstore.PruneConfig{Clock: clock.Now, IdleTimeout: idle}); err != nil || res.Deleted != 0 {
		t.Fatalf("prune: %+v, %v; want nothing deleted", res, err)
	}
	if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil {
		t.Fatalf("a session used 6s ago on this instance: %v", err)
	}
	// At the limit under evict-oldest: the session is live, so it is
	// evicted and reported, not pruned silently as idle.
	second := mustIssue(t, m, agent)
	if len(second.Evicted) != 1 || second.Evicted[0] != iss.Session.ID {
		t.Errorf("second issue evicted %v, want the first session reported", second.Evicted)
	}
}

// Migration 00006's invalidation trigger fires on an update of every
// column but last_used_at: a column added later and left out of its list
// would change sessions without caches hearing of it.
func TestInvalidationTriggerCoversEveryColumn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	var listed, columns []string
	if err := d.Pool(t).QueryRow(ctx, `
		SELECT coalesce(array_agg(a.attname::text ORDER BY a.attname), '{}')
		FROM pg_trigger t JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr)
		WHERE t.tgrelid = to_regclass('agent_sessions') AND t.tgname = 'agent_sessions_notify_invalidate'`).Scan(&listed); err != nil {
		t.Fatal(err)
	}
	if err := d.Pool(t).QueryRow(ctx, `
		SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
		WHERE a.attrelid = to_regclass('agent_sessions') AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> 'last_used_at'`).Scan(&columns); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(listed, columns) {
		t.Errorf("the trigger fires on updates of %v; the table's columns but last_used_at are %v", listed, columns)
	}
}
