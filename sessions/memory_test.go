package sessions_test

import (
	"context"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

func TestMemoryStorePruneExpired(t *testing.T) {
	t.Parallel()
	store := sessions.NewMemoryStore()
	now := time.Unix(1_700_000_000, 0)
	seed(t, store, 9, 4, now)
	if n := store.PruneExpired(now); n != 9 {
		t.Fatalf("pruned %d, want 9", n)
	}
	if n := store.PruneExpired(now); n != 0 {
		t.Fatalf("second prune removed %d", n)
	}
	if _, found, _ := store.Get(context.Background(), "seed-12"); !found {
		t.Fatal("live session pruned")
	}
}
