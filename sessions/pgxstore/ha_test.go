package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Failover under load: 4 instances (each its own pool, store, manager,
// cache and pruner) on one multi-host URL issue, authenticate, refresh and
// revoke; the primary is stopped mid-run and the standby promoted. No
// instance is restarted or reconfigured. Afterwards a checker asks the new
// primary what survived of everything the instances acknowledged.
//
// With synchronous replication nothing acknowledged may be lost and no
// agent may be over its limit. With asynchronous replication the test
// reports what was lost (docs/operations.md, High availability and scale,
// quotes the figures) and asserts only the limit, which holds by
// construction: the promoted standby holds a prefix of the primary's
// commits, and every prefix of serializable commits respects the limit.

func TestFailoverSynchronous(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"immediate", "fast", "lagging"} {
		t.Run(mode, func(t *testing.T) {
			r := runFailover(t, true, mode)
			if r.lostSessions+r.lostRevocations+r.revokedAccepted+r.lostRefreshes+r.deniedLive+r.overLimit+r.unexpected > 0 {
				t.Fatalf("synchronous replication lost acknowledged work: %s", r)
			}
		})
	}
}

func TestFailoverAsynchronous(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"immediate", "fast", "lagging"} {
		t.Run(mode, func(t *testing.T) {
			r := runFailover(t, false, mode)
			if r.overLimit+r.unexpected > 0 {
				t.Fatalf("limit broken or unexpected errors: %s", r)
			}
		})
	}
}

// haSession is one session as its worker knows it from acknowledged calls.
type haSession struct {
	id, agent, token string
	refreshes        int  // acknowledged refreshes (each changed the token)
	revoked          bool // an acknowledged revocation
	// uncertain: a write on it failed, so it may or may not have
	// committed; the checker cannot vouch for it either way.
	uncertain  bool
	deniedLive bool     // Authenticate refused it while it should be live
	history    []string // what was done to it, with times relative to the switch, for a failure message
}

func (s *haSession) note(switched *atomic.Int64, began time.Time, what string, err error) {
	rel := func(t time.Time) string {
		if sw := switched.Load(); sw != 0 {
			return time.Duration(t.UnixNano() - sw).Round(time.Millisecond).String()
		}
		return "before"
	}
	s.history = append(s.history, fmt.Sprintf("%s %s..%s err=%v", what, rel(began), rel(time.Now()), err))
}

type haInstance struct {
	store *pgxstore.Store
	mgr   *sessions.Manager
	// firstWrite: nanoseconds from the moment the primary was down (its
	// pg_ctl stop returned) to the end of the first write this instance
	// began after it and that succeeded; 0: none.
	firstWrite atomic.Int64
	resyncs    uint64 // cache resyncs before the switch
}

type failoverResult struct {
	sync                                  bool
	mode                                  string
	ops, issued, refreshed, revoked       int64
	acked, ackedRevoked, ackedRefreshed   int
	uncertain                             int
	lostSessions, lostRevocations         int
	revokedAccepted, lostRefreshes        int
	deniedLive, overLimit, unexpected     int
	promote                               time.Duration
	recovery                              []time.Duration
	errors                                map[string]int
	errMu                                 sync.Mutex
	firstUnexpected                       []string
	cacheResynced, prunedAfter, instances int
}

func (r *failoverResult) String() string {
	p50, maxRec := "-", "-"
	if len(r.recovery) > 0 {
		p50 = r.recovery[(len(r.recovery)+1)/2-1].Round(time.Millisecond).String()
		maxRec = r.recovery[len(r.recovery)-1].Round(time.Millisecond).String()
	}
	var classes []string
	for c, n := range r.errors {
		classes = append(classes, fmt.Sprintf("%s:%d", c, n))
	}
	sort.Strings(classes)
	repl := "async"
	if r.sync {
		repl = "sync"
	}
	return fmt.Sprintf("replication=%s stop=%s ops=%d acked_sessions=%d lost_sessions=%d acked_revocations=%d lost_revocations=%d "+
		"revoked_tokens_accepted=%d acked_refreshes=%d lost_refreshes=%d denied_live=%d uncertain=%d over_limit=%d "+
		"promote=%s recovery_p50=%s recovery_max=%s recovery_all=%v caches_resynced=%d/%d prune_passes_after=%d errors=[%s] unexpected=%d %q",
		repl, r.mode, r.ops, r.acked, r.lostSessions, r.ackedRevoked, r.lostRevocations,
		r.revokedAccepted, r.ackedRefreshed, r.lostRefreshes, r.deniedLive, r.uncertain, r.overLimit,
		r.promote.Round(time.Millisecond), p50, maxRec, roundAll(r.recovery), r.cacheResynced, r.instances, r.prunedAfter,
		strings.Join(classes, " "), r.unexpected, r.firstUnexpected)
}

