// Package sessionstest is the contract every [sessions.Store] must meet,
// as tests to run against your own store (Redis, Spanner, ...): the
// in-memory store and the PostgreSQL store (package pgxstore) both pass
// it.
//
//	func TestMyStore(t *testing.T) {
//		sessionstest.Run(t, func(t *testing.T) sessions.Store { return newMyStore(t) })
//	}
//
// Every check goes through a [sessions.Manager] with a fake clock, so it
// tests what callers see: the limit, expiry, revocation, refresh,
// metadata, the optional capabilities ([sessions.AgentStore],
// [sessions.RefreshStore], [sessions.LimitStore], [sessions.TouchStore]
// for idle timeouts and least-recently-used eviction), and that no check that
// needs no store reaches it. It does not test concurrency across
// processes: a store shared by several instances needs its own tests of
// that (see package pgxstore's invariant tests for the shape).
package sessionstest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// The fixtures every check uses: two agents and the managers' secret.
const (
	Agent      = "did:agentmesh:planner"
	OtherAgent = "did:agentmesh:executor"
	Secret     = "contract-secret-0123456789abcdef"
)

const (
	agent  = Agent
	other  = OtherAgent
	secret = Secret
)

// Run runs the contract against stores made by newStore, which is called
// once per subtest and must return an empty store of its own each time.
// The checks of the optional capabilities run when the store implements
// all three of [sessions.AgentStore], [sessions.RefreshStore] and
// [sessions.LimitStore], and are skipped, saying so, otherwise.
func Run(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	t.Helper()
	runContract(t, newStore)
	runDuplicateID(t, newStore)
	t.Run("ExtremeClocks", func(t *testing.T) { ExtremeClocks(t, newStore(t)) })
	t.Run("RollingRotation", func(t *testing.T) {
		shared := newStore(t)
		RollingRotation(t, func() sessions.Store { return shared })
	})
	t.Run("Lifecycle", func(t *testing.T) {
		probe := newStore(t)
		_, agents := probe.(sessions.AgentStore)
		_, refresh := probe.(sessions.RefreshStore)
		_, limits := probe.(sessions.LimitStore)
		if !agents || !refresh || !limits {
			t.Skipf("the store implements AgentStore %v, RefreshStore %v, LimitStore %v: the lifecycle checks need all three",
				agents, refresh, limits)
		}
		runLifecycleContract(t, newStore)
		runHandles(t, newStore)
	})
	t.Run("LastUse", func(t *testing.T) {
		if _, ok := newStore(t).(sessions.TouchStore); !ok {
			t.Skip("the store does not implement TouchStore: idle timeouts and least-recently-used eviction need it")
		}
		runLastUse(t, newStore)
	})
}

// Clock is a settable clock, in whole seconds, for the managers of one
// test.
type Clock struct{ unix atomic.Int64 }

// NewClock returns a clock reading unix seconds.
func NewClock(unix int64) *Clock {
	c := &Clock{}
	c.unix.Store(unix)
	return c
}

// Now reads the clock.
func (c *Clock) Now() time.Time { return time.Unix(c.unix.Load(), 0) }

// Advance moves the clock on by d, in whole seconds.
func (c *Clock) Advance(d time.Duration) { c.unix.Add(int64(d / time.Second)) }

// SeqIDs returns an ID generator yielding prefix-1, prefix-2, ...
func SeqIDs(prefix string) func() (string, error) {
	var n atomic.Int64
	return func() (string, error) { return fmt.Sprintf("%s-%d", prefix, n.Add(1)), nil }
}

// CountingStore counts the calls that reach the Store it wraps, to show
// which checks need no store (forged tokens, handles of another
// principal). It hides the wrapped store's optional capabilities.
type CountingStore struct {
	sessions.Store
	calls atomic.Int64
}

// Calls is how many Store calls have reached the wrapped store.
func (c *CountingStore) Calls() int64 { return c.calls.Load() }

