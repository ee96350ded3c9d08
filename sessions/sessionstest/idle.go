package sessionstest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// idleTimeout is the contract's idle timeout: a minute, with uses written
// every 10 seconds (the default, a tenth).
const idleTimeout = time.Minute

// idleManager is a manager on store with an idle timeout, a one-hour TTL
// (so only idleness ends sessions), limit 3, session IDs prefix-1, ...
func idleManager(t *testing.T, store sessions.Store, clock *Clock, prefix string, mutate func(*sessions.Config)) *sessions.Manager {
	t.Helper()
	return NewManager(t, store, clock, func(c *sessions.Config) {
		c.TTL, c.IdleTimeout, c.NewID = time.Hour, idleTimeout, SeqIDs(prefix)
		if mutate != nil {
			mutate(c)
		}
	})
}

func mustClose(t *testing.T, m *sessions.Manager) {
	t.Helper()
	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("Close (writing last uses): %v", err)
	}
}

func wantIdle(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, sessions.ErrSessionIdle) || !errors.Is(err, sessions.ErrSessionExpired) {
		t.Fatalf("got %v, want ErrSessionIdle (matching ErrSessionExpired)", err)
	}
}

func mustAuth(t *testing.T, m *sessions.Manager, token string) sessions.Session {
	t.Helper()
	s, err := m.Authenticate(context.Background(), token, agent)
	if err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	return s
}