func roundAll(ds []time.Duration) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Round(time.Millisecond).String())
	}
	return out
}

func (r *failoverResult) countErr(err error) {
	c := errClass(err)
	r.errMu.Lock()
	defer r.errMu.Unlock()
	r.errors[c]++
	if strings.HasPrefix(c, "unexpected") {
		r.unexpected++
		if len(r.firstUnexpected) < 3 {
			r.firstUnexpected = append(r.firstUnexpected, err.Error())
		}
	}
}

// errClass names the kind of a failed call for the report.
func errClass(err error) string {
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	var netErr net.Error
	msg := err.Error()
	switch {
	case !errors.Is(err, sessions.ErrStore):
		return "unexpected"
	case errors.Is(err, pgxstore.ErrRetriesExhausted):
		return "retries_exhausted"
	case errors.As(err, &connErr):
		switch {
		case errors.As(err, &pgErr):
			return "connect_sqlstate_" + pgErr.Code
		case strings.Contains(msg, "read only") || strings.Contains(msg, "read-only"):
			return "connect_read_only"
		case strings.Contains(msg, "refused"):
			return "connect_refused"
		case errors.Is(err, context.DeadlineExceeded):
			return "connect_deadline"
		}
		return "connect_other"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case strings.Contains(msg, "commit: "):
		return "outcome_unknown" // broken after the statement and its COMMIT went out
	case errors.As(err, &pgErr):
		return "sqlstate_" + pgErr.Code
	case errors.As(err, &netErr) || strings.Contains(msg, "EOF") || strings.Contains(msg, "closed"):
		return "connection_lost"
	}
	return "store_other"
}

// haClock advances one second on every reading, from now, so that every
// refresh sets a later expiry and so a new token: each acknowledged
// refresh is a write the checker can look for. TTL and MaxLifetime are
// far beyond the readings a run takes.
type haClock struct {
	base time.Time
	n    atomic.Int64
}

func (c *haClock) Now() time.Time { return c.base.Add(time.Duration(c.n.Add(1)) * time.Second) }

