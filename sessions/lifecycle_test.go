package sessions_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

func newManager(t *testing.T, store sessions.Store, clock *fakeClock, mutate func(*sessions.Config)) *sessions.Manager {
	t.Helper()
	cfg := sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 3, Clock: clock.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := sessions.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ids(list []sessions.Session) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.ID
	}
	return out
}

// runLifecycleContract checks the optional capabilities every built-in
// store has, through a Manager.
func runLifecycleContract(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	ctx := context.Background()

	t.Run("ListAndRevokeAgent", func(t *testing.T) {
		clock := newClock(1_700_000_000)
		m := newManager(t, newStore(t), clock, func(c *sessions.Config) { c.NewID = seqIDs("s") })
		a1 := mustIssue(t, m, agent)
		clock.Advance(time.Second)
		a2 := mustIssue(t, m, agent)
		o := mustIssue(t, m, other)
		list, err := m.List(ctx, agent)
		if err != nil || !reflect.DeepEqual(list, []sessions.Session{a1.Session, a2.Session}) {
			t.Fatalf("list = %+v, %v; want the two sessions oldest first", list, err)
		}
		clock.Advance(59 * time.Second) // a1 has expired, a2 has not
		if list, _ := m.List(ctx, agent); !reflect.DeepEqual(ids(list), []string{a2.Session.ID}) {
			t.Fatalf("after a1 expired: %v", ids(list))
		}
		n, err := m.RevokeAgent(ctx, agent)
		if err != nil || n != 2 {
			t.Fatalf("RevokeAgent = %d, %v; want 2 (expired rows count too)", n, err)
		}
		if _, err := m.Authenticate(ctx, a2.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("revoked token: %v", err)
		}
		if _, err := m.Authenticate(ctx, o.Token, other); err != nil {
			t.Fatalf("other agent's session was touched: %v", err)
		}
		if n, err := m.RevokeAgent(ctx, agent); err != nil || n != 0 {
			t.Fatalf("second RevokeAgent = %d, %v", n, err)
		}
		if list, err := m.List(ctx, "nobody"); err != nil || len(list) != 0 {
			t.Fatalf("unknown agent: %v %v", list, err)
		}
		if _, err := m.List(ctx, ""); !errors.Is(err, sessions.ErrInvalidAgentID) {
			t.Fatalf("empty agent: %v", err)
		}
	})

	t.Run("EvictOldest", func(t *testing.T) {
		clock := newClock(1_700_000_000)
		m := newManager(t, newStore(t), clock, func(c *sessions.Config) { c.Policy = sessions.PolicyEvictOldest })
		var issued []sessions.Issued
		for range 3 {
			issued = append(issued, mustIssue(t, m, agent))
			clock.Advance(time.Second)
		}
		fourth := mustIssue(t, m, agent)
		if !reflect.DeepEqual(fourth.Evicted, []string{issued[0].Session.ID}) {
			t.Fatalf("evicted %v, want the oldest %s", fourth.Evicted, issued[0].Session.ID)
		}
		if _, err := m.Authenticate(ctx, issued[0].Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("evicted token still works: %v", err)
		}
		list, _ := m.List(ctx, agent)
		want := []string{issued[1].Session.ID, issued[2].Session.ID, fourth.Session.ID}
		if !reflect.DeepEqual(ids(list), want) {
			t.Fatalf("live = %v, want %v", ids(list), want)
		}
		// Lowering the limit makes the next issue evict down to it.
		if err := m.SetAgentLimit(ctx, agent, 1); err != nil {
			t.Fatal(err)
		}
		fifth := mustIssue(t, m, agent)
		if len(fifth.Evicted) != 3 {
			t.Fatalf("evicted %v, want all 3 older sessions", fifth.Evicted)
		}
		if list, _ := m.List(ctx, agent); !reflect.DeepEqual(ids(list), []string{fifth.Session.ID}) {
			t.Fatalf("live = %v", ids(list))
		}
	})

	t.Run("AgentLimitOverrides", func(t *testing.T) {
		clock := newClock(1_700_000_000)
		m := newManager(t, newStore(t), clock, nil)
		if l, err := m.AgentLimit(ctx, agent); err != nil || l != (sessions.AgentLimit{Limit: 3}) {
			t.Fatalf("default = %+v, %v", l, err)
		}
		if err := m.SetAgentLimit(ctx, agent, 1); err != nil {
			t.Fatal(err)
		}
		if l, _ := m.AgentLimit(ctx, agent); l != (sessions.AgentLimit{Limit: 1, Override: true}) {
			t.Fatalf("after set = %+v", l)
		}
		mustIssue(t, m, agent)
		var le *sessions.LimitError
		if _, err := m.Issue(ctx, agent); !errors.As(err, &le) || le.Limit != 1 {
			t.Fatalf("second issue under override 1: %v", err)
		}
		mustIssue(t, m, other) // others keep the default
		if err := m.SetAgentLimit(ctx, other, 7); err != nil {
			t.Fatal(err)
		}
		got, err := m.ListAgentLimits(ctx)
		want := []sessions.AgentLimitOverride{{AgentID: other, Limit: 7}, {AgentID: agent, Limit: 1}}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("ListAgentLimits = %+v, %v; want %+v", got, err, want)
		}
		if found, err := m.DeleteAgentLimit(ctx, agent); err != nil || !found {
			t.Fatalf("delete = %v, %v", found, err)
		}
		if found, _ := m.DeleteAgentLimit(ctx, agent); found {
			t.Fatal("second delete found an override")
		}
		mustIssue(t, m, agent) // back to the default of 3
		for _, bad := range []int{0, -1, 1 << 31} {
			if err := m.SetAgentLimit(ctx, agent, bad); !errors.Is(err, sessions.ErrInvalidLimit) {
				t.Errorf("limit %d: %v", bad, err)
			}
		}
		if err := m.SetAgentLimit(ctx, strings.Repeat("a", 513), 2); !errors.Is(err, sessions.ErrInvalidAgentID) {
			t.Errorf("long agent id: %v", err)
		}
	})

	t.Run("Refresh", func(t *testing.T) {
		clock := newClock(1_700_000_000)
		m := newManager(t, newStore(t), clock, func(c *sessions.Config) { c.MaxLifetime = 150 * time.Second })
		iss := mustIssue(t, m, agent, sessions.WithMetadata(map[string]string{"client": "cli"}))
		clock.Advance(30 * time.Second)
		ref, err := m.Refresh(ctx, iss.Token, agent)
		if err != nil {
			t.Fatal(err)
		}
		if ref.Session.ID != iss.Session.ID || ref.Token == iss.Token {
			t.Fatalf("refresh must keep the ID and change the token: %+v", ref.Session)
		}
		if got := ref.Session.ExpiresAt.Sub(iss.Session.ExpiresAt); got != 30*time.Second {
			t.Fatalf("expiry moved by %v, want 30s", got)
		}
		s, err := m.Authenticate(ctx, ref.Token, agent)
		if err != nil || s.Metadata["client"] != "cli" || !s.ExpiresAt.Equal(ref.Session.ExpiresAt) {
			t.Fatalf("new token: %+v %v", s, err)
		}
		if _, err := m.Authenticate(ctx, iss.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("old token after refresh: %v", err)
		}
		if _, err := m.Refresh(ctx, iss.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("refresh with the old token: %v", err)
		}
		// Capped at IssuedAt + MaxLifetime (150 s), then refused.
		clock.Advance(50 * time.Second)
		if ref, err = m.Refresh(ctx, ref.Token, agent); err != nil {
			t.Fatal(err)
		}
		clock.Advance(30 * time.Second)
		ref, err = m.Refresh(ctx, ref.Token, agent)
		if err != nil || !ref.Session.ExpiresAt.Equal(iss.Session.IssuedAt.Add(150*time.Second)) {
			t.Fatalf("capped refresh: %+v %v", ref.Session, err)
		}
		if _, err := m.Refresh(ctx, ref.Token, agent); !errors.Is(err, sessions.ErrLifetimeExceeded) {
			t.Fatalf("refresh at the cap: %v", err)
		}
		if _, err := m.Authenticate(ctx, ref.Token, agent); err != nil {
			t.Fatalf("refusing to extend must not revoke: %v", err)
		}
		clock.Advance(40 * time.Second)
		if _, err := m.Refresh(ctx, ref.Token, agent); !errors.Is(err, sessions.ErrSessionExpired) {
			t.Fatalf("refresh after expiry: %v", err)
		}
		if _, err := m.Refresh(ctx, ref.Token, other); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("refresh for another agent: %v", err)
		}
	})

	// A superseded token presented after its own expiry is refused as
	// expired, and deletes nothing: the refreshed session lives on. Only
	// a token that is the session's current one (or a row that really
	// expired) is deleted on sight.
	t.Run("StaleTokenAfterRefreshDeletesNothing", func(t *testing.T) {
		clock := newClock(1_700_000_000)
		store := newStore(t)
		m := newManager(t, store, clock, nil) // TTL 1 min
		iss := mustIssue(t, m, agent)
		clock.Advance(30 * time.Second)
		ref, err := m.Refresh(ctx, iss.Token, agent) // expires 90 s after issue
		if err != nil {
			t.Fatal(err)
		}
		clock.Advance(40 * time.Second) // the old token's exp (60 s) has passed; the session's (90 s) has not
		stale := map[string]func() error{
			"Authenticate": func() error { _, err := m.Authenticate(ctx, iss.Token, agent); return err },
			"Verify":       func() error { _, err := m.Verify(ctx, iss.Token); return err },
			"Refresh":      func() error { _, err := m.Refresh(ctx, iss.Token, agent); return err },
		}
		for name, call := range stale {
			if err := call(); !errors.Is(err, sessions.ErrSessionExpired) {
				t.Fatalf("%s with the superseded token: %v; want ErrSessionExpired", name, err)
			}
			if _, err := m.Authenticate(ctx, ref.Token, agent); err != nil {
				t.Fatalf("after %s with the superseded token, the refreshed session is gone: %v", name, err)
			}
		}
		// The current token, once expired, still deletes its row on sight.
		clock.Advance(20 * time.Second)
		if _, err := m.Authenticate(ctx, ref.Token, agent); !errors.Is(err, sessions.ErrSessionExpired) {
			t.Fatalf("expired current token: %v", err)
		}
		if _, found, err := store.Get(ctx, ref.Session.ID); err != nil || found {
			t.Fatalf("expired session still stored after its own token was seen: found=%v, %v", found, err)
		}
	})

	t.Run("SecretRotation", func(t *testing.T) {
		clock := newClock(1_700_000_000)
		store := newStore(t)
		old := newManager(t, store, clock, nil)
		oldTok := mustIssue(t, old, agent).Token
		rotated := newManager(t, store, clock, func(c *sessions.Config) {
			c.Secret = []byte("the-new-secret-0123456789abcdef!")
			c.PreviousSecrets = [][]byte{[]byte(secret)}
		})
		if _, err := rotated.Authenticate(ctx, oldTok, agent); err != nil {
			t.Fatalf("token signed with the previous secret: %v", err)
		}
		newTok := mustIssue(t, rotated, agent).Token
		if _, err := old.Authenticate(ctx, newTok, agent); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("new tokens must be signed with the new secret only: %v", err)
		}
		clock.Advance(time.Second)
		ref, err := rotated.Refresh(ctx, oldTok, agent)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := old.Authenticate(ctx, ref.Token, agent); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("refresh must re-sign with the current secret: %v", err)
		}
		dropped := newManager(t, store, clock, func(c *sessions.Config) { c.Secret = []byte("the-new-secret-0123456789abcdef!") })
		if _, err := dropped.Authenticate(ctx, newTok, agent); err != nil {
			t.Fatal(err)
		}
		// Refreshed in the same second it was issued: the expiry cannot
		// move, but the token is still re-signed with the current secret.
		sameSecond := mustIssue(t, old, agent)
		resigned, err := rotated.Refresh(ctx, sameSecond.Token, agent)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dropped.Authenticate(ctx, resigned.Token, agent); err != nil {
			t.Fatalf("same-second refresh of an old-secret token: %v", err)
		}
		if _, err := rotated.Authenticate(ctx, sameSecond.Token, agent); err == nil {
			t.Fatal("the token replaced by the refresh still works")
		}
		other := mustIssue(t, old, other).Token
		if _, err := dropped.Verify(ctx, other); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("dropped secret still accepted: %v", err)
		}
	})

	t.Run("Metadata", func(t *testing.T) {
		m := newManager(t, newStore(t), newClock(1_700_000_000), nil)
		md := map[string]string{"client": "claude-desktop", "instance": "gw-2", "remote_addr": "10.0.0.7:51234"}
		iss := mustIssue(t, m, agent, sessions.WithMetadata(md))
		md["client"] = "changed after issue"
		s, err := m.Authenticate(ctx, iss.Token, agent)
		if err != nil || s.Metadata["client"] != "claude-desktop" || len(s.Metadata) != 3 {
			t.Fatalf("metadata = %v, %v", s.Metadata, err)
		}
		plain := mustIssue(t, m, other)
		if s, _ := m.Authenticate(ctx, plain.Token, other); s.Metadata != nil {
			t.Fatalf("no metadata given, got %v", s.Metadata)
		}
		for name, bad := range map[string]map[string]string{
			"empty key": {"": "x"},
			"bad utf8":  {"k": "\xff"},
			"too big":   {"k": strings.Repeat("x", sessions.MaxMetadataBytes)},
			// PostgreSQL's jsonb cannot hold U+0000: refused up front on
			// every store, not a store failure (a 503 clients retry).
			"nul in key":   {"a\x00b": "x"},
			"nul in value": {"k": "a\x00b"},
		} {
			if _, err := m.Issue(ctx, agent, sessions.WithMetadata(bad)); !errors.Is(err, sessions.ErrInvalidMetadata) {
				t.Errorf("%s: %v", name, err)
			}
		}
		if list, _ := m.List(ctx, agent); len(list) != 1 {
			t.Fatalf("refused issues stored something: %d sessions", len(list))
		}
	})

	t.Run("Verify", func(t *testing.T) {
		m := newManager(t, newStore(t), newClock(1_700_000_000), nil)
		iss := mustIssue(t, m, agent)
		if s, err := m.Verify(ctx, iss.Token); err != nil || s.AgentID != agent {
			t.Fatalf("verify = %+v, %v", s, err)
		}
		if _, err := m.Revoke(ctx, iss.Session.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Verify(ctx, iss.Token); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("verify after revoke: %v", err)
		}
		if _, err := m.Verify(ctx, iss.Token[:len(iss.Token)-2]+"AA"); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("tampered: %v", err)
		}
	})
}