// Get, Delete, DeleteExpired and Insert count the call and pass it on.
func (c *CountingStore) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	c.calls.Add(1)
	return c.Store.Get(ctx, id)
}
func (c *CountingStore) Delete(ctx context.Context, id string) (bool, error) {
	c.calls.Add(1)
	return c.Store.Delete(ctx, id)
}
func (c *CountingStore) DeleteExpired(ctx context.Context, id, digest string, now time.Time) error {
	c.calls.Add(1)
	return c.Store.DeleteExpired(ctx, id, digest, now)
}
func (c *CountingStore) Insert(ctx context.Context, s sessions.Session, req sessions.InsertRequest) (sessions.InsertResult, error) {
	c.calls.Add(1)
	return c.Store.Insert(ctx, s, req)
}

// Digest is the lowercase hex SHA-256 of token: what a store keeps.
func Digest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Env is a manager on a store with a fake clock.
type Env struct {
	Store   sessions.Store
	Clock   *Clock
	Manager *sessions.Manager
}

// NewEnv is a manager on store with a clock at 1,700,000,000, a one-minute
// TTL, the given limit, Secret, and session IDs s-1, s-2, ...
func NewEnv(t testing.TB, store sessions.Store, limit int) *Env {
	t.Helper()
	clock := NewClock(1_700_000_000)
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte(secret), TTL: time.Minute, Limit: limit, Clock: clock.Now, NewID: SeqIDs("s"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Store: store, Clock: clock, Manager: m}
}

// MustIssue issues a session for agentID on m or fails the test.
func MustIssue(t testing.TB, m *sessions.Manager, agentID string, opts ...sessions.IssueOption) sessions.Issued {
	t.Helper()
	iss, err := m.Issue(context.Background(), agentID, opts...)
	if err != nil {
		t.Fatalf("issue for %s: %v", agentID, err)
	}
	return iss
}

// WantDenied fails the test unless err is an access denial for reason.
func WantDenied(t testing.TB, err error, reason sessions.DenyReason) {
	t.Helper()
	var ade *sessions.AccessDeniedError
	if !errors.As(err, &ade) || !errors.Is(err, sessions.ErrAccessDenied) || ade.Reason != reason {
		t.Fatalf("got %v, want access denied (%s)", err, reason)
	}
}

// NewManager is a manager on store with Secret, a one-minute TTL, limit 3
// and clock; mutate, if not nil, changes the config first.
func NewManager(t testing.TB, store sessions.Store, clock *Clock, mutate func(*sessions.Config)) *sessions.Manager {
	t.Helper()
	cfg := sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 3, Clock: clock.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := sessions.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Before the store's own cleanup (cleanups run last-registered first):
	// no batch of last uses is left for a timer to write to a closed store.
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

func ids(list []sessions.Session) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.ID
	}
	return out
}

