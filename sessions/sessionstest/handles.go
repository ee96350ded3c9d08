package sessionstest

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// handleKinds are the kinds the handle checks use.
var handleKinds = []sessions.HandleKind{
	{Name: "basket", TTL: time.Minute, Limit: 2},
	{Name: "browser", TTL: time.Minute, Limit: 1, Policy: sessions.PolicyEvictOldest, MaxLifetime: 150 * time.Second},
}

func newHandles(t *testing.T, store sessions.Store) (*sessions.Handles, *sessions.Manager, *Clock, *CountingStore) {
	t.Helper()
	cs := &CountingStore{Store: store}
	clock := NewClock(1_700_000_000)
	m := NewManager(t, capable{cs, store}, clock, nil)
	h, err := sessions.NewHandles(m, handleKinds...)
	if err != nil {
		t.Fatal(err)
	}
	return h, m, clock, cs
}

// capable counts the Store calls and passes the optional capabilities of
// the wrapped store through.
type capable struct {
	*CountingStore
	all sessions.Store
}

func (c capable) ListAgent(ctx context.Context, agentID, kind string, now time.Time) ([]sessions.Session, error) {
	return c.all.(sessions.AgentStore).ListAgent(ctx, agentID, kind, now)
}
func (c capable) DeleteAgent(ctx context.Context, agentID, kind, exceptID string) (int, error) {
	return c.all.(sessions.AgentStore).DeleteAgent(ctx, agentID, kind, exceptID)
}
func (c capable) Extend(ctx context.Context, id, oldDigest string, exp time.Time, newDigest string, now time.Time) (bool, error) {
	return c.all.(sessions.RefreshStore).Extend(ctx, id, oldDigest, exp, newDigest, now)
}
func (c capable) AgentLimit(ctx context.Context, agentID, kind string) (int, bool, error) {
	return c.all.(sessions.LimitStore).AgentLimit(ctx, agentID, kind)
}
func (c capable) SetAgentLimit(ctx context.Context, agentID, kind string, limit int) error {
	return c.all.(sessions.LimitStore).SetAgentLimit(ctx, agentID, kind, limit)
}
func (c capable) DeleteAgentLimit(ctx context.Context, agentID, kind string) (bool, error) {
	return c.all.(sessions.LimitStore).DeleteAgentLimit(ctx, agentID, kind)
}
func (c capable) AgentLimits(ctx context.Context, kind string) ([]sessions.AgentLimitOverride, error) {
	return c.all.(sessions.LimitStore).AgentLimits(ctx, kind)
}

func mustCreate(t *testing.T, h *sessions.Handles, principal, kind string, opts ...sessions.IssueOption) sessions.Handle {
	t.Helper()
	hd, err := h.Create(context.Background(), principal, kind, opts...)
	if err != nil {
		t.Fatalf("create %s for %s: %v", kind, principal, err)
	}
	return hd
}

