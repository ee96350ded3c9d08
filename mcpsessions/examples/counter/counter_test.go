package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// TestMain stops the container, if testdb started one.
func TestMain(m *testing.M) { testdb.Main(m) }

var secret = []byte("counter-example-test-secret-0123456789")

// instance is one copy of the example server: its own pool and store on
// the shared schema, its handle events running until the test ends.
type instance struct {
	name  string
	store *pgxstore.Store
	srv   *httptest.Server
}

// startInstance starts a copy and waits for its events listener's first
// Resync (so it is listening, and has reconciled).
func startInstance(t *testing.T, db *testdb.DB, name string, kind sessions.HandleKind) *instance {
	t.Helper()
	pool := db.Pool(t)
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h, counters, err := newInstance(ctx, pool, store, secret, kind, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	synced := make(chan struct{})
	var once sync.Once
	onEvent := counters.OnEvent(ctx)
	done := make(chan error, 1)
	go func() {
		done <- store.RunHandleEvents(ctx, pgxstore.HandleEventsConfig{Kinds: []string{Kind}, OnEvent: func(ev pgxstore.HandleEvent) {
			onEvent(ev)
			if ev.Resync {
				once.Do(func() { close(synced) })
			}
		}})
	}()
	// Registered after the pool's cleanup, so it runs before it.
	t.Cleanup(func() {
		srv.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: RunHandleEvents: %v", name, err)
		}
	})
	select {
	case <-synced:
	case err := <-done:
		t.Fatalf("%s: RunHandleEvents: %v", name, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no Resync within 10s", name)
	}
	return &instance{name: name, store: store, srv: srv}
}

// roundRobin is a plain load balancer: each request goes to the next
// instance, whatever it is. It records who served which tools/call.
type roundRobin struct {
	backends []*instance
	next     atomic.Uint64

	mu     sync.Mutex
	served []string // instance name per tools/call
}

func (rr *roundRobin) handler(t *testing.T) http.Handler {
	targets := make([]*url.URL, len(rr.backends))
	for i, b := range rr.backends {
		u, err := url.Parse(b.srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		targets[i] = u
	}
	return &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		i := int((rr.next.Add(1) - 1) % uint64(len(targets)))
		pr.SetURL(targets[i])
		if pr.In.Header.Get("Mcp-Method") == "tools/call" {
			rr.mu.Lock()
			rr.served = append(rr.served, rr.backends[i].name)
			rr.mu.Unlock()
		}
	}}
}

