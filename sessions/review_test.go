package sessions_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// kindlessStore is a store written before kinds: Get returns sessions
// with Kind "", which stores may do ("" means KindSession).
type kindlessStore struct{ *sessions.MemoryStore }

func (k kindlessStore) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	s, ok, err := k.MemoryStore.Get(ctx, id)
	s.Kind = ""
	return s, ok, err
}

func TestKindlessStoreAuthenticates(t *testing.T) {
	t.Parallel()
	m := newManager(t, kindlessStore{sessions.NewMemoryStore()}, newClock(1_700_000_000), nil)
	iss := mustIssue(t, m, agent)
	if _, err := m.Authenticate(context.Background(), iss.Token, agent); err != nil {
		t.Fatalf("a store returning Kind \"\" (an agent session): %v", err)
	}
}

// failingDeletes fails DeleteExpired, as a store that just went down.
type failingDeletes struct{ *sessions.MemoryStore }

func (failingDeletes) DeleteExpired(context.Context, string, string, time.Time) error {
	return errors.New("db down")
}

// A token the signed payload proves expired is answered as expired (401,
// issue a new one), not as a store failure (503, retry), even when the
// cleanup delete fails; the row stays for the pruner.
func TestExpiredTokenIsExpiredWhenTheCleanupFails(t *testing.T) {
	t.Parallel()
	clock := newClock(1_700_000_000)
	store := failingDeletes{sessions.NewMemoryStore()}
	m := newManager(t, store, clock, nil)
	iss := mustIssue(t, m, agent)
	h, err := sessions.NewHandles(m, sessions.HandleKind{Name: "basket", TTL: time.Minute, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.Create(context.Background(), agent, "basket")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	if _, err := m.Authenticate(context.Background(), iss.Token, agent); !errors.Is(err, sessions.ErrSessionExpired) || errors.Is(err, sessions.ErrStore) {
		t.Fatalf("expired token, cleanup failing: %v; want ErrSessionExpired and not ErrStore", err)
	}
	if _, err := h.Resolve(context.Background(), agent, "basket", b.Handle); !errors.Is(err, sessions.ErrSessionExpired) || errors.Is(err, sessions.ErrStore) {
		t.Fatalf("expired handle, cleanup failing: %v; want ErrSessionExpired and not ErrStore", err)
	}
}

// Handle.Evicted names the evicted handles by ID, which is right whatever
// key minted them: during a rotation the handle string could not be
// rebuilt with the current key.
func TestEvictedHandlesAcrossKeyRotation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := sessions.NewMemoryStore()
	clock := newClock(1_700_000_000)
	kind := sessions.HandleKind{Name: "browser", TTL: time.Hour, Limit: 1, Policy: sessions.PolicyEvictOldest}
	oldH, err := sessions.NewHandles(newManager(t, store, clock, nil), kind)
	if err != nil {
		t.Fatal(err)
	}
	first, err := oldH.Create(ctx, agent, "browser")
	if err != nil {
		t.Fatal(err)
	}
	newH, err := sessions.NewHandles(newManager(t, store, clock, func(c *sessions.Config) {
		c.Secret, c.VerifySecrets = []byte("the-next-secret-0123456789abcdef!"), [][]byte{[]byte(secret)}
	}), kind)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	second, err := newH.Create(ctx, agent, "browser")
	if err != nil || len(second.Evicted) != 1 || second.Evicted[0] != first.ID {
		t.Fatalf("evicted %v, %v; want the first handle's ID %s", second.Evicted, err, first.ID)
	}
}
