package pgxstore_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// handleInstance is one instance with real-time handles: its own pool,
// store, manager and Handles, on a schema shared with the others.
type handleInstance struct {
	store   *pgxstore.Store
	handles *sessions.Handles
}

func handleInstances(t testing.TB, d *testdb.DB, n int, kinds ...sessions.HandleKind) []handleInstance {
	t.Helper()
	var out []handleInstance
	for range n {
		store, err := pgxstore.New(d.Pool(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		h, err := sessions.NewHandles(m, kinds...)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, handleInstance{store, h})
	}
	return out
}

// runEvents runs RunHandleEvents on store until the test ends and returns
// the events as they arrive; it waits for the first Resync.
func runEvents(t testing.TB, store *pgxstore.Store, kinds ...string) <-chan pgxstore.HandleEvent {
	t.Helper()
	events := make(chan pgxstore.HandleEvent, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		if err := store.RunHandleEvents(ctx, pgxstore.HandleEventsConfig{Kinds: kinds, OnEvent: func(e pgxstore.HandleEvent) { events <- e }}); err != nil {
			t.Errorf("RunHandleEvents: %v", err)
		}
	})
	if e := nextEvent(t, events); !e.Resync {
		t.Fatalf("first event %+v, want a Resync", e)
	}
	return events
}

func nextEvent(t testing.TB, events <-chan pgxstore.HandleEvent) pgxstore.HandleEvent {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(15 * time.Second):
		t.Fatal("no handle event within 15 s")
	}
	return pgxstore.HandleEvent{}
}

// The instance holding a handle's resource learns, from another
// instance's destroy and eviction and from the pruner's expiry, that the
// handle is gone; a lost listener connection is followed by a Resync;
// events of other kinds are filtered out.
func TestHandleEventsAcrossInstances(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	in := handleInstances(t, d, 2,
		sessions.HandleKind{Name: "browser", TTL: time.Hour, Limit: 1, Policy: sessions.PolicyEvictOldest},
		sessions.HandleKind{Name: "brief", TTL: time.Second, Limit: 5},
		sessions.HandleKind{Name: "basket", TTL: time.Hour, Limit: 5})
	a, b := in[0], in[1]
	events := runEvents(t, a.store, "browser", "brief")

	// Channels are database-wide: tests running at the same time in other
	// schemas of the test database send events (and, by TRUNCATE,
	// Resyncs) too. So each check waits for the event of its own handle,
	// skipping Resyncs (always allowed: "events may have been lost") and
	// events of IDs this test never made (random, so never ours).
	never := map[string]bool{} // handles of kinds not subscribed to
	want := func(what, kind, id, reason string) {
		t.Helper()
		for {
			e := nextEvent(t, events)
			if never[e.ID] {
				t.Fatalf("%s: event %+v of a kind not subscribed to", what, e)
			}
			if e.Resync || e.ID != id {
				continue
			}
			if e.Kind != kind || e.Reason != reason {
				t.Fatalf("%s: event %+v, want {%s %s %s}", what, e, kind, id, reason)
			}
			return
		}
	}
	// Destroyed on B, heard on A.
	h1, err := a.handles.Create(ctx, agent, "browser")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := b.handles.Destroy(ctx, agent, "browser", h1.Handle); err != nil || !ok {
		t.Fatalf("destroy on B: %v %v", ok, err)
	}
	want("destroy on another instance", "browser", h1.ID, "destroyed")

	// Evicted to make room on B, heard on A; a basket (not subscribed) is not.
	h2, _ := a.handles.Create(ctx, agent, "browser")
	basket, _ := a.handles.Create(ctx, agent, "basket")
	never[basket.ID] = true
	if ok, err := b.handles.Destroy(ctx, agent, "basket", basket.Handle); err != nil || !ok {
		t.Fatal(ok, err)
	}
	h3, err := b.handles.Create(ctx, agent, "browser")
	if err != nil || !slices.Equal(h3.Evicted, []string{h2.ID}) {
		t.Fatalf("evict-oldest: %+v %v", h3, err)
	}
	want("eviction", "browser", h2.ID, "destroyed")

	// Expired, and deleted by a pruner on B within its interval.
	brief, err := a.handles.Create(ctx, agent, "brief")
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = b.store.RunPruner(pctx, pgxstore.PruneConfig{Interval: 200 * time.Millisecond, LockID: lockID()})
	})
	want("expiry", "brief", brief.ID, "expired")
	// Logged, not asserted: a pass of the pruner follows expiry within
	// one interval (200 ms) on an idle machine.
	t.Logf("expiry → event: %v after the handle expired (pruner interval 200ms)", time.Since(brief.ExpiresAt).Round(time.Millisecond))
	stop()
	wg.Wait()

	// The listener connection dies: a Resync says events may be lost.
	conn := d.Conn(t)
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", int32(pgxstore.HandleEventsListenerPID(a.store))); err != nil {
		t.Fatal(err)
	}
	for e := nextEvent(t, events); !e.Resync; e = nextEvent(t, events) {
		if slices.Contains([]string{h1.ID, h2.ID, h3.ID, brief.ID}, e.ID) {
			t.Fatalf("after the listener was terminated: %+v, want a Resync", e)
		}
	}
	h4, _ := a.handles.Create(ctx, other, "brief")
	if ok, err := b.handles.Destroy(ctx, other, "brief", h4.Handle); err != nil || !ok {
		t.Fatal(ok, err)
	}
	want("after reconnecting", "brief", h4.ID, "destroyed")
}

// Destroy on one instance → the event on another: the latency on this
// machine, as p50/p99 over b.N destroys (ns_p50, ns_p99 metrics).
func BenchmarkHandleEventLatency(b *testing.B) {
	ctx := context.Background()
	d := testdb.New(b)
	in := handleInstances(b, d, 2, sessions.HandleKind{Name: "browser", TTL: time.Hour, Limit: 1 << 20})
	events := runEvents(b, in[0].store)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		h, err := in[0].handles.Create(ctx, agent, "browser")
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := in[1].handles.Destroy(ctx, agent, "browser", h.Handle); err != nil {
			b.Fatal(err)
		}
		for e := nextEvent(b, events); e.ID != h.ID; e = nextEvent(b, events) {
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "ns_p50")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Nanoseconds()), "ns_p99")
}