// runContract checks the behaviour every Store must have, through a Manager.
func runContract(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	ctx := context.Background()

	t.Run("IssueAuthenticate", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 2)
		iss := MustIssue(t, e.Manager, agent)
		if iss.Session.AgentID != agent || iss.Session.ID != "s-1" || iss.Session.TokenDigest != Digest(iss.Token) {
			t.Fatalf("issued session %+v", iss.Session)
		}
		if got := iss.Session.ExpiresAt.Sub(iss.Session.IssuedAt); got != time.Minute {
			t.Fatalf("lifetime %v, want 1m", got)
		}
		s, err := e.Manager.Authenticate(ctx, iss.Token, agent)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(s, iss.Session) {
			t.Fatalf("authenticated %+v, issued %+v", s, iss.Session)
		}
		stored, found, err := e.Store.Get(ctx, iss.Session.ID)
		if err != nil || !found || !reflect.DeepEqual(stored, iss.Session) {
			t.Fatalf("store has %+v %v %v", stored, found, err)
		}
	})

	t.Run("Limit", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 3)
		for range 3 {
			MustIssue(t, e.Manager, agent)
		}
		_, err := e.Manager.Issue(ctx, agent)
		var le *sessions.LimitError
		if !errors.As(err, &le) || !errors.Is(err, sessions.ErrLimitExceeded) || le.AgentID != agent || le.Limit != 3 {
			t.Fatalf("4th issue: %v, want limit error for %s/3", err, agent)
		}
		// The limit is per agent.
		MustIssue(t, e.Manager, other)
		// The refused session was not stored.
		if _, found, _ := e.Store.Get(ctx, "s-4"); found {
			t.Fatal("refused session s-4 is in the store")
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 1)
		iss := MustIssue(t, e.Manager, agent)
		e.Clock.Advance(59 * time.Second)
		if _, err := e.Manager.Authenticate(ctx, iss.Token, agent); err != nil {
			t.Fatalf("1s before expiry: %v", err)
		}
		e.Clock.Advance(time.Second) // exp <= now: expired, as in the reference
		if _, err := e.Manager.Authenticate(ctx, iss.Token, agent); !errors.Is(err, sessions.ErrSessionExpired) {
			t.Fatalf("at expiry: %v, want ErrSessionExpired", err)
		}
		if _, found, _ := e.Store.Get(ctx, iss.Session.ID); found {
			t.Fatal("expired session was not deleted on sight")
		}
	})

	t.Run("ExpiredFreesLimit", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 1)
		first := MustIssue(t, e.Manager, agent)
		stale := MustIssue(t, e.Manager, other)
		if _, err := e.Manager.Issue(ctx, agent); !errors.Is(err, sessions.ErrLimitExceeded) {
			t.Fatalf("second issue: %v", err)
		}
		e.Clock.Advance(time.Minute)
		second := MustIssue(t, e.Manager, agent) // prunes first
		if _, found, _ := e.Store.Get(ctx, first.Session.ID); found {
			t.Fatal("agent's expired session not pruned by issue")
		}
		// Only the issuing agent's rows are pruned.
		if _, found, _ := e.Store.Get(ctx, stale.Session.ID); !found {
			t.Fatal("another agent's expired session was pruned by issue")
		}
		if _, err := e.Manager.Authenticate(ctx, second.Token, agent); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Revoke", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 1)
		iss := MustIssue(t, e.Manager, agent)
		if revoked, err := e.Manager.Revoke(ctx, iss.Session.ID); err != nil || !revoked {
			t.Fatalf("revoke: revoked=%v, %v", revoked, err)
		}
		_, err := e.Manager.Authenticate(ctx, iss.Token, agent)
		WantDenied(t, err, sessions.ReasonUnknownSession)
		if revoked, err := e.Manager.Revoke(ctx, iss.Session.ID); err != nil || revoked {
			t.Fatalf("second revoke: revoked=%v, %v; want false, nil", revoked, err)
		}
		// Revoking freed the agent's slot.
		MustIssue(t, e.Manager, agent)
		if _, err := e.Manager.Revoke(ctx, ""); !errors.Is(err, sessions.ErrInvalidSessionID) {
			t.Fatalf("revoke empty id: %v", err)
		}
	})

	t.Run("AgentMismatch", func(t *testing.T) {
		cs := &CountingStore{Store: newStore(t)}
		e := NewEnv(t, cs, 1)
		iss := MustIssue(t, e.Manager, agent)
		before := cs.Calls()
		_, err := e.Manager.Authenticate(ctx, iss.Token, other)
		WantDenied(t, err, sessions.ReasonAgentMismatch)
		if cs.Calls() != before {
			t.Fatal("agent mismatch reached the store")
		}
	})

	// The store holds a row for the token's session ID whose agent or
	// expiry differ from what the (validly signed) token says.
	t.Run("MetadataMismatch", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 5)
		iss := MustIssue(t, e.Manager, agent)
		for name, mutate := range map[string]func(*sessions.Session){
			"expiry": func(s *sessions.Session) { s.ExpiresAt = s.ExpiresAt.Add(time.Hour) },
			"agent":  func(s *sessions.Session) { s.AgentID = other },
		} {
			replace(t, e.Store, iss.Session, mutate)
			_, err := e.Manager.Authenticate(ctx, iss.Token, agent)
			if err == nil {
				t.Fatalf("%s mismatch accepted", name)
			}
			WantDenied(t, err, sessions.ReasonMetadataMismatch)
		}
	})

	t.Run("DigestMismatch", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 5)
		iss := MustIssue(t, e.Manager, agent)
		replace(t, e.Store, iss.Session, func(s *sessions.Session) { s.TokenDigest = Digest("another token") })
		_, err := e.Manager.Authenticate(ctx, iss.Token, agent)
		WantDenied(t, err, sessions.ReasonDigestMismatch)
	})

	t.Run("ForgedTokenNeverReachesStore", func(t *testing.T) {
		cs := &CountingStore{Store: newStore(t)}
		e := NewEnv(t, cs, 1)
		iss := MustIssue(t, e.Manager, agent)
		forger, _ := sessions.New(sessions.NewMemoryStore(), sessions.Config{
			Secret: []byte("not the secret"), TTL: time.Minute, Limit: 1, Clock: e.Clock.Now,
			NewID: func() (string, error) { return iss.Session.ID, nil },
		})
		forged := MustIssue(t, forger, agent)
		before := cs.Calls()
		if _, err := e.Manager.Authenticate(ctx, forged.Token, agent); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("forged token: %v", err)
		}
		if cs.Calls() != before {
			t.Fatal("forged token reached the store")
		}
	})

	t.Run("InvalidAgentIDs", func(t *testing.T) {
		cs := &CountingStore{Store: newStore(t)}
		e := NewEnv(t, cs, 1)
		iss := MustIssue(t, e.Manager, agent)
		before := cs.Calls()
		for name, id := range map[string]string{
			"empty": "", "too long": strings.Repeat("a", sessions.MaxAgentIDLength+1),
			"invalid utf-8": "did:\xff", "NUL": "did:a\x00b", "newline": "did:a\nb",
		} {
			if _, err := e.Manager.Issue(ctx, id); !errors.Is(err, sessions.ErrInvalidAgentID) {
				t.Errorf("issue %s: %v", name, err)
			}
			if _, err := e.Manager.Authenticate(ctx, iss.Token, id); !errors.Is(err, sessions.ErrInvalidAgentID) {
				t.Errorf("authenticate %s: %v", name, err)
			}
		}
		if cs.Calls() != before {
			t.Fatal("invalid agent ids reached the store")
		}
		maxID := fmt.Sprintf("%0*d", sessions.MaxAgentIDLength, 7)
		MustIssue(t, e.Manager, maxID) // the longest valid ID round-trips
	})

	t.Run("CanceledContext", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 1)
		iss := MustIssue(t, e.Manager, agent)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := e.Manager.Issue(cctx, other); !errors.Is(err, sessions.ErrStore) || !errors.Is(err, context.Canceled) {
			t.Fatalf("issue: %v, want store error wrapping context.Canceled", err)
		}
		if _, err := e.Manager.Authenticate(cctx, iss.Token, agent); !errors.Is(err, sessions.ErrStore) || !errors.Is(err, context.Canceled) {
			t.Fatalf("authenticate: %v, want store error wrapping context.Canceled (fail closed)", err)
		}
		if _, found, _ := e.Store.Get(ctx, "s-2"); found {
			t.Fatal("issue with a canceled context stored a session")
		}
	})

	t.Run("ConcurrentIssueOneStore", func(t *testing.T) {
		e := NewEnv(t, newStore(t), 4)
		var ok, limited atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				_, err := e.Manager.Issue(ctx, agent)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, sessions.ErrLimitExceeded):
					limited.Add(1)
				default:
					t.Errorf("unexpected error: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 4 || limited.Load() != 28 {
			t.Fatalf("%d issued, %d limited; want 4 and 28", ok.Load(), limited.Load())
		}
	})
}