// runHandles checks state handles ([sessions.Handles]) on the store.
func runHandles(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	ctx := context.Background()

	t.Run("CreateResolveListDestroy", func(t *testing.T) {
		h, m, clock, _ := newHandles(t, newStore(t))
		b := mustCreate(t, h, agent, "basket", sessions.WithMetadata(map[string]string{"items": "3"}))
		if len(b.Handle) > sessions.MaxHandleLength || len(b.Handle) > 48 || !strings.HasPrefix(b.Handle, "basket_") {
			t.Fatalf("handle %q: want at most 48 characters, prefixed basket_", b.Handle)
		}
		for _, c := range b.Handle {
			if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", c) {
				t.Fatalf("handle %q is not URL-safe", b.Handle)
			}
		}
		got, err := h.Resolve(ctx, agent, "basket", b.Handle)
		if err != nil || got.Handle != b.Handle || got.Principal != agent || got.Metadata["items"] != "3" || !got.ExpiresAt.Equal(b.ExpiresAt) {
			t.Fatalf("resolve = %+v, %v; created %+v", got, err, b)
		}
		clock.Advance(time.Second) // issue times are whole seconds
		b2 := mustCreate(t, h, agent, "basket")
		list, err := h.List(ctx, agent, "basket")
		if err != nil || len(list) != 2 || list[0].Handle != b.Handle || list[1].Handle != b2.Handle {
			t.Fatalf("list = %+v, %v; want both, oldest first", list, err)
		}
		// Handles are not agent sessions: neither counts against the other.
		MustIssue(t, m, agent)
		if list, _ := m.List(ctx, agent); len(list) != 1 {
			t.Fatalf("agent sessions list %d entries, want the 1 session only", len(list))
		}
		if ok, err := h.Destroy(ctx, agent, "basket", b.Handle); err != nil || !ok {
			t.Fatalf("destroy = %v, %v", ok, err)
		}
		if _, err := h.Resolve(ctx, agent, "basket", b.Handle); !errors.Is(err, sessions.ErrUnknownHandle) {
			t.Fatalf("resolve after destroy: %v, want ErrUnknownHandle", err)
		}
		if ok, err := h.Destroy(ctx, agent, "basket", b.Handle); err != nil || ok {
			t.Fatalf("second destroy = %v, %v; want false", ok, err)
		}
	})

	t.Run("NotDiscoverableByAnotherPrincipal", func(t *testing.T) {
		h, _, _, cs := newHandles(t, newStore(t))
		b := mustCreate(t, h, agent, "basket")
		before := cs.Calls()
		// The same handle with its MAC's last character changed.
		last := "A"
		if strings.HasSuffix(b.Handle, "A") {
			last = "B"
		}
		forged := b.Handle[:len(b.Handle)-1] + last
		for name, call := range map[string]func() error{
			"another principal": func() error { _, err := h.Resolve(ctx, other, "basket", b.Handle); return err },
			"another kind":      func() error { _, err := h.Resolve(ctx, agent, "browser", b.Handle); return err },
			"forged MAC":        func() error { _, err := h.Resolve(ctx, agent, "basket", forged); return err },
			"truncated":         func() error { _, err := h.Resolve(ctx, agent, "basket", b.Handle[:20]); return err },
			"garbage":           func() error { _, err := h.Resolve(ctx, agent, "basket", "basket_!!!!"); return err },
			"empty":             func() error { _, err := h.Resolve(ctx, agent, "basket", ""); return err },
		} {
			if err := call(); !errors.Is(err, sessions.ErrUnknownHandle) {
				t.Errorf("%s: %v, want ErrUnknownHandle like an unknown handle", name, err)
			}
		}
		if n := cs.Calls() - before; n != 0 {
			t.Fatalf("%d store calls for handles that could not be the caller's; want none", n)
		}
		if ok, err := h.Destroy(ctx, other, "basket", b.Handle); err != nil || ok {
			t.Fatalf("another principal destroyed it: %v, %v", ok, err)
		}
		if list, err := h.List(ctx, other, "basket"); err != nil || len(list) != 0 {
			t.Fatalf("another principal lists %+v, %v", list, err)
		}
		if _, err := h.Resolve(ctx, agent, "basket", b.Handle); err != nil {
			t.Fatalf("the owner's handle after the others tried: %v", err)
		}
		if _, err := h.Create(ctx, agent, "sandbox"); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Fatalf("a kind not configured: %v, want ErrInvalidConfig", err)
		}
	})

	t.Run("LimitsPerPrincipalAndKind", func(t *testing.T) {
		h, _, _, _ := newHandles(t, newStore(t))
		mustCreate(t, h, agent, "basket")
		mustCreate(t, h, agent, "basket")
		var le *sessions.LimitError
		if _, err := h.Create(ctx, agent, "basket"); !errors.As(err, &le) || le.Limit != 2 || le.Kind != "basket" {
			t.Fatalf("third basket: %v, want LimitError{Kind: basket, Limit: 2}", err)
		}
		mustCreate(t, h, other, "basket") // another principal has its own limit
		first := mustCreate(t, h, agent, "browser")
		second := mustCreate(t, h, agent, "browser") // evict-oldest, limit 1: whichever is older goes
		if !reflect.DeepEqual(second.Evicted, []string{first.ID}) {
			t.Fatalf("evicted %v, want the first browser's ID %s", second.Evicted, first.ID)
		}
		if _, err := h.Resolve(ctx, agent, "browser", first.Handle); !errors.Is(err, sessions.ErrUnknownHandle) {
			t.Fatalf("evicted browser: %v", err)
		}
		if err := h.SetLimit(ctx, agent, "basket", 3); err != nil {
			t.Fatal(err)
		}
		if l, err := h.Limit(ctx, agent, "basket"); err != nil || l != (sessions.AgentLimit{Limit: 3, Override: true}) {
			t.Fatalf("limit = %+v, %v", l, err)
		}
		mustCreate(t, h, agent, "basket")
		if l, _ := h.Limit(ctx, other, "basket"); l != (sessions.AgentLimit{Limit: 2}) {
			t.Fatalf("other principal's limit = %+v, want the kind's 2", l)
		}
		if found, err := h.DeleteLimit(ctx, agent, "basket"); err != nil || !found {
			t.Fatalf("delete limit = %v, %v", found, err)
		}
		if err := h.SetLimit(ctx, agent, "basket", 0); !errors.Is(err, sessions.ErrInvalidLimit) {
			t.Fatalf("limit 0: %v", err)
		}
	})

	t.Run("DestroyOthers", func(t *testing.T) {
		h, m, _, _ := newHandles(t, newStore(t))
		h.SetLimit(ctx, agent, "basket", 5)
		keep := mustCreate(t, h, agent, "basket")
		gone := []sessions.Handle{mustCreate(t, h, agent, "basket"), mustCreate(t, h, agent, "basket")}
		browser := mustCreate(t, h, agent, "browser")
		theirs := mustCreate(t, h, other, "basket")
		session := MustIssue(t, m, agent)
		if _, err := h.DestroyOthers(ctx, other, "basket", keep.Handle); !errors.Is(err, sessions.ErrUnknownHandle) {
			t.Fatalf("another principal with my handle: %v, want ErrUnknownHandle", err)
		}
		n, err := h.DestroyOthers(ctx, agent, "basket", keep.Handle)
		if err != nil || n != 2 {
			t.Fatalf("DestroyOthers = %d, %v; want 2", n, err)
		}
		if _, err := h.Resolve(ctx, agent, "basket", keep.Handle); err != nil {
			t.Fatalf("the kept handle: %v", err)
		}
		for _, g := range gone {
			if _, err := h.Resolve(ctx, agent, "basket", g.Handle); !errors.Is(err, sessions.ErrUnknownHandle) {
				t.Fatalf("another basket survived: %v", err)
			}
		}
		for name, err := range map[string]error{
			"browser":           func() error { _, err := h.Resolve(ctx, agent, "browser", browser.Handle); return err }(),
			"other's basket":    func() error { _, err := h.Resolve(ctx, other, "basket", theirs.Handle); return err }(),
			"the agent's token": func() error { _, err := m.Authenticate(ctx, session.Token, agent); return err }(),
		} {
			if err != nil {
				t.Fatalf("%s was touched: %v", name, err)
			}
		}
	})

	t.Run("ExpiryAndRefresh", func(t *testing.T) {
		h, _, clock, _ := newHandles(t, newStore(t))
		b := mustCreate(t, h, agent, "browser") // TTL 1 min, MaxLifetime 150 s
		clock.Advance(50 * time.Second)
		r, err := h.Refresh(ctx, agent, "browser", b.Handle)
		if err != nil || r.Handle != b.Handle || !r.ExpiresAt.Equal(b.CreatedAt.Add(110*time.Second)) {
			t.Fatalf("refresh = %+v, %v; want the same handle expiring 110 s after creation", r, err)
		}
		clock.Advance(50 * time.Second) // past the first expiry, before the refreshed one
		if _, err := h.Resolve(ctx, agent, "browser", b.Handle); err != nil {
			t.Fatalf("refreshed handle: %v", err)
		}
		r, err = h.Refresh(ctx, agent, "browser", b.Handle)
		if err != nil || !r.ExpiresAt.Equal(b.CreatedAt.Add(150*time.Second)) {
			t.Fatalf("capped refresh = %+v, %v", r, err)
		}
		if _, err := h.Refresh(ctx, agent, "browser", b.Handle); !errors.Is(err, sessions.ErrLifetimeExceeded) {
			t.Fatalf("refresh at the cap: %v", err)
		}
		clock.Advance(60 * time.Second)
		if _, err := h.Resolve(ctx, agent, "browser", b.Handle); !errors.Is(err, sessions.ErrSessionExpired) {
			t.Fatalf("expired handle: %v, want ErrSessionExpired", err)
		}
		if list, _ := h.List(ctx, agent, "browser"); len(list) != 0 {
			t.Fatalf("expired handle listed: %+v", list)
		}
		mustCreate(t, h, agent, "browser") // the expired one frees its slot
	})

	t.Run("SecretRotation", func(t *testing.T) {
		store := newStore(t)
		clock := NewClock(1_700_000_000)
		oldM := NewManager(t, store, clock, nil)
		oldH, err := sessions.NewHandles(oldM, handleKinds...)
		if err != nil {
			t.Fatal(err)
		}
		b := mustCreate(t, oldH, agent, "basket")
		newM := NewManager(t, store, clock, func(c *sessions.Config) {
			c.Secret = []byte("the-next-secret-0123456789abcdef!")
			c.VerifySecrets = [][]byte{[]byte(Secret)}
		})
		newH, err := sessions.NewHandles(newM, handleKinds...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := newH.Resolve(ctx, agent, "basket", b.Handle); err != nil {
			t.Fatalf("a handle minted under the previous secret: %v", err)
		}
		if list, err := newH.List(ctx, agent, "basket"); err != nil || len(list) != 1 || list[0].Handle != b.Handle {
			t.Fatalf("list after rotation = %+v, %v; want the handle as minted", list, err)
		}
	})
}