// runLastUse checks idle timeouts and least-recently-used eviction, for a
// store that is a [sessions.TouchStore].
func runLastUse(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	ctx := context.Background()
	t.Run("UnusedSessionGoesIdle", func(t *testing.T) {
		clock := NewClock(1_700_000_000)
		m := idleManager(t, newStore(t), clock, "s", nil)
		used, unused := MustIssue(t, m, agent), MustIssue(t, m, agent)
		clock.Advance(50 * time.Second)
		if s := mustAuth(t, m, used.Token); !s.LastUsedAt.Equal(clock.Now()) {
			t.Errorf("LastUsedAt %v, want this use, %v", s.LastUsedAt, clock.Now())
		}
		mustClose(t, m)
		clock.Advance(20 * time.Second) // 70s after issue, 20s after the use
		_, err := m.Authenticate(ctx, unused.Token, agent)
		wantIdle(t, err)
		mustAuth(t, m, used.Token)
		if _, err := m.Refresh(ctx, unused.Token, agent); !errors.Is(err, sessions.ErrSessionIdle) {
			t.Errorf("refresh of an idle session: %v, want ErrSessionIdle", err)
		}
		if _, err := m.RevokeOtherSessions(ctx, unused.Token, agent); !errors.Is(err, sessions.ErrSessionIdle) {
			t.Errorf("revoke-others with an idle session: %v, want ErrSessionIdle", err)
		}
		list, err := m.List(ctx, agent)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(list); !slices.Equal(got, []string{used.Session.ID}) {
			t.Errorf("List %v, want only the used session %s", got, used.Session.ID)
		}
		// Exactly at the boundary: last use + idle timeout is idle, like
		// expiry at exp.
		clock.Advance(idleTimeout)
		_, err = m.Authenticate(ctx, used.Token, agent)
		wantIdle(t, err)
	})

	t.Run("RefreshIsAUse", func(t *testing.T) {
		clock := NewClock(1_700_000_000)
		m := idleManager(t, newStore(t), clock, "s", nil)
		iss := MustIssue(t, m, agent)
		for range 5 { // 5 x 45s: far past the idle timeout since issue
			clock.Advance(45 * time.Second)
			var err error
			if iss, err = m.Refresh(ctx, iss.Token, agent); err != nil {
				t.Fatalf("refresh every 45s: %v", err)
			}
			mustClose(t, m)
		}
	})

	t.Run("UsedThroughAnotherInstance", func(t *testing.T) {
		store := newStore(t)
		clock := NewClock(1_700_000_000)
		a := idleManager(t, store, clock, "a", nil)
		b := idleManager(t, store, clock, "b", nil)
		iss := MustIssue(t, a, agent)
		mustAuth(t, a, iss.Token)
		for range 4 { // used every 40s through b only
			clock.Advance(40 * time.Second)
			mustAuth(t, b, iss.Token)
			mustClose(t, b)
		}
		clock.Advance(40 * time.Second) // 200s after a last saw it
		mustAuth(t, a, iss.Token)
		mustClose(t, a)
		clock.Advance(idleTimeout)
		_, err := b.Authenticate(ctx, iss.Token, agent)
		wantIdle(t, err)
		_, err = a.Authenticate(ctx, iss.Token, agent)
		wantIdle(t, err)
	})

	t.Run("UsesNotYetWrittenAreNotSeenElsewhere", func(t *testing.T) {
		// The documented granularity: until a manager writes its uses
		// (every LastUseInterval, or Close), other instances do not see
		// them. Here b never writes.
		store := newStore(t)
		clock := NewClock(1_700_000_000)
		a := idleManager(t, store, clock, "a", nil)
		b := idleManager(t, store, clock, "b", func(c *sessions.Config) { c.LastUseInterval = 59 * time.Second })
		iss := MustIssue(t, a, agent)
		clock.Advance(30 * time.Second)
		mustAuth(t, b, iss.Token)
		clock.Advance(40 * time.Second)
		_, err := a.Authenticate(ctx, iss.Token, agent)
		wantIdle(t, err)
		mustAuth(t, b, iss.Token) // b knows its own use
	})

	t.Run("ClockSkew", func(t *testing.T) {
		// b's clock is 15s behind a's: its uses look 15s older to a, so
		// on a the session goes idle 15s early, never late.
		store := newStore(t)
		clock := NewClock(1_700_000_000)
		behind := NewClock(1_700_000_000 - 15)
		a := idleManager(t, store, clock, "a", nil)
		b := idleManager(t, store, behind, "b", nil)
		iss := MustIssue(t, a, agent)
		clock.Advance(40 * time.Second)
		behind.Advance(40 * time.Second)
		mustAuth(t, b, iss.Token) // a use at a's +25
		mustClose(t, b)
		clock.Advance(44 * time.Second) // a's +84: 59s after the use as a sees it
		mustAuth(t, a, iss.Token)
		// A late batch of the skewed instance cannot move the last use
		// back: a's use at +84 stands.
		if err := store.(sessions.TouchStore).Touch(ctx, []sessions.Use{{ID: iss.Session.ID, At: clock.Now().Add(-80 * time.Second)}}); err != nil {
			t.Fatal(err)
		}
		mustClose(t, a)
		s, found, err := store.(sessions.TouchStore).GetLatest(ctx, iss.Session.ID)
		if err != nil || !found || !s.LastUsedAt.Equal(clock.Now()) {
			t.Fatalf("GetLatest: %v %v %v, want LastUsedAt %v", s.LastUsedAt, found, err, clock.Now())
		}
	})

	t.Run("TouchSkipsUnknownAndStale", func(t *testing.T) {
		store := newStore(t)
		ts := store.(sessions.TouchStore)
		clock := NewClock(1_700_000_000)
		m := NewManager(t, store, clock, nil)
		iss := MustIssue(t, m, agent)
		s, found, err := ts.GetLatest(ctx, iss.Session.ID)
		if err != nil || !found || !s.LastUsedAt.Equal(iss.Session.IssuedAt) {
			t.Fatalf("before any use: LastUsedAt %v (found %v, %v), want IssuedAt %v", s.LastUsedAt, found, err, iss.Session.IssuedAt)
		}
		later := clock.Now().Add(30 * time.Second)
		if err := ts.Touch(ctx, []sessions.Use{{ID: "no-such-session", At: later}, {ID: iss.Session.ID, At: later}}); err != nil {
			t.Fatal(err)
		}
		if err := ts.Touch(ctx, []sessions.Use{{ID: iss.Session.ID, At: later.Add(-20 * time.Second)}}); err != nil {
			t.Fatal(err)
		}
		if s, _, _ := ts.GetLatest(ctx, iss.Session.ID); !s.LastUsedAt.Equal(later) {
			t.Errorf("LastUsedAt %v, want %v (an older use does not move it back)", s.LastUsedAt, later)
		}
		if _, found, _ := ts.GetLatest(ctx, "no-such-session"); found {
			t.Error("Touch created a session")
		}
	})

	t.Run("LimitCountsIdleAsGone", func(t *testing.T) {
		store := newStore(t)
		clock := NewClock(1_700_000_000)
		m := idleManager(t, store, clock, "s", func(c *sessions.Config) { c.Limit = 2 })
		first, second := MustIssue(t, m, agent), MustIssue(t, m, agent)
		if _, err := m.Issue(ctx, agent); !errors.Is(err, sessions.ErrLimitExceeded) {
			t.Fatalf("third issue at limit 2: %v, want ErrLimitExceeded", err)
		}
		clock.Advance(30 * time.Second)
		mustAuth(t, m, second.Token)
		mustClose(t, m)
		clock.Advance(30 * time.Second) // first idle, but within the margin for unwritten uses
		_, err := m.Authenticate(ctx, first.Token, agent)
		wantIdle(t, err)
		if _, err := m.Issue(ctx, agent); !errors.Is(err, sessions.ErrLimitExceeded) {
			t.Fatalf("issue 60s after first's issue: %v; want ErrLimitExceeded (stores delete idle sessions only "+
				"2*LastUseInterval = 20s after they went idle)", err)
		}
		clock.Advance(21 * time.Second) // 81s: first idle for 21s, second used 51s ago
		third := MustIssue(t, m, agent)
		if len(third.Evicted) != 0 {
			t.Errorf("reject policy evicted %v", third.Evicted)
		}
		if _, found, _ := store.Get(ctx, first.Session.ID); found {
			t.Error("the idle session is still stored after the limit check")
		}
		if _, err := m.Issue(ctx, agent); !errors.Is(err, sessions.ErrLimitExceeded) {
			t.Fatalf("issue with second and third live at limit 2: %v, want ErrLimitExceeded", err)
		}
	})

	for _, tc := range []struct {
		policy sessions.LimitPolicy
		want   func(first, second sessions.Issued) string
	}{
		{sessions.PolicyEvictLeastRecentlyUsed, func(_, second sessions.Issued) string { return second.Session.ID }},
		{sessions.PolicyEvictOldest, func(first, _ sessions.Issued) string { return first.Session.ID }},
	} {
		t.Run("Evict/"+tc.policy.String(), func(t *testing.T) {
			// first is older, but used since; second was never used.
			clock := NewClock(1_700_000_000)
			m := NewManager(t, newStore(t), clock, func(c *sessions.Config) {
				c.Limit, c.Policy, c.TTL, c.NewID = 2, tc.policy, time.Hour, SeqIDs("s")
				if tc.policy == sessions.PolicyEvictOldest {
					c.IdleTimeout = idleTimeout // uses recorded either way
				}
			})
			first := MustIssue(t, m, agent)
			clock.Advance(time.Second)
			second := MustIssue(t, m, agent)
			clock.Advance(5 * time.Second)
			mustAuth(t, m, first.Token)
			mustClose(t, m)
			clock.Advance(time.Second)
			third := MustIssue(t, m, agent)
			if want := tc.want(first, second); !slices.Equal(third.Evicted, []string{want}) {
				t.Errorf("evicted %v, want [%s]", third.Evicted, want)
			}
		})
	}

	t.Run("Evict/least-recently-used-unwritten-uses", func(t *testing.T) {
		// The issuing manager's own uses count before they are written.
		clock := NewClock(1_700_000_000)
		m := NewManager(t, newStore(t), clock, func(c *sessions.Config) {
			c.Limit, c.Policy, c.NewID = 2, sessions.PolicyEvictLeastRecentlyUsed, SeqIDs("s")
		})
		first := MustIssue(t, m, agent)
		clock.Advance(time.Second)
		second := MustIssue(t, m, agent)
		clock.Advance(5 * time.Second)
		mustAuth(t, m, first.Token) // not written: no Close
		clock.Advance(time.Second)
		third := MustIssue(t, m, agent)
		if !slices.Equal(third.Evicted, []string{second.Session.ID}) {
			t.Errorf("evicted %v, want the never-used %s (first was used a second ago here)", third.Evicted, second.Session.ID)
		}
	})

	t.Run("TouchFarAheadIsCapped", func(t *testing.T) {
		// A use timed an hour ahead of the store's clock (a clock that
		// jumped) is kept as at most a minute ahead.
		store := newStore(t)
		ts := store.(sessions.TouchStore)
		m := NewManager(t, store, NewClock(time.Now().Unix()), nil)
		iss := MustIssue(t, m, agent)
		if err := ts.Touch(ctx, []sessions.Use{{ID: iss.Session.ID, At: time.Now().Add(time.Hour).Truncate(time.Second)}}); err != nil {
			t.Fatal(err)
		}
		s, _, err := ts.GetLatest(ctx, iss.Session.ID)
		if err != nil {
			t.Fatal(err)
		}
		if limit := time.Now().Add(time.Minute + 5*time.Second); s.LastUsedAt.After(limit) {
			t.Errorf("LastUsedAt %v after a use an hour ahead: want at most a minute past now (%v)", s.LastUsedAt, limit)
		}
	})

	t.Run("Evict/least-recently-used-ties", func(t *testing.T) {
		// Never used: last use is issue time, then the ID decides.
		clock := NewClock(1_700_000_000)
		m := NewManager(t, newStore(t), clock, func(c *sessions.Config) {
			c.Limit, c.Policy, c.NewID = 2, sessions.PolicyEvictLeastRecentlyUsed, SeqIDs("s")
		})
		first := MustIssue(t, m, agent)
		MustIssue(t, m, agent)
		third := MustIssue(t, m, agent)
		if !slices.Equal(third.Evicted, []string{first.Session.ID}) {
			t.Errorf("evicted %v, want [%s]", third.Evicted, first.Session.ID)
		}
	})

	t.Run("HandleKindLeastRecentlyUsed", func(t *testing.T) {
		store := newStore(t)
		clock := NewClock(1_700_000_000)
		m := NewManager(t, store, clock, nil)
		h, err := sessions.NewHandles(m, sessions.HandleKind{Name: "browser", TTL: time.Hour, Limit: 2, Policy: sessions.PolicyEvictLeastRecentlyUsed})
		if err != nil {
			t.Fatal(err)
		}
		first := mustCreate(t, h, agent, "browser")
		clock.Advance(time.Second)
		second := mustCreate(t, h, agent, "browser")
		clock.Advance(time.Second)
		if _, err := h.Resolve(ctx, agent, "browser", first.Handle); err != nil {
			t.Fatal(err)
		}
		mustClose(t, m)
		third := mustCreate(t, h, agent, "browser")
		if !slices.Equal(third.Evicted, []string{second.ID}) {
			t.Errorf("evicted %v, want the handle not resolved since creation, %s", third.Evicted, second.ID)
		}
	})
}
