package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// cachedInstance is one service instance: its own pool, store, running
// cache and manager, over a database shared with the others.
type cachedInstance struct {
	store *pgxstore.Store
	mgr   *sessions.Manager
	clock *fakeClock // shared by all instances
}

func startCachedInstances(t testing.TB, d *testdb.DB, n int, cfg pgxstore.CacheConfig) []cachedInstance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	out := make([]cachedInstance, n)
	clock := newClock(time.Now().Unix()) // session time only; the cache runs on real time
	for i := range out {
		store, err := pgxstore.New(d.Pool(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1000, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = cachedInstance{store: store, mgr: m, clock: clock}
		wg.Go(func() {
			if err := store.RunCache(ctx, cfg); err != nil {
				t.Errorf("instance %d: RunCache: %v", i, err)
			}
		})
	}
	for i, in := range out {
		waitFor(t, 10*time.Second, fmt.Sprintf("instance %d cache fresh", i), func() bool { return in.store.CacheStats().Fresh })
	}
	return out
}

// authenticateTwice authenticates iss on m twice: a cache miss that
// fills, then (with a running cache) a hit.
func authenticateTwice(t testing.TB, m *sessions.Manager, iss sessions.Issued) {
	t.Helper()
	for range 2 {
		if _, err := m.Authenticate(context.Background(), iss.Token, iss.Session.AgentID); err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor polls cond until it holds, failing only if a poll that began
// after limit still found it false (a slow poll that began in time is not
// held against it).
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		start := time.Now()
		if cond() {
			return
		}
		if start.After(deadline) {
			t.Fatalf("gave up after %v waiting for: %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Four instances cache verified sessions. Revocations, revoke-all and
// refreshes on one instance reach the others; no instance accepts a
// revoked token after MaxStaleness, and the visibility latency is logged.
func TestCacheRevocationAcrossInstances(t *testing.T) {
	const staleness = 500 * time.Millisecond
	ctx := context.Background()
	d := testdb.New(t)
	in := startCachedInstances(t, d, 4, pgxstore.CacheConfig{MaxStaleness: staleness})

	// Hits: after one authentication fills a cache, the next needs no query.
	iss := mustIssue(t, in[0].mgr, agent)
	for _, x := range in {
		authenticateTwice(t, x.mgr, iss)
		if st := x.store.CacheStats(); st.Hits < 1 || st.Entries < 1 {
			t.Fatalf("no cache hit after two authentications: %+v", st)
		}
	}

	var latencies []time.Duration
	for round := range 30 {
		iss := mustIssue(t, in[round%4].mgr, agent)
		for _, x := range in {
			if _, err := x.mgr.Authenticate(ctx, iss.Token, agent); err != nil {
				t.Fatal(err)
			}
		}
		revoker := (round + 1) % 4
		if _, err := in[revoker].mgr.Revoke(ctx, iss.Session.ID); err != nil {
			t.Fatal(err)
		}
		revoked := time.Now()
		for i, x := range in {
			for {
				start := time.Now()
				_, err := x.mgr.Authenticate(ctx, iss.Token, agent)
				if err != nil {
					wantDenied(t, err, sessions.ReasonUnknownSession)
					if i != revoker {
						latencies = append(latencies, start.Sub(revoked))
					}
					// Once refused, never accepted again (no stale refill).
					for range 5 {
						if _, err := x.mgr.Authenticate(ctx, iss.Token, agent); err == nil {
							t.Fatalf("round %d: instance %d accepted a revoked token after refusing it", round, i)
						}
					}
					break
				}
				if start.Sub(revoked) > staleness {
					t.Fatalf("round %d: instance %d accepted a token revoked %v earlier (bound %v)", round, i, start.Sub(revoked), staleness)
				}
				time.Sleep(200 * time.Microsecond)
			}
		}
	}
	slices.Sort(latencies)
	t.Logf("revocation visible on the other instances (%d samples): p50 %v, p99 %v, max %v",
		len(latencies), latencies[len(latencies)/2], latencies[len(latencies)*99/100], latencies[len(latencies)-1])

	// Revoke-all and refresh go through the same trigger.
	a, b := mustIssue(t, in[0].mgr, "did:agentmesh:all"), mustIssue(t, in[0].mgr, "did:agentmesh:refresh")
	for _, x := range in {
		for _, iss := range []sessions.Issued{a, b} {
			if _, err := x.mgr.Authenticate(ctx, iss.Token, iss.Session.AgentID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, err := in[1].mgr.RevokeAgent(ctx, "did:agentmesh:all"); err != nil || n != 1 {
		t.Fatalf("revoke agent: %d, %v", n, err)
	}
	in[0].clock.Advance(time.Minute) // so the refreshed token differs
	refreshed, err := in[2].mgr.Refresh(ctx, b.Token, "did:agentmesh:refresh")
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range in {
		waitFor(t, staleness, fmt.Sprintf("instance %d refuses a revoked-all token", i), func() bool {
			_, err := x.mgr.Authenticate(ctx, a.Token, "did:agentmesh:all")
			return errors.Is(err, sessions.ErrAccessDenied)
		})
		waitFor(t, staleness, fmt.Sprintf("instance %d refuses the token replaced by a refresh", i), func() bool {
			_, err := x.mgr.Authenticate(ctx, b.Token, "did:agentmesh:refresh")
			return errors.Is(err, sessions.ErrAccessDenied)
		})
		if _, err := x.mgr.Authenticate(ctx, refreshed.Token, "did:agentmesh:refresh"); err != nil {
			t.Fatalf("instance %d: refreshed token: %v", i, err)
		}
	}
}

// Under concurrent authentication and revocation on four instances, no
// authentication that starts more than MaxStaleness after a revocation
// returned accepts the revoked token.
func TestCacheConcurrentRevocations(t *testing.T) {
	const staleness = 300 * time.Millisecond
	ctx := context.Background()
	d := testdb.New(t)
	in := startCachedInstances(t, d, 4, pgxstore.CacheConfig{MaxStaleness: staleness})

	const n = 200
	tokens := make([]sessions.Issued, n)
	for i := range tokens {
		tokens[i] = mustIssue(t, in[i%4].mgr, fmt.Sprintf("did:agentmesh:c%d", i%10))
	}
	var revokedAt [n]atomic.Int64 // unix nanos when Revoke returned; 0: live
	stop := make(chan struct{})
	var accepted, refused, violations atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			x := in[w%4]
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := r.IntN(n)
				start := time.Now()
				_, err := x.mgr.Authenticate(ctx, tokens[i].Token, tokens[i].Session.AgentID)
				switch {
				case err == nil:
					accepted.Add(1)
					if at := revokedAt[i].Load(); at != 0 && start.UnixNano()-at > int64(staleness) {
						violations.Add(1)
						t.Errorf("session %d accepted %v after its revocation", i, time.Duration(start.UnixNano()-at))
					}
				case errors.Is(err, sessions.ErrAccessDenied):
					refused.Add(1)
				default:
					t.Errorf("authenticate: %v", err)
				}
			}
		})
	}
	order := rand.New(rand.NewPCG(7, 7)).Perm(n)[:n/2]
	for k, i := range order {
		if _, err := in[k%4].mgr.Revoke(ctx, tokens[i].Session.ID); err != nil {
			t.Fatal(err)
		}
		revokedAt[i].Store(time.Now().UnixNano())
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(2 * staleness)
	close(stop)
	wg.Wait()
	var hits, misses uint64
	for _, x := range in {
		st := x.store.CacheStats()
		hits, misses = hits+st.Hits, misses+st.Misses
	}
	t.Logf("accepted %d, refused %d, cache hits %d, misses %d, violations %d", accepted.Load(), refused.Load(), hits, misses, violations.Load())
	if hits == 0 {
		t.Fatal("the cache never answered")
	}
	for i := range tokens {
		_, err := in[i%4].mgr.Authenticate(ctx, tokens[i].Token, tokens[i].Session.AgentID)
		if revoked := revokedAt[i].Load() != 0; revoked != errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("session %d: revoked %v, authenticate: %v", i, revoked, err)
		}
	}
}

// When the listener connection is killed, revocations made meanwhile are
// still refused within MaxStaleness; the listener comes back, the cache is
// emptied and serves again.
func TestCacheListenerLoss(t *testing.T) {
	const staleness = 300 * time.Millisecond
	ctx := context.Background()
	d := testdb.New(t)
	in := startCachedInstances(t, d, 1, pgxstore.CacheConfig{MaxStaleness: staleness})[0]
	plain, err := pgxstore.New(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := sessions.New(plain, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	s1, s2 := mustIssue(t, other, agent), mustIssue(t, other, agent)
	authenticateTwice(t, in.mgr, s1)
	pid := pgxstore.CacheListenerPID(in.store)
	if _, err := d.Conn(t).Exec(ctx, "SELECT pg_terminate_backend($1)", int32(pid)); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Revoke(ctx, s1.Session.ID); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	waitFor(t, 5*time.Second, "revoked session refused", func() bool {
		start := time.Now()
		_, err := in.mgr.Authenticate(ctx, s1.Token, agent)
		if err == nil && start.Sub(revoked) > staleness {
			t.Fatalf("accepted %v after revocation with the listener down", start.Sub(revoked))
		}
		return err != nil
	})
	waitFor(t, 10*time.Second, "listener back", func() bool {
		st := in.store.CacheStats()
		return st.Resyncs >= 2 && st.Fresh && pgxstore.CacheListenerPID(in.store) != pid
	})
	before := in.store.CacheStats().Hits
	authenticateTwice(t, in.mgr, s2)
	if in.store.CacheStats().Hits == before {
		t.Fatal("no cache hit after the listener came back")
	}
	if _, err := in.mgr.Authenticate(ctx, s1.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
		t.Fatalf("revoked session after resync: %v", err)
	}
}

func TestCacheRefusals(t *testing.T) {
	ctx := context.Background()
	d := testdb.New(t)
	store, err := pgxstore.New(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.RunCache(ctx, pgxstore.CacheConfig{MaxStaleness: time.Millisecond}); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Fatalf("1ms staleness: %v", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- store.RunCache(runCtx, pgxstore.CacheConfig{}) }()
	waitFor(t, 10*time.Second, "cache running", func() bool { return store.CacheStats().Running })
	if err := store.RunCache(ctx, pgxstore.CacheConfig{}); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Fatalf("second RunCache: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("RunCache after cancel: %v", err)
	}
	if store.CacheStats().Running {
		t.Fatal("cache still running after RunCache returned")
	}

	// Without either trigger, notifications would never come: refuse to cache.
	for _, trigger := range []string{"agent_sessions_notify_flush", "agent_sessions_notify_invalidate"} {
		if _, err := d.Conn(t).Exec(ctx, "ALTER TABLE agent_sessions DISABLE TRIGGER "+trigger); err != nil {
			t.Fatal(err)
		}
		if err := store.RunCache(ctx, pgxstore.CacheConfig{}); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Fatalf("RunCache without %s: %v", trigger, err)
		}
	}
}

// TRUNCATE fires no row trigger; its statement trigger empties every cache.
func TestCacheTruncate(t *testing.T) {
	const staleness = 300 * time.Millisecond
	ctx := context.Background()
	d := testdb.New(t)
	in := startCachedInstances(t, d, 2, pgxstore.CacheConfig{MaxStaleness: staleness})
	iss := mustIssue(t, in[0].mgr, agent)
	for _, x := range in {
		authenticateTwice(t, x.mgr, iss)
	}
	resyncs := in[1].store.CacheStats().Resyncs
	if _, err := d.Conn(t).Exec(ctx, "TRUNCATE agent_sessions"); err != nil {
		t.Fatal(err)
	}
	for i, x := range in {
		waitFor(t, staleness, fmt.Sprintf("instance %d refuses a truncated session", i), func() bool {
			_, err := x.mgr.Authenticate(ctx, iss.Token, agent)
			return errors.Is(err, sessions.ErrAccessDenied)
		})
	}
	if in[1].store.CacheStats().Resyncs <= resyncs {
		t.Fatal("TRUNCATE did not empty the cache")
	}
}

// Authenticate on PostgreSQL with and without the cache, same sessions.
func BenchmarkAuthenticatePostgres(b *testing.B) {
	for _, cached := range []bool{false, true} {
		b.Run(fmt.Sprintf("cached=%v", cached), func(b *testing.B) {
			d := testdb.New(b)
			var m *sessions.Manager
			if cached {
				m = startCachedInstances(b, d, 1, pgxstore.CacheConfig{})[0].mgr
			} else {
				store, err := pgxstore.New(d.Pool(b), nil)
				if err != nil {
					b.Fatal(err)
				}
				if m, err = sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1000}); err != nil {
					b.Fatal(err)
				}
			}
			tokens := make([]sessions.Issued, 256)
			for i := range tokens {
				tokens[i] = mustIssue(b, m, fmt.Sprintf("did:agentmesh:b%d", i))
			}
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(len(tokens))
				for pb.Next() {
					iss := tokens[i%len(tokens)]
					if _, err := m.Authenticate(context.Background(), iss.Token, iss.Session.AgentID); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// The cache works on a pool whose connections have an OnNotification
// callback of the application's (its listener must not inherit it), and
// stays bypassed while the invalidation trigger is disabled, even across
// a reconnect.
func TestCacheOnNotificationPoolAndDisabledTrigger(t *testing.T) {
	const staleness = 200 * time.Millisecond
	ctx := context.Background()
	d := testdb.New(t)
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.OnNotification = func(*pgconn.PgConn, *pgconn.Notification) {}
	store, err := pgxstore.New(d.PoolWith(t, cfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- store.RunCache(runCtx, pgxstore.CacheConfig{MaxStaleness: staleness}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunCache: %v", err)
		}
	}()
	waitFor(t, 10*time.Second, "cache fresh", func() bool { return store.CacheStats().Fresh })

	conn := d.Conn(t)
	if _, err := conn.Exec(ctx, "ALTER TABLE agent_sessions DISABLE TRIGGER agent_sessions_notify_invalidate"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", int32(pgxstore.CacheListenerPID(store))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * staleness)
	if st := store.CacheStats(); st.Fresh {
		t.Fatalf("cache fresh with its trigger disabled: %+v", st)
	}
	if _, err := conn.Exec(ctx, "ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_invalidate"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "cache fresh again once the trigger is back", func() bool { return store.CacheStats().Fresh })
}

// The invalidation trigger is disabled while the caches run (as
// pg_restore --disable-triggers does, or a DBA by hand), then enabled
// again. A session revoked meanwhile is never announced, yet no instance
// accepts its token later than MaxStaleness after the revoke returned:
// the heartbeats carry the triggers' state, so a cache stops answering as
// soon as one finds them disabled, and empties itself when one finds them
// changed.
func TestCacheTriggerDisabledWhileRunning(t *testing.T) {
	const staleness = 300 * time.Millisecond
	ctx := context.Background()
	d := testdb.New(t)
	in := startCachedInstances(t, d, 2, pgxstore.CacheConfig{MaxStaleness: staleness})
	admin := d.Conn(t)
	alter := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	const disable = "ALTER TABLE agent_sessions DISABLE TRIGGER agent_sessions_notify_invalidate"
	const enable = "ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_invalidate"

	// revokeUnannounced revokes a session cached on in[0] through in[1]
	// (whose own cache drops it at once) while the trigger is off, with
	// between() run after the revoke; in[0] must refuse the token from
	// MaxStaleness after the revoke returned on.
	revokeUnannounced := func(name string, between func()) {
		t.Helper()
		iss := mustIssue(t, in[0].mgr, agent)
		authenticateTwice(t, in[0].mgr, iss)
		hits := in[0].store.CacheStats().Hits
		if _, err := in[0].mgr.Authenticate(ctx, iss.Token, agent); err != nil || in[0].store.CacheStats().Hits == hits {
			t.Fatalf("%s: the session is not served from in[0]'s cache (%v); the test proves nothing", name, err)
		}
		alter(disable)
		if ok, err := in[1].mgr.Revoke(ctx, iss.Session.ID); err != nil || !ok {
			t.Fatalf("%s: revoke = %v, %v", name, ok, err)
		}
		revoked := time.Now()
		between()
		time.Sleep(time.Until(revoked.Add(staleness)))
		for range 20 {
			if _, err := in[0].mgr.Authenticate(ctx, iss.Token, agent); err == nil {
				t.Fatalf("%s: in[0] accepted a revoked token %v after the revoke (MaxStaleness %v)", name, time.Since(revoked), staleness)
			}
			time.Sleep(staleness / 10)
		}
	}

	// Disabled and left so: the caches go stale and stay bypassed.
	revokeUnannounced("trigger left disabled", func() {})
	if st := in[0].store.CacheStats(); st.Fresh {
		t.Fatalf("cache fresh while its trigger is disabled: %+v", st)
	}
	alter(enable)
	waitFor(t, 10*time.Second, "cache fresh again once the trigger is back", func() bool { return in[0].store.CacheStats().Fresh })

	// Disabled and enabled again at once, possibly between two heartbeats:
	// the changed trigger state empties the cache.
	resyncs := in[0].store.CacheStats().Resyncs
	revokeUnannounced("trigger disabled and enabled again", func() { alter(enable) })
	if st := in[0].store.CacheStats(); st.Resyncs == resyncs {
		t.Fatalf("the cache was not emptied after the trigger changed: %+v", st)
	}
	waitFor(t, 10*time.Second, "cache fresh after the resync", func() bool { return in[0].store.CacheStats().Fresh })
}
