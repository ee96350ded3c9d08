package sessions_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// flakyTouchStore is a MemoryStore whose Touch fails while fail is set,
// and which records every batch it is given.
type flakyTouchStore struct {
	*sessions.MemoryStore
	fail    atomic.Bool
	mu      sync.Mutex
	batches [][]sessions.Use
}

func (f *flakyTouchStore) Touch(ctx context.Context, uses []sessions.Use) error {
	f.mu.Lock()
	f.batches = append(f.batches, append([]sessions.Use(nil), uses...))
	f.mu.Unlock()
	if f.fail.Load() {
		return errors.New("database down")
	}
	return f.MemoryStore.Touch(ctx, uses)
}

func (f *flakyTouchStore) batchCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.batches)
}

// A batch the store refused is kept and written with the next: no use is
// lost, and a use made meanwhile is merged in.
func TestLastUseFailedBatchIsKept(t *testing.T) {
	ctx := context.Background()
	store := &flakyTouchStore{MemoryStore: sessions.NewMemoryStore()}
	clock := newClock(1_700_000_000)
	m := newManager(t, store, clock, func(c *sessions.Config) {
		c.TTL, c.IdleTimeout, c.LastUseInterval = time.Hour, time.Minute, 50*time.Second
	})
	a, b := mustIssue(t, m, agent), mustIssue(t, m, agent)
	clock.Advance(10 * time.Second)
	if _, err := m.Authenticate(ctx, a.Token, agent); err != nil {
		t.Fatal(err)
	}
	store.fail.Store(true)
	err := m.Close(ctx)
	if !errors.Is(err, sessions.ErrStore) {
		t.Fatalf("Close with the store down: %v, want ErrStore", err)
	}
	if got := m.LastUseStats(); got.Failures != 1 || got.Flushes != 0 {
		t.Errorf("LastUseStats %+v, want 1 failure", got)
	}
	// Meanwhile, the manager still knows its own uses.
	clock.Advance(55 * time.Second)
	if _, err := m.Authenticate(ctx, a.Token, agent); err != nil {
		t.Fatalf("a used 55s ago on this manager, batch not yet written: %v", err)
	}
	if _, err := m.Authenticate(ctx, b.Token, agent); !errors.Is(err, sessions.ErrSessionIdle) {
		t.Fatalf("b, never used: %v, want ErrSessionIdle", err)
	}
	store.fail.Store(false)
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s, _, _ := store.GetLatest(ctx, a.Session.ID)
	if !s.LastUsedAt.Equal(clock.Now()) {
		t.Errorf("stored last use %v, want the latest use %v", s.LastUsedAt, clock.Now())
	}
	if got := m.LastUseStats(); got.Flushes != 1 || got.Uses != 1 {
		t.Errorf("LastUseStats %+v, want 1 flush of 1 use", got)
	}
}