func (rr *roundRobin) servedBy() map[string]int {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	n := map[string]int{}
	for _, s := range rr.served {
		n[s]++
	}
	return n
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

type env struct {
	db     *testdb.DB
	a, b   *instance
	rr     *roundRobin
	proxy  *httptest.Server
	issuer *sessions.Manager
	rows   *pgxpool.Pool
}

func newEnv(t *testing.T, kind sessions.HandleKind, beforeEvents func(*testdb.DB)) *env {
	t.Helper()
	db := testdb.New(t)
	e := &env{db: db, rows: db.Pool(t)}
	if beforeEvents != nil {
		// The table first, so the hook can put rows in it.
		h := mustHandles(t, e.rows, kind)
		if _, err := NewCounters(context.Background(), e.rows, h, nil); err != nil {
			t.Fatal(err)
		}
		beforeEvents(db)
	}
	e.a = startInstance(t, db, "A", kind)
	e.b = startInstance(t, db, "B", kind)
	e.rr = &roundRobin{backends: []*instance{e.a, e.b}}
	e.proxy = httptest.NewServer(e.rr.handler(t))
	t.Cleanup(e.proxy.Close)
	// The tokens' issuer: any manager with the secret on the store, as the
	// CLI or another service would be.
	store, err := pgxstore.New(e.rows, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.issuer, err = sessions.New(store, sessions.Config{Secret: secret, TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func mustHandles(t *testing.T, pool *pgxpool.Pool, kind sessions.HandleKind) *sessions.Handles {
	t.Helper()
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: secret, TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	h, err := sessions.NewHandles(m, kind)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// client connects a go-sdk client, through the load balancer, with a
// token issued to agent; it speaks 2026-07-28.
func (e *env) client(t *testing.T, agent string) *mcp.ClientSession {
	t.Helper()
	iss, err := e.issuer.Issue(context.Background(), agent)
	if err != nil {
		t.Fatal(err)
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "counter-test", Version: "1.0.0"}, nil)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{
		Endpoint: e.proxy.URL + "/mcp", HTTPClient: &http.Client{Transport: bearer{iss.Token}}, MaxRetries: -1, DisableStandaloneSSE: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	if pv := cs.InitializeResult().ProtocolVersion; pv != "2026-07-28" {
		t.Fatalf("negotiated %q, want 2026-07-28", pv)
	}
	return cs
}

// outcome is a tool call's result as the client sees it.
type outcome struct {
	isError bool
	text    string
	out     map[string]any // structured content
}

func call(t *testing.T, cs *mcp.ClientSession, tool string, args map[string]any) outcome {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: tool, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	o := outcome{isError: res.IsError}
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			o.text += tc.Text
		}
	}
	if res.StructuredContent != nil {
		b, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(b, &o.out); err != nil {
			t.Fatalf("%s: structured content %s: %v", tool, b, err)
		}
	}
	return o
}

func mustOK(t *testing.T, o outcome, tool string) map[string]any {
	t.Helper()
	if o.isError {
		t.Fatalf("%s failed: %s", tool, o.text)
	}
	return o.out
}

func value(t *testing.T, cs *mcp.ClientSession, tool, id string) int64 {
	t.Helper()
	out := mustOK(t, call(t, cs, tool, map[string]any{"counter_id": id}), tool)
	v, ok := out["value"].(float64)
	if !ok {
		t.Fatalf("%s: no value in %v", tool, out)
	}
	return int64(v)
}

func (e *env) rowExists(t *testing.T, handleID string) bool {
	t.Helper()
	var n int
	if err := e.rows.QueryRow(context.Background(), `SELECT count(*) FROM example_counters WHERE handle_id = $1`, handleID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// waitRowGone waits (up to 15s: events are asynchronous) until the row
// is deleted.
func (e *env) waitRowGone(t *testing.T, handleID string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for e.rowExists(t, handleID) {
		if time.Now().After(deadline) {
			t.Fatalf("the row of %s is still there after 15s", handleID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handleID is the ID part of a counter's handle (what events name): the
// handle without its 12-character MAC.
func handleID(handle string) string { return handle[:len(handle)-12] }

var counterKind = sessions.HandleKind{Name: Kind, TTL: time.Hour, Limit: 10}

// Two instances behind a round-robin load balancer: a counter created
// through one is incremented and read through both, in turn, with the
// right values; another agent can neither see, read, increment nor
// destroy it; destroying it removes its value through the handle event.
func TestCounterTwoInstancesBehindALoadBalancer(t *testing.T) {
	e := newEnv(t, counterKind, nil)
	alice := e.client(t, "agent-alice")

	created := mustOK(t, call(t, alice, "create_counter", nil), "create_counter")
	id, _ := created["counter_id"].(string)
	if !strings.HasPrefix(id, Kind+"_") || created["value"] != float64(0) {
		t.Fatalf("create_counter = %v", created)
	}
	if !e.rowExists(t, handleID(id)) {
		t.Fatal("no row for the new counter")
	}
	for want := int64(1); want <= 6; want++ {
		if got := value(t, alice, "increment", id); got != want {
			t.Fatalf("increment %d = %d", want, got)
		}
	}
	if got := value(t, alice, "read", id); got != 6 {
		t.Fatalf("read = %d, want 6", got)
	}
	if n := e.rr.servedBy(); n["A"] < 3 || n["B"] < 3 {
		t.Fatalf("tools/call served %v, want both instances in turn", n)
	}

	// Another agent: sees none of Alice's counters; reading, incrementing
	// or destroying hers is answered exactly as a made-up ID is.
	bob := e.client(t, "agent-bob")
	if out := mustOK(t, call(t, bob, "list_counters", nil), "list_counters"); len(out["counters"].([]any)) != 0 {
		t.Fatalf("bob lists %v", out)
	}
	madeUp := "counter_AAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	for _, tool := range []string{"read", "increment", "destroy_counter"} {
		theirs := call(t, bob, tool, map[string]any{"counter_id": id})
		forged := call(t, bob, tool, map[string]any{"counter_id": madeUp})
		if theirs.isError != forged.isError || theirs.text != forged.text {
			t.Fatalf("%s of Alice's counter = %+v, of a made-up one %+v: must be the same", tool, theirs, forged)
		}
		if tool == "destroy_counter" {
			if theirs.isError || theirs.out["destroyed"] != false {
				t.Fatalf("bob's destroy = %+v, want destroyed false", theirs)
			}
		} else if !theirs.isError || !strings.HasPrefix(theirs.text, sessions.CodeUnknownHandle+":") {
			t.Fatalf("bob's %s = %+v, want an unknown_handle tool error", tool, theirs)
		}
	}
	bobs := mustOK(t, call(t, bob, "create_counter", nil), "create_counter")["counter_id"].(string)
	if got := value(t, alice, "read", id); got != 6 {
		t.Fatalf("after bob's tries, read = %d, want 6", got)
	}
	list := mustOK(t, call(t, alice, "list_counters", nil), "list_counters")["counters"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["id"] != id {
		t.Fatalf("alice lists %v, want only %s", list, id)
	}

	// Alice destroys hers: the handle event deletes the row (on whichever
	// instance hears it first); Bob's is untouched.
	if out := mustOK(t, call(t, alice, "destroy_counter", map[string]any{"counter_id": id}), "destroy_counter"); out["destroyed"] != true {
		t.Fatalf("destroy_counter = %v", out)
	}
	e.waitRowGone(t, handleID(id))
	if o := call(t, alice, "read", map[string]any{"counter_id": id}); !o.isError || !strings.HasPrefix(o.text, sessions.CodeUnknownHandle+":") {
		t.Fatalf("read after destroy = %+v, want unknown_handle", o)
	}
	if !e.rowExists(t, handleID(bobs)) || value(t, bob, "increment", bobs) != 1 {
		t.Fatal("bob's counter was affected by alice's destroy")
	}
}

// A counter whose handle expires loses its row when the pruner deletes
// the handle: the "expired" event.
func TestCounterExpiryRemovesTheValue(t *testing.T) {
	// Two seconds, not one: expiry is in whole seconds, so a 1s handle
	// is already expired if the clock crosses a second between its
	// creation and the Resolve that create_counter ends with (seen in CI).
	e := newEnv(t, sessions.HandleKind{Name: Kind, TTL: 2 * time.Second, Limit: 10}, nil)
	alice := e.client(t, "agent-alice")
	id := mustOK(t, call(t, alice, "create_counter", nil), "create_counter")["counter_id"].(string)
	if got := value(t, alice, "increment", id); got != 1 {
		t.Fatalf("increment = %d", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.a.store.RunPruner(ctx, pgxstore.PruneConfig{Interval: 200 * time.Millisecond}) }()
	t.Cleanup(func() { cancel(); <-done })
	e.waitRowGone(t, handleID(id))
}

// Rows whose handles went while no instance listened (here: a row of a
// handle that never existed) are deleted by the Resync every listener
// starts with.
func TestCounterResyncRemovesOrphans(t *testing.T) {
	e := newEnv(t, counterKind, func(db *testdb.DB) {
		p := db.Pool(t)
		if _, err := p.Exec(context.Background(),
			`INSERT INTO example_counters (handle_id, principal, value, created_at) VALUES ('counter_orphanorphanorph', 'agent-gone', 41, now() - interval '1 minute')`); err != nil {
			t.Fatal(err)
		}
	})
	// startInstance waited for the first Resync of both.
	if e.rowExists(t, "counter_orphanorphanorph") {
		t.Fatal("the orphan row survived the Resync")
	}
	// Live counters survive a Resync.
	alice := e.client(t, "agent-alice")
	id := mustOK(t, call(t, alice, "create_counter", nil), "create_counter")["counter_id"].(string)
	h := mustHandles(t, e.rows, counterKind)
	c, err := NewCounters(context.Background(), e.rows, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !e.rowExists(t, handleID(id)) || value(t, alice, "read", id) != 0 {
		t.Fatal("a live counter lost its row in a Resync")
	}
}