// runFailover runs the load, fails over after 2s, runs until every
// instance has written again (at most 20s), then checks. mode is how the
// primary goes: pg_ctl stop -m fast or -m immediate, or "lagging": an
// immediate shutdown after its WAL sender was paused for 700ms.
func runFailover(t *testing.T, synchronous bool, mode string) *failoverResult {
	h := newHAPair(t, synchronous)
	const (
		limit     = 3
		nInst     = 4
		perInst   = 2 // workers
		ttl       = 10000 * time.Hour
		maxRecov  = 20 * time.Second
		afterRecv = time.Second
	)
	agents := agentNames(40)
	clock := &haClock{base: time.Now()}
	res := &failoverResult{sync: synchronous, mode: mode, errors: map[string]int{}, instances: nInst}
	url := h.url()

	runCtx, stopBackground := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	defer bg.Wait()
	defer stopBackground()

	var promoted atomic.Int64 // unix ns the standby was promoted; 0 before
	var prunedAfter atomic.Int64
	insts := make([]*haInstance, nInst)
	for i := range insts {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 4
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		store, err := pgxstore.New(pool, nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: ttl, MaxLifetime: 2 * ttl, Limit: limit, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		insts[i] = &haInstance{store: store, mgr: m}
		bg.Go(func() {
			if err := store.RunCache(runCtx, pgxstore.CacheConfig{MaxStaleness: 500 * time.Millisecond}); err != nil {
				t.Errorf("RunCache: %v", err)
			}
		})
		bg.Go(func() {
			_ = store.RunPruner(runCtx, pgxstore.PruneConfig{Interval: 200 * time.Millisecond, Clock: clock.Now,
				OnPrune: func(r pgxstore.PruneResult, err error) {
					if p := promoted.Load(); p != 0 && err == nil && !r.Skipped && time.Now().UnixNano() > p {
						prunedAfter.Add(1)
					}
				}})
		})
	}
	// Every cache must be answering before the switch, or resyncs prove nothing.
	waitFor(t, 10*time.Second, "caches fresh before the failover", func() bool {
		for _, in := range insts {
			if !in.store.CacheStats().Fresh {
				return false
			}
		}
		return true
	})

	checkPool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(checkPool.Close)
	inv := &loadStats{}
	bg.Go(func() { checkInvariant(runCtx, checkPool, limit, 50*time.Millisecond, inv) })

	var switched atomic.Int64 // unix ns of the primary's stop; 0 before
	var ops, issued, refreshed, revoked atomic.Int64
	var mu sync.Mutex
	var all []*haSession
	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	var wg sync.WaitGroup
	for _, in := range insts {
		for range perInst {
			wg.Go(func() {
				mine := haWorker(loadCtx, in, agents, &switched, res, &ops, &issued, &refreshed, &revoked)
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			})
		}
	}

	time.Sleep(2 * time.Second)
	for _, in := range insts {
		in.resyncs = in.store.CacheStats().Resyncs
	}
	stopMode := mode
	if mode == "lagging" {
		// The standby falls behind (the primary's WAL sender paused for
		// 700ms, as a slow or cut network would do), then the primary
		// crashes. What it acknowledged meanwhile exists only on it,
		// unless commits waited for the standby.
		stopMode = "immediate"
		h.crashWhileBehind(700 * time.Millisecond)
	} else {
		h.primary.stop(stopMode)
	}
	// The primary is gone now: recovery is measured from here.
	t0 := time.Now()
	switched.Store(t0.UnixNano())
	h.standby.promote()
	res.promote = time.Since(t0)
	promoted.Store(time.Now().UnixNano())
	deadline := t0.Add(maxRecov)
	for time.Now().Before(deadline) {
		done := 0
		for _, in := range insts {
			if in.firstWrite.Load() != 0 {
				done++
			}
		}
		if done == nInst {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(afterRecv)
	stopLoad()
	wg.Wait()
	for _, in := range insts {
		if d := in.firstWrite.Load(); d != 0 {
			res.recovery = append(res.recovery, time.Duration(d))
		}
	}
	slices.Sort(res.recovery)

	// The caches reconnected to the new primary and resynced; the pruners'
	// lock is taken there.
	waitFor(t, 10*time.Second, "every cache resynced and fresh on the new primary", func() bool {
		n := 0
		for _, in := range insts {
			if st := in.store.CacheStats(); st.Fresh && st.Resyncs > in.resyncs {
				n++
			}
		}
		res.cacheResynced = n
		return n == nInst
	})
	waitFor(t, 10*time.Second, "a prune pass holding the lock on the new primary", func() bool { return prunedAfter.Load() > 0 })
	res.prunedAfter = int(prunedAfter.Load())
	stopBackground()

	res.ops, res.issued, res.refreshed, res.revoked = ops.Load(), issued.Load(), refreshed.Load(), revoked.Load()
	checkFailover(t, checkPool, insts, all, limit, res)
	res.overLimit += int(inv.overLimit.Load())
	t.Logf("FAILOVER %s", res)
	if len(res.recovery) != nInst {
		t.Fatalf("only %d of %d instances wrote again within %s of the primary's stop: %s", len(res.recovery), nInst, maxRecov, res)
	}
	return res
}

// haWorker drives issue 35%, authenticate 35%, refresh 20%, revoke 10% on
// one instance until ctx ends, and returns every session it was told
// about.
func haWorker(ctx context.Context, in *haInstance, agents []string, switched *atomic.Int64, res *failoverResult,
	ops, issued, refreshed, revoked *atomic.Int64) []*haSession {
	var mine, done []*haSession
	wrote := func(began time.Time) {
		sw := switched.Load()
		if sw != 0 && began.UnixNano() > sw {
			in.firstWrite.CompareAndSwap(0, time.Now().UnixNano()-sw)
		}
	}
	retire := func(i int) {
		done = append(done, mine[i])
		mine = append(mine[:i], mine[i+1:]...)
	}
	for ctx.Err() == nil {
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		began := time.Now()
		var err error
		switch p := rand.IntN(100); {
		case p < 35 || len(mine) == 0:
			var iss sessions.Issued
			iss, err = in.mgr.Issue(opCtx, agents[rand.IntN(len(agents))])
			if err == nil {
				issued.Add(1)
				wrote(began)
				ns := &haSession{id: iss.Session.ID, agent: iss.Session.AgentID, token: iss.Token}
				ns.note(switched, began, "issue", nil)
				mine = append(mine, ns)
			} else if errors.Is(err, sessions.ErrLimitExceeded) {
				err = nil
			}
		case p < 70:
			s := mine[rand.IntN(len(mine))]
			_, err = in.mgr.Authenticate(opCtx, s.token, s.agent)
			if err != nil {
				s.note(switched, began, "authenticate", err)
			}
			if errors.Is(err, sessions.ErrAccessDenied) {
				s.deniedLive = true
				retire(slices.Index(mine, s))
				err = nil
			}
		case p < 90:
			i := rand.IntN(len(mine))
			s := mine[i]
			var iss sessions.Issued
			iss, err = in.mgr.Refresh(opCtx, s.token, s.agent)
			s.note(switched, began, "refresh", err)
			switch {
			case err == nil && iss.Token != s.token:
				s.token = iss.Token
				s.refreshes++
				refreshed.Add(1)
				wrote(began)
			case err == nil:
			case errors.Is(err, sessions.ErrAccessDenied):
				s.deniedLive = true
				retire(i)
				err = nil
			default:
				s.uncertain = true
				retire(i)
			}
		default:
			i := rand.IntN(len(mine))
			s := mine[i]
			// A revoke that finds nothing is no lost session: Delete is
			// rerun after a broken connection, and the first attempt may
			// have deleted the row (committed and replicated, but the old
			// primary died before acknowledging). Either way the row must
			// be gone now.
			var found bool
			found, err = in.mgr.Revoke(opCtx, s.id)
			s.note(switched, began, fmt.Sprintf("revoke found=%v", found), err)
			if err == nil {
				s.revoked = true
				revoked.Add(1)
				wrote(began)
			} else {
				s.uncertain = true
			}
			retire(i)
		}
		cancel()
		ops.Add(1)
		if err != nil && ctx.Err() == nil {
			res.countErr(err)
		}
	}
	return append(done, mine...)
}

// checkFailover asks the new primary about every acknowledged session,
// and tries every acknowledged revocation's token on every instance.
func checkFailover(t *testing.T, pool *pgxpool.Pool, insts []*haInstance, all []*haSession, limit int, res *failoverResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rows, err := pool.Query(ctx, `SELECT id, token_digest FROM agent_sessions`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]string{}
	for rows.Next() {
		var id, d string
		if err := rows.Scan(&id, &d); err != nil {
			t.Fatal(err)
		}
		stored[id] = d
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		res.acked++
		res.ackedRefreshed += s.refreshes
		if s.deniedLive {
			res.deniedLive++
		}
		if s.uncertain {
			res.uncertain++
			continue
		}
		d, ok := stored[s.id]
		switch {
		case s.revoked:
			res.ackedRevoked++
			if ok {
				res.lostRevocations++
			}
			for _, in := range insts {
				if _, err := in.mgr.Authenticate(ctx, s.token, s.agent); err == nil {
					res.revokedAccepted++
					break
				}
			}
		case !ok:
			res.lostSessions++
			if res.lostSessions <= 3 {
				t.Logf("lost session %s: %q", s.id, s.history)
			}
		case d != digest(s.token):
			res.lostRefreshes++ // the row holds an older token's digest
			if res.lostRefreshes <= 3 {
				t.Logf("lost refresh of session %s: %q", s.id, s.history)
			}
		}
	}
	if over := overLimit(t, pool, limit); over != "" {
		res.overLimit++
		t.Log(over)
	}
	checkCounts(t, pool)
}