// Without Close, the timer writes the batch LastUseInterval after the
// first use, and stops once nothing is pending (goleak checks no
// goroutine is left behind).
func TestLastUseTimerWrites(t *testing.T) {
	ctx := context.Background()
	store := &flakyTouchStore{MemoryStore: sessions.NewMemoryStore()}
	m := newManager(t, store, newClock(1_700_000_000), func(c *sessions.Config) {
		c.Policy, c.LastUseInterval = sessions.PolicyEvictLeastRecentlyUsed, sessions.MinLastUseInterval
	})
	iss := mustIssue(t, m, agent)
	if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for store.batchCount() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no batch written 10s after a use with a 100ms interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// Neither an idle timeout nor LRU: no use is recorded, no store is
// asked to write one.
func TestLastUseOffByDefault(t *testing.T) {
	ctx := context.Background()
	store := &flakyTouchStore{MemoryStore: sessions.NewMemoryStore()}
	m := newManager(t, store, newClock(1_700_000_000), nil)
	iss := mustIssue(t, m, agent)
	for range 3 {
		if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := store.batchCount(); n != 0 {
		t.Errorf("%d batches written with no idle timeout and no LRU", n)
	}
}

func TestIdleConfig(t *testing.T) {
	base := sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1}
	for _, tc := range []struct {
		name   string
		store  sessions.Store
		mutate func(*sessions.Config)
		field  string
	}{
		{"negative", sessions.NewMemoryStore(), func(c *sessions.Config) { c.IdleTimeout = -time.Second }, "IdleTimeout"},
		{"sub-second", sessions.NewMemoryStore(), func(c *sessions.Config) { c.IdleTimeout = 500 * time.Millisecond }, "IdleTimeout"},
		{"interval not below timeout", sessions.NewMemoryStore(), func(c *sessions.Config) {
			c.IdleTimeout, c.LastUseInterval = time.Minute, time.Minute
		}, "LastUseInterval"},
		{"interval too short", sessions.NewMemoryStore(), func(c *sessions.Config) {
			c.IdleTimeout, c.LastUseInterval = time.Minute, time.Nanosecond
		}, "LastUseInterval"},
		{"interval not below the truncated timeout", sessions.NewMemoryStore(), func(c *sessions.Config) {
			c.IdleTimeout, c.LastUseInterval = 1500*time.Millisecond, 1200*time.Millisecond
		}, "LastUseInterval"},
		{"idle without TouchStore", plainStore{sessions.NewMemoryStore()}, func(c *sessions.Config) { c.IdleTimeout = time.Minute }, "store"},
		{"lru without TouchStore", plainStore{sessions.NewMemoryStore()}, func(c *sessions.Config) {
			c.Policy = sessions.PolicyEvictLeastRecentlyUsed
		}, "store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.mutate(&cfg)
			_, err := sessions.New(tc.store, cfg)
			var ce *sessions.ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("New: %v, want a ConfigError on %s", err, tc.field)
			}
		})
	}
	// A one-second idle timeout gets an interval below it.
	cfg := base
	cfg.IdleTimeout = time.Second
	if _, err := sessions.New(sessions.NewMemoryStore(), cfg); err != nil {
		t.Errorf("IdleTimeout 1s: %v", err)
	}
	for _, p := range []sessions.LimitPolicy{sessions.PolicyReject, sessions.PolicyEvictOldest, sessions.PolicyEvictLeastRecentlyUsed} {
		if got, err := sessions.ParseLimitPolicy(p.String()); err != nil || got != p {
			t.Errorf("ParseLimitPolicy(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := sessions.NewHandles(newManager(t, plainCapable{sessions.NewMemoryStore()}, newClock(1_700_000_000), nil),
		sessions.HandleKind{Name: "browser", TTL: time.Hour, Limit: 1, Policy: sessions.PolicyEvictLeastRecentlyUsed}); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Errorf("an LRU handle kind on a store without TouchStore: %v, want ErrInvalidConfig", err)
	}
}

// plainCapable has every capability Handles needs but TouchStore.
type plainCapable struct{ *sessions.MemoryStore }

func (p plainCapable) Touch() {} // not TouchStore's method: hides it

func TestIdleErrorAnswers(t *testing.T) {
	info := sessions.HTTPError(sessions.ErrSessionIdle)
	if info.Status != 401 || info.Code != sessions.CodeExpired {
		t.Errorf("HTTPError(ErrSessionIdle) = %+v, want 401 %s", info, sessions.CodeExpired)
	}
	if info.Message == sessions.HTTPError(sessions.ErrSessionExpired).Message {
		t.Errorf("the idle message %q does not say idle", info.Message)
	}
	if got := sessions.FailureReason(sessions.ErrSessionIdle); got != "idle_timeout" {
		t.Errorf("FailureReason = %q, want idle_timeout", got)
	}
	if got := sessions.FailureReason(sessions.ErrSessionExpired); got != "expired" {
		t.Errorf("FailureReason(expired) = %q, want expired", got)
	}
}