func TestMemoryStoreLifecycle(t *testing.T) {
	t.Parallel()
	runLifecycleContract(t, func(*testing.T) sessions.Store { return sessions.NewMemoryStore() })
}

func TestPostgresStoreLifecycle(t *testing.T) {
	t.Parallel()
	runLifecycleContract(t, newPostgresStore)
}

// A store without the optional capabilities makes the manager say so.
func TestLifecycleUnsupported(t *testing.T) {
	t.Parallel()
	m := newManager(t, &countingStore{Store: sessions.NewMemoryStore()}, newClock(1_700_000_000), nil)
	ctx := context.Background()
	_, e1 := m.List(ctx, agent)
	_, e2 := m.RevokeAgent(ctx, agent)
	_, e3 := m.Refresh(ctx, "x.y", agent)
	e4 := m.SetAgentLimit(ctx, agent, 2)
	for i, err := range []error{e1, e2, e3, e4} {
		if !errors.Is(err, errors.ErrUnsupported) || !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("call %d: %v, want ErrUnsupported and ErrInvalidConfig", i+1, err)
		}
	}
}

func TestConfigLifecycleRejected(t *testing.T) {
	t.Parallel()
	base := sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1}
	for name, mutate := range map[string]func(*sessions.Config){
		"lifetime below ttl": func(c *sessions.Config) { c.MaxLifetime = time.Minute },
		"unknown policy":     func(c *sessions.Config) { c.Policy = 7 },
		"empty previous":     func(c *sessions.Config) { c.PreviousSecrets = [][]byte{nil} },
	} {
		cfg := base
		mutate(&cfg)
		if _, err := sessions.New(sessions.NewMemoryStore(), cfg); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"reject", "evict-oldest"} {
		p, err := sessions.ParseLimitPolicy(name)
		if err != nil || p.String() != name {
			t.Errorf("ParseLimitPolicy(%q) = %v, %v", name, p, err)
		}
	}
	if _, err := sessions.ParseLimitPolicy("oldest"); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Errorf("unknown policy name: %v", err)
	}
}

// Evict-oldest across four instances: 64 concurrent issues for one agent
// with limit 5 all succeed, exactly 5 sessions remain, and every session is
// either live or was reported evicted by exactly one issue.
func TestInvariantEvictOldestFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	var insts []instance
	for range 4 {
		store, err := sessions.NewPostgresStore(d.Pool(t), nil)
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