// replace swaps the stored session s for a mutated copy.
func replace(t *testing.T, store sessions.Store, s sessions.Session, mutate func(*sessions.Session)) {
	t.Helper()
	ctx := context.Background()
	if found, err := store.Delete(ctx, s.ID); err != nil || !found {
		t.Fatalf("delete: found=%v, %v", found, err)
	}
	mutate(&s)
	if res, err := store.Insert(ctx, s, sessions.InsertRequest{Limit: 100, Now: s.IssuedAt}); err != nil || !res.Inserted {
		t.Fatalf("re-insert: %+v %v", res, err)
	}
}

// runLifecycleContract checks the optional capabilities every built-in
// store has, through a Manager.
func runLifecycleContract(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	ctx := context.Background()

	t.Run("ListAndRevokeAgent", func(t *testing.T) {
		clock := NewClock(1_700_000_000)
		m := NewManager(t, newStore(t), clock, func(c *sessions.Config) { c.NewID = SeqIDs("s") })
		a1 := MustIssue(t, m, agent)
		clock.Advance(time.Second)
		a2 := MustIssue(t, m, agent)
		o := MustIssue(t, m, other)
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

	// "Log out my other sessions": the caller's session stays, the
	// agent's others go, other agents and the agent's handles are left
	// alone, and only a live token of the agent may ask.
	t.Run("RevokeOtherSessions", func(t *testing.T) {
		clock := NewClock(1_700_000_000)
		store := newStore(t)
		m := NewManager(t, store, clock, nil)
		mine := MustIssue(t, m, agent)
		clock.Advance(time.Second)
		otherA := MustIssue(t, m, agent)
		otherB := MustIssue(t, m, agent)
		theirs := MustIssue(t, m, other)
		n, err := m.RevokeOtherSessions(ctx, mine.Token, agent)
		if err != nil || n != 2 {
			t.Fatalf("RevokeOtherSessions = %d, %v; want 2", n, err)
		}
		if _, err := m.Authenticate(ctx, mine.Token, agent); err != nil {
			t.Fatalf("the caller's own session was revoked: %v", err)
		}
		for _, gone := range []sessions.Issued{otherA, otherB} {
			if _, err := m.Authenticate(ctx, gone.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
				t.Fatalf("another session of the agent survived: %v", err)
			}
		}
		if _, err := m.Authenticate(ctx, theirs.Token, other); err != nil {
			t.Fatalf("another agent's session was touched: %v", err)
		}
		if _, err := m.RevokeOtherSessions(ctx, theirs.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("another agent's token: %v, want a denial", err)
		}
		if _, err := m.RevokeOtherSessions(ctx, otherA.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("a revoked token: %v, want a denial", err)
		}
		if n, err := m.RevokeOtherSessions(ctx, mine.Token, agent); err != nil || n != 0 {
			t.Fatalf("second call = %d, %v; want 0", n, err)
		}
		// The slots are free again: limit 3, one held.
		MustIssue(t, m, agent)
		MustIssue(t, m, agent)
	})

	t.Run("EvictOldest", func(t *testing.T) {
		clock := NewClock(1_700_000_000)
		m := NewManager(t, newStore(t), clock, func(c *sessions.Config) { c.Policy = sessions.PolicyEvictOldest })
		var issued []sessions.Issued
		for range 3 {
			issued = append(issued, MustIssue(t, m, agent))
			clock.Advance(time.Second)
		}
		fourth := MustIssue(t, m, agent)
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
		fifth := MustIssue(t, m, agent)
		if len(fifth.Evicted) != 3 {
			t.Fatalf("evicted %v, want all 3 older sessions", fifth.Evicted)
		}
		if list, _ := m.List(ctx, agent); !reflect.DeepEqual(ids(list), []string{fifth.Session.ID}) {
			t.Fatalf("live = %v", ids(list))
		}
	})

	t.Run("AgentLimitOverrides", func(t *testing.T) {
		clock := NewClock(1_700_000_000)
		m := NewManager(t, newStore(t), clock, nil)
		if l, err := m.AgentLimit(ctx, agent); err != nil || l != (sessions.AgentLimit{Limit: 3}) {
			t.Fatalf("default = %+v, %v", l, err)
		}
		if err := m.SetAgentLimit(ctx, agent, 1); err != nil {
			t.Fatal(err)
		}
		if l, _ := m.AgentLimit(ctx, agent); l != (sessions.AgentLimit{Limit: 1, Override: true}) {
			t.Fatalf("after set = %+v", l)
		}
		MustIssue(t, m, agent)
		var le *sessions.LimitError
		if _, err := m.Issue(ctx, agent); !errors.As(err, &le) || le.Limit != 1 {
			t.Fatalf("second issue under override 1: %v", err)
		}
		MustIssue(t, m, other) // others keep the default
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
		MustIssue(t, m, agent) // back to the default of 3
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
		clock := NewClock(1_700_000_000)
		m := NewManager(t, newStore(t), clock, func(c *sessions.Config) { c.MaxLifetime = 150 * time.Second })
		iss := MustIssue(t, m, agent, sessions.WithMetadata(map[string]string{"client": "cli"}))
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
		clock := NewClock(1_700_000_000)
		store := newStore(t)
		m := NewManager(t, store, clock, nil) // TTL 1 min
		iss := MustIssue(t, m, agent)
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
		clock := NewClock(1_700_000_000)
		store := newStore(t)
		old := NewManager(t, store, clock, nil)
		oldTok := MustIssue(t, old, agent).Token
		rotated := NewManager(t, store, clock, func(c *sessions.Config) {
			c.Secret = []byte("the-new-secret-0123456789abcdef!")
			c.PreviousSecrets = [][]byte{[]byte(secret)}
		})
		if _, err := rotated.Authenticate(ctx, oldTok, agent); err != nil {
			t.Fatalf("token signed with the previous secret: %v", err)
		}
		newTok := MustIssue(t, rotated, agent).Token
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
		dropped := NewManager(t, store, clock, func(c *sessions.Config) { c.Secret = []byte("the-new-secret-0123456789abcdef!") })
		if _, err := dropped.Authenticate(ctx, newTok, agent); err != nil {
			t.Fatal(err)
		}
		// Refreshed in the same second it was issued: the expiry cannot
		// move, but the token is still re-signed with the current secret.
		sameSecond := MustIssue(t, old, agent)
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
		other := MustIssue(t, old, other).Token
		if _, err := dropped.Verify(ctx, other); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("dropped secret still accepted: %v", err)
		}
	})

	t.Run("Metadata", func(t *testing.T) {
		m := NewManager(t, newStore(t), NewClock(1_700_000_000), nil)
		md := map[string]string{"client": "claude-desktop", "instance": "gw-2", "remote_addr": "10.0.0.7:51234"}
		iss := MustIssue(t, m, agent, sessions.WithMetadata(md))
		md["client"] = "changed after issue"
		s, err := m.Authenticate(ctx, iss.Token, agent)
		if err != nil || s.Metadata["client"] != "claude-desktop" || len(s.Metadata) != 3 {
			t.Fatalf("metadata = %v, %v", s.Metadata, err)
		}
		plain := MustIssue(t, m, other)
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
		m := NewManager(t, newStore(t), NewClock(1_700_000_000), nil)
		iss := MustIssue(t, m, agent)
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

// runDuplicateID: a store refuses a second session with an existing ID
// rather than overwrite it (the reference's HashMap would silently
// replace it).
func runDuplicateID(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	t.Run("DuplicateIDRefused", func(t *testing.T) {
		store := newStore(t)
		m, err := sessions.New(store, sessions.Config{
			Secret: []byte(secret), TTL: time.Minute, Limit: 5,
			NewID: func() (string, error) { return "same", nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		first := MustIssue(t, m, agent)
		if _, err := m.Issue(context.Background(), other); !errors.Is(err, sessions.ErrStore) || !errors.Is(err, sessions.ErrDuplicateSessionID) {
			t.Errorf("second issue with the same id: %v, want ErrStore matching ErrDuplicateSessionID", err)
		}
		if s, _, _ := store.Get(context.Background(), "same"); !reflect.DeepEqual(s, first.Session) {
			t.Errorf("first session was overwritten: %+v", s)
		}
	})
}

// latestExpiry is 9999-12-31T23:59:59Z, the latest expiry a session may
// have (the package's maxExpiry).
const latestExpiry = 253402300799

// maxTTLSeconds is the longest TTL a time.Duration can hold, in seconds.
const maxTTLSeconds = math.MaxInt64 / int64(time.Second)

// IssueAuthenticates checks the property: at any clock and TTL, Issue
// either refuses (a clock before 1970, past latestExpiry, or a TTL that
// would carry the expiry past it) or returns a token that Authenticate,
// Verify and Refresh accept on the same manager. It never refuses a
// combination that fits.
func IssueAuthenticates(t testing.TB, store sessions.Store, clockSecs, ttlSecs int64) {
	t.Helper()
	ctx := context.Background()
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte(secret), TTL: time.Duration(ttlSecs) * time.Second, Limit: 1 << 20,
		Clock: func() time.Time { return time.Unix(clockSecs, 0) },
	})
	if err != nil {
		t.Fatalf("New(ttl %ds): %v", ttlSecs, err)
	}
	agentID := fmt.Sprintf("did:agentmesh:clock-%d-ttl-%d", clockSecs, ttlSecs)
	iss, err := m.Issue(ctx, agentID)
	fits := clockSecs >= 0 && clockSecs <= latestExpiry && ttlSecs <= latestExpiry-clockSecs
	switch {
	case !fits && clockSecs < 0:
		if !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("clock %d: Issue = %v, want the clock-before-epoch denial", clockSecs, err)
		}
		return
	case !fits:
		if !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Fatalf("clock %d, ttl %ds: Issue = %v, want ErrInvalidConfig (expiry past 9999-12-31)", clockSecs, ttlSecs, err)
		}
		return
	case err != nil:
		t.Fatalf("clock %d, ttl %ds: Issue refused a combination that fits: %v", clockSecs, ttlSecs, err)
	}
	if _, err := m.Authenticate(ctx, iss.Token, agentID); err != nil {
		t.Fatalf("clock %d, ttl %ds: Authenticate of the token Issue just returned: %v", clockSecs, ttlSecs, err)
	}
	if _, err := m.Verify(ctx, iss.Token); err != nil {
		t.Fatalf("clock %d, ttl %ds: Verify: %v", clockSecs, ttlSecs, err)
	}
	ref, err := m.Refresh(ctx, iss.Token, agentID)
	if err != nil && !errors.Is(err, sessions.ErrLifetimeExceeded) {
		t.Fatalf("clock %d, ttl %ds: Refresh: %v", clockSecs, ttlSecs, err)
	}
	if err == nil {
		if _, err := m.Authenticate(ctx, ref.Token, agentID); err != nil {
			t.Fatalf("clock %d, ttl %ds: Authenticate after Refresh: %v", clockSecs, ttlSecs, err)
		}
	}
}

// extremeCases are clocks and TTLs at and around every boundary: the
// epoch, the latest expiry, and int64's end, where unsigned arithmetic
// on the clock would wrap.
func extremeCases() (clocks, ttls []int64) {
	ttls = []int64{1, 59, 3600, 86400 * 366, maxTTLSeconds - 1, maxTTLSeconds}
	clocks = []int64{-1, 0, 1, 1_700_000_000, math.MaxInt64 - 1, math.MaxInt64, math.MinInt64}
	for _, ttl := range ttls {
		clocks = append(clocks, latestExpiry-ttl-1, latestExpiry-ttl, latestExpiry-ttl+1)
	}
	clocks = append(clocks, latestExpiry, latestExpiry+1, latestExpiry+86400, 1<<62)
	return clocks, ttls
}

// ExtremeClocks checks [IssueAuthenticates] on store at and around every
// boundary: the epoch, 9999-12-31T23:59:59Z (the latest expiry a session
// can have) and the end of int64 seconds.
func ExtremeClocks(t *testing.T, store sessions.Store) {
	t.Helper()
	clocks, ttls := extremeCases()
	for _, c := range clocks {
		for _, ttl := range ttls {
			IssueAuthenticates(t, store, c, ttl)
		}
	}
}

var (
	rotOld  = []byte("rotation-old-secret-0123456789abcdef-0123")
	rotNext = []byte("rotation-next-secret-0123456789abcdef-012")
)

// rotationPhase returns the config fields of an instance in phase 0
// (before the rotation) to 3 (done), as Config.VerifySecrets documents.
func rotationPhase(phase int) (secret []byte, verify [][]byte) {
	switch phase {
	case 0:
		return rotOld, nil
	case 1:
		return rotOld, [][]byte{rotNext}
	case 2:
		return rotNext, [][]byte{rotOld}
	case 3:
		return rotNext, nil
	}
	panic(phase)
}

type phasedInstance struct {
	phase int
	name  string
	m     *sessions.Manager
}

// fleet builds two instances per phase on stores from newStore (one store
// each: they share what the stores share), all on clock.
func fleet(t *testing.T, clock *Clock, newStore func() sessions.Store, phases ...int) []phasedInstance {
	t.Helper()
	var out []phasedInstance
	for _, ph := range phases {
		for i := range 2 {
			secret, verify := rotationPhase(ph)
			m, err := sessions.New(newStore(), sessions.Config{
				Secret: secret, VerifySecrets: verify, TTL: time.Hour, Limit: 1000, Clock: clock.Now,
			})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, phasedInstance{ph, fmt.Sprintf("phase-%d instance %d", ph, i), m})
		}
	}
	return out
}

// checkFleet proves a mixed fleet works: a token issued by any instance
// authenticates on every instance, and refreshing it on any instance gives
// a token that authenticates (and refreshes) on every instance in turn.
func checkFleet(t *testing.T, clock *Clock, insts []phasedInstance) {
	t.Helper()
	ctx := context.Background()
	for _, issuer := range insts {
		agent := "agent-from-" + issuer.name
		iss, err := issuer.m.Issue(ctx, agent)
		if err != nil {
			t.Fatalf("%s: issue: %v", issuer.name, err)
		}
		authEverywhere := func(tok, what string) {
			t.Helper()
			for _, v := range insts {
				if _, err := v.m.Authenticate(ctx, tok, agent); err != nil {
					t.Fatalf("%s rejects the %s: %v", v.name, what, err)
				}
				if _, err := v.m.Verify(ctx, tok); err != nil {
					t.Fatalf("%s: Verify rejects the %s: %v", v.name, what, err)
				}
			}
		}
		authEverywhere(iss.Token, "token issued by "+issuer.name)
		tok := iss.Token
		for _, r := range insts {
			clock.Advance(time.Second) // so the refresh moves the expiry and re-signs
			ref, err := r.m.Refresh(ctx, tok, agent)
			if err != nil {
				t.Fatalf("%s cannot refresh a token issued by %s: %v", r.name, issuer.name, err)
			}
			if ref.Token == tok {
				t.Fatalf("%s: refresh returned the same token", r.name)
			}
			tok = ref.Token
			authEverywhere(tok, fmt.Sprintf("token issued by %s, refreshed by %s", issuer.name, r.name))
		}
	}
}

// RollingRotation checks a two-phase secret rotation (Config.VerifySecrets)
// across a fleet in which instances are in different phases at once:
// every token issued or refreshed anywhere verifies everywhere, while a
// one-step rotation would not. instance returns the store of one more
// instance; all of them must share the same sessions.
func RollingRotation(t *testing.T, newStore func() sessions.Store) {
	clock := NewClock(1_800_000_000)
	for _, mix := range [][]int{{0}, {0, 1}, {1}, {1, 2}, {2}, {2, 3}, {3}} {
		t.Run(fmt.Sprint("phases", mix), func(t *testing.T) {
			checkFleet(t, clock, fleet(t, clock, newStore, mix...))
		})
	}

	// The one-step rotation (new Secret with the old one verify-only,
	// phase 2 straight after phase 0) is what breaks a rolling deploy:
	// instances not yet updated reject the updated ones' tokens.
	t.Run("one-step rotation breaks", func(t *testing.T) {
		insts := fleet(t, clock, newStore, 0, 2)
		iss, err := insts[2].m.Issue(context.Background(), "agent-one-step")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := insts[0].m.Authenticate(context.Background(), iss.Token, "agent-one-step"); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("a phase-0 instance accepted a token signed with the next secret: %v", err)
		}
	})
}

// Seed inserts expired sessions (expired at 1, 2, ... seconds before now)
// and then live ones (expiring an hour after now) directly through the
// store, spread over 7 agents, with IDs seed-0, seed-1, ...
func Seed(t *testing.T, store sessions.Store, expired, live int, now time.Time) {
	t.Helper()
	ctx := context.Background()
	for i := range expired + live {
		exp := now.Add(-time.Duration(i+1) * time.Second)
		if i >= expired {
			exp = now.Add(time.Hour)
		}
		s := sessions.Session{
			ID: fmt.Sprintf("seed-%d", i), AgentID: fmt.Sprintf("agent-%d", i%7),
			IssuedAt: exp.Add(-2 * time.Hour), ExpiresAt: exp, TokenDigest: Digest(fmt.Sprint(i)),
		}
		if res, err := store.Insert(ctx, s, sessions.InsertRequest{Limit: 1 << 20, Now: s.IssuedAt}); err != nil || !res.Inserted {
			t.Fatalf("seed %d: %+v %v", i, res, err)
		}
	}
}
