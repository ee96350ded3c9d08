package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Many callers looking sessions up at once through one batch slot: their
// lookups share round trips, and each caller still gets its own answer,
// found or not.
func TestLookupsBatchConcurrentCallers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store := oneLookupSlotStore(t, d)
	m := newManager(t, store, newClock(1_700_000_000), func(c *sessions.Config) { c.Limit = 100 })
	var issued []sessions.Issued
	for i := range 40 {
		issued = append(issued, mustIssue(t, m, fmt.Sprintf("did:agentmesh:lookup-%d", i%4)))
	}
	before := store.Stats()
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			<-start
			if i%4 == 3 {
				id := fmt.Sprintf("missing-%d", i)
				if s, found, err := store.Get(ctx, id); err != nil || found {
					t.Errorf("Get(%s) = %+v, %v, %v; want not found", id, s, found, err)
				}
				return
			}
			want := issued[i%len(issued)]
			got, err := m.Authenticate(ctx, want.Token, want.Session.AgentID)
			if err != nil || got.ID != want.Session.ID || got.TokenDigest != want.Session.TokenDigest {
				t.Errorf("Authenticate(%s) = %+v, %v", want.Session.ID, got, err)
			}
		})
	}
	close(start)
	wg.Wait()
	after := store.Stats()
	lookups, trips := after.Lookups-before.Lookups, after.LookupTrips-before.LookupTrips
	t.Logf("200 concurrent lookups in %d round trips", trips)
	if lookups != 200 || trips >= lookups {
		t.Errorf("%d lookups in %d round trips: want 200, sharing round trips", lookups, trips)
	}
}

// A caller whose deadline passes while its lookup waits behind a blocked
// one gets ErrStore wrapping the deadline at once; the blocked lookup and
// later ones still get their answers.
func TestLookupCallerGivesUpWhileQueued(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store := oneLookupSlotStore(t, d)
	m := newManager(t, store, newClock(1_700_000_000), nil)
	iss := mustIssue(t, m, agent)
	tx, err := d.Conn(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE agent_sessions IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, found, err := store.Get(ctx, iss.Session.ID)
		if err == nil && !found {
			err = errors.New("not found")
		}
		blocked <- err
	}()
	// Let the first lookup take the only slot and block on the lock.
	for deadline := time.Now().Add(5 * time.Second); store.Stats().LookupTrips == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the first lookup never went out")
		}
		time.Sleep(time.Millisecond)
	}
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = store.Get(dctx, iss.Session.ID)
	if !errors.Is(err, sessions.ErrStore) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued lookup past its deadline: %v, want ErrStore wrapping DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("returned after %v, long past the 100ms deadline", waited)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; err != nil {
		t.Fatalf("blocked lookup: %v", err)
	}
	if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil {
		t.Fatalf("lookup after the lock: %v", err)
	}
}

// oneLookupSlotStore is a store on d whose lookups share one batch slot,
// so concurrent ones must queue and batch.
func oneLookupSlotStore(t *testing.T, d *testdb.DB) *pgxstore.Store {
	t.Helper()
	store, err := pgxstore.New(d.Pool(t), &pgxstore.Config{LookupBatches: 1})
	if err != nil {
		t.Fatal(err)
	}
	return store
}
