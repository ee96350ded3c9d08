package mcpsessions_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/mcpsessions"
	"github.com/agentsessions/agentsessions/sessions"
)

// End-to-end: real mcp-go servers and client over loopback HTTP, several
// instances sharing one PostgreSQL schema, no sticky sessions.

// wiring is how an instance puts the adapter into mcp-go.
type wiring int

const (
	// wiringFull is the documented setup: resolver, Middleware, the
	// RejectSessionlessInitialize hook, session-oriented protocol versions.
	wiringFull wiring = iota
	// wiringResolverOnly is the least that gives cross-instance sessions:
	// server.WithSessionIdManagerResolver and nothing else.
	wiringResolverOnly
	// wiringPlain is server.WithSessionIdManager: not recommended.
	wiringPlain
)

// mcpInstance is one MCP server instance: its own pool, manager, adapter,
// mcp-go server and loopback HTTP server.
type mcpInstance struct {
	name        string
	db          instance
	mcp         *server.StreamableHTTPServer
	srv         *httptest.Server
	initialized atomic.Int32 // initialize requests this instance handled
	rec         *recorder
}

func (in *mcpInstance) url() string { return in.srv.URL + "/mcp" }

func startInstance(t *testing.T, db *testDB, name string, cfg sessions.Config, w wiring) *mcpInstance {
	t.Helper()
	in := &mcpInstance{name: name, db: db.instance(t, cfg)}
	a, rec := newAdapter(t, in.db.mgr, mcpsessions.Options{AgentID: "mcp-e2e"})
	in.rec = rec

	hooks := &server.Hooks{}
	hooks.AddBeforeInitialize(func(context.Context, any, *mcp.InitializeRequest) { in.initialized.Add(1) })
	opts := []server.StreamableHTTPOption{server.WithSessionIdManagerResolver(a)}
	if w == wiringPlain {
		opts = []server.StreamableHTTPOption{server.WithSessionIdManager(a)}
	}
	if w == wiringFull {
		hooks.AddOnRequestInitialization(a.RejectSessionlessInitialize)
		opts = append(opts, server.WithStreamableHTTPProtocolVersions(mcp.LegacyProtocolVersions()...))
	}
	ms := server.NewMCPServer("mcpsessions-e2e", "1.0.0", server.WithToolCapabilities(false), server.WithHooks(hooks))
	ms.AddTool(mcp.NewTool("whoami", mcp.WithDescription("names the instance that served the call")),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(name), nil
		})
	in.mcp = server.NewStreamableHTTPServer(ms, opts...)
	var h http.Handler = in.mcp
	if w == wiringFull {
		h = a.Middleware(h)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", h)
	in.srv = httptest.NewServer(mux)
	t.Cleanup(in.srv.Close)
	return in
}

// router is a client transport that stands for a load balancer without
// sticky sessions: it sends each request to whichever instance the test
// chose last, and remembers who got what.
type router struct {
	target atomic.Pointer[mcpInstance]

	mu  sync.Mutex
	log []string // "instance METHOD"
}

func (rt *router) to(in *mcpInstance) { rt.target.Store(in) }

func (rt *router) RoundTrip(r *http.Request) (*http.Response, error) {
	in := rt.target.Load()
	u, err := url.Parse(in.url())
	if err != nil {
		return nil, err
	}
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = u.Scheme, u.Host, u.Host
	rt.mu.Lock()
	rt.log = append(rt.log, in.name+" "+r.Method)
	rt.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func newClient(t *testing.T, rt *router, opts ...client.ClientOption) *client.Client {
	t.Helper()
	tr, err := transport.NewStreamableHTTP("http://mcp.invalid/mcp", transport.WithHTTPBasicClient(&http.Client{Transport: rt}))
	if err != nil {
		t.Fatal(err)
	}
	c := client.NewClient(tr, opts...)
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func initialize(ctx context.Context, c *client.Client) error {
	var req mcp.InitializeRequest
	req.Params.ClientInfo = mcp.Implementation{Name: "mcpsessions-e2e", Version: "1.0.0"}
	_, err := c.Initialize(ctx, req)
	return err
}

func whoami(ctx context.Context, c *client.Client) (string, error) {
	var req mcp.CallToolRequest
	req.Params.Name = "whoami"
	res, err := c.CallTool(ctx, req)
	if err != nil {
		return "", err
	}
	if len(res.Content) != 1 {
		return "", errors.New("tool result has no single content")
	}
	text, ok := res.Content[0].(mcp.TextContent)
	if !ok {
		return "", errors.New("tool result is not text")
	}
	return text.Text, nil
}

// send makes one raw Streamable HTTP request to an instance and returns the
// status and body. body "" sends none.
func send(t testing.TB, method, u, sid, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if sid != "" {
		req.Header.Set(server.HeaderKeySessionID, sid)
	}
	req.Header.Set(mcp.HeaderProtocolVersion, mcp.LATEST_LEGACY_PROTOCOL_VERSION)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		// An open stream (a GET that got through): the status is the
		// answer, and the body would never end.
		return resp.StatusCode, "(event stream)"
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

const callWhoami = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"whoami"}}`

func TestEndToEndTwoInstancesNoStickySessions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		wiring wiring
		client []client.ClientOption
	}{
		// The default mcp-go client tries protocol 2026-07-28 first, which
		// has no sessions; the full wiring makes it fall back.
		{"full wiring, default client", wiringFull, nil},
		// Without the version restriction, the client must ask for a
		// session-oriented version itself.
		{"resolver only, legacy client", wiringResolverOnly,
			[]client.ClientOption{client.WithProtocolVersion(mcp.LATEST_LEGACY_PROTOCOL_VERSION)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := newDB(t)
			a := startInstance(t, db, "A", sessions.Config{}, tc.wiring)
			b := startInstance(t, db, "B", sessions.Config{}, tc.wiring)
			ctx := context.Background()

			// Initialise on A.
			rt := &router{}
			rt.to(a)
			c := newClient(t, rt, tc.client...)
			if err := initialize(ctx, c); err != nil {
				t.Fatalf("initialize on A: %v", err)
			}
			sid := c.GetSessionId()
			if sid == "" {
				t.Fatal("initialize on A gave no session id")
			}
			if s, err := b.db.mgr.Authenticate(ctx, sid, "mcp-e2e"); err != nil {
				t.Fatalf("the session id is not a stored session of agent mcp-e2e: %v", err)
			} else if n := db.rows(t); n != 1 {
				t.Fatalf("%d stored sessions after initialize, want 1 (%s)", n, s.ID)
			}

			// Call on B, which never saw the initialize.
			rt.to(b)
			got, err := whoami(ctx, c)
			if err != nil {
				t.Fatalf("tools/call on B: %v", err)
			}
			if got != "B" {
				t.Fatalf("tools/call served by %q, want B", got)
			}
			if a.initialized.Load() != 1 || b.initialized.Load() != 0 {
				t.Fatalf("initialize handled %d times on A and %d on B, want 1 and 0", a.initialized.Load(), b.initialized.Load())
			}
			// And back on A, to show it is no one-way trick.
			rt.to(a)
			if got, err := whoami(ctx, c); err != nil || got != "A" {
				t.Fatalf("tools/call on A = %q, %v", got, err)
			}

			// DELETE on A ends the session on B too.
			if code, body := send(t, http.MethodDelete, a.url(), sid, ""); code != http.StatusOK {
				t.Fatalf("DELETE on A: %d %s", code, body)
			}
			if code, body := send(t, http.MethodPost, b.url(), sid, callWhoami); code != http.StatusNotFound {
				t.Fatalf("tools/call on B after DELETE on A: %d %s, want 404", code, body)
			}
			rt.to(b)
			if _, err := whoami(ctx, c); !errors.Is(err, transport.ErrSessionTerminated) {
				t.Fatalf("client call on B after DELETE on A: %v, want transport.ErrSessionTerminated", err)
			}
			if code, _ := send(t, http.MethodPost, a.url(), sid, callWhoami); code != http.StatusNotFound {
				t.Fatalf("tools/call on A after its own DELETE: %d, want 404", code)
			}
			if tc.wiring == wiringFull {
				// mcp-go itself opens a GET stream for any session ID.
				if code, body := send(t, http.MethodGet, b.url(), sid, ""); code != http.StatusNotFound {
					t.Fatalf("GET on B after DELETE on A: %d %s, want 404", code, body)
				}
			}
			// A second DELETE, on B, succeeds: termination is idempotent.
			if code, body := send(t, http.MethodDelete, b.url(), sid, ""); code != http.StatusOK {
				t.Fatalf("second DELETE, on B: %d %s", code, body)
			}
			if n := db.rows(t); n != 0 {
				t.Fatalf("%d stored sessions after DELETE, want 0", n)
			}

			// The other way round, with the client's own DELETE (Close):
			// initialise on B, call on A, close through A, then B refuses.
			rt2 := &router{}
			rt2.to(b)
			c2 := newClient(t, rt2, tc.client...)
			if err := initialize(ctx, c2); err != nil {
				t.Fatalf("initialize on B: %v", err)
			}
			sid2 := c2.GetSessionId()
			rt2.to(a)
			if got, err := whoami(ctx, c2); err != nil || got != "A" {
				t.Fatalf("tools/call on A = %q, %v", got, err)
			}
			if err := c2.Close(); err != nil {
				t.Fatal(err)
			}
			if got := rt2.log[len(rt2.log)-1]; got != "A DELETE" {
				t.Fatalf("last request of the client was %q, want its DELETE on A", got)
			}
			if code, body := send(t, http.MethodPost, b.url(), sid2, callWhoami); code != http.StatusNotFound {
				t.Fatalf("tools/call on B after the client's DELETE on A: %d %s, want 404", code, body)
			}

			a.rec.expectNone(t)
			b.rec.expectNone(t)
		})
	}
}

// mcp-go terminates every session an instance knows when it shuts down.
// Through the resolver that leaves the shared sessions alone; through the
// plain SessionIdManager it revokes them for every instance.
func TestEndToEndShutdownOfOneInstance(t *testing.T) {
	for _, tc := range []struct {
		name        string
		wiring      wiring
		keepsOthers bool
	}{
		{"resolver", wiringResolverOnly, true},
		{"plain SessionIdManager", wiringPlain, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := newDB(t)
			a := startInstance(t, db, "A", sessions.Config{}, tc.wiring)
			b := startInstance(t, db, "B", sessions.Config{}, tc.wiring)
			ctx := context.Background()
			rt := &router{}
			rt.to(a)
			c := newClient(t, rt, client.WithProtocolVersion(mcp.LATEST_LEGACY_PROTOCOL_VERSION))
			if err := initialize(ctx, c); err != nil {
				t.Fatal(err)
			}
			if err := a.mcp.Shutdown(ctx); err != nil { // A was only a handler: CloseSessions
				t.Fatal(err)
			}
			rt.to(b)
			got, err := whoami(ctx, c)
			if tc.keepsOthers && (err != nil || got != "B") {
				t.Fatalf("tools/call on B after A shut down = %q, %v; want B", got, err)
			}
			if !tc.keepsOthers && !errors.Is(err, transport.ErrSessionTerminated) {
				t.Fatalf("tools/call on B after A shut down = %q, %v; want the session revoked", got, err)
			}
		})
	}
}

// A forged or foreign session ID gets 404 from every instance and costs no
// store call; behind the middleware a forged GET or DELETE is 404 too,
// while mcp-go alone answers a forged DELETE with 500.
func TestEndToEndForgedSessionIDs(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	full := startInstance(t, db, "full", sessions.Config{}, wiringFull)
	bare := startInstance(t, db, "bare", sessions.Config{}, wiringResolverOnly)
	genuine, err := full.db.mgr.Issue(context.Background(), "mcp-e2e")
	if err != nil {
		t.Fatal(err)
	}
	full.db.pool.Close() // any store call would now fail: 503 behind the middleware
	bare.db.pool.Close()
	for name, bad := range tampered(t, genuine.Token) {
		if name == "oversized" {
			continue // net/http refuses the header itself
		}
		for _, c := range []struct {
			in     *mcpInstance
			method string
			want   int
		}{
			{full, http.MethodPost, http.StatusNotFound},
			{full, http.MethodGet, http.StatusNotFound},
			{full, http.MethodDelete, http.StatusNotFound},
			{bare, http.MethodPost, http.StatusNotFound},
			{bare, http.MethodDelete, http.StatusInternalServerError},
		} {
			body := ""
			if c.method == http.MethodPost {
				body = callWhoami
			}
			code, resp := send(t, c.method, c.in.url(), bad, body)
			if code != c.want {
				t.Errorf("%s %s with %s: %d %s, want %d", c.in.name, c.method, name, code, resp, c.want)
			}
			if strings.Contains(resp, bad) {
				t.Errorf("%s %s with %s: the response repeats the session id", c.in.name, c.method, name)
			}
		}
	}
	full.rec.expectNone(t)
	bare.rec.expectNone(t)
}

// When the database is unreachable from one instance, its clients get 503
// (retry), not 404 (start over), and the session lives on elsewhere.
func TestEndToEndStoreDownIsNotTermination(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, db, "A", sessions.Config{}, wiringFull)
	b := startInstance(t, db, "B", sessions.Config{}, wiringFull)
	ctx := context.Background()
	rt := &router{}
	rt.to(a)
	c := newClient(t, rt)
	if err := initialize(ctx, c); err != nil {
		t.Fatal(err)
	}
	sid := c.GetSessionId()

	b.db.pool.Close()
	for _, m := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
		body := ""
		if m == http.MethodPost {
			body = callWhoami
		}
		code, resp := send(t, m, b.url(), sid, body)
		if code != http.StatusServiceUnavailable {
			t.Fatalf("%s on B with its store down: %d %s, want 503", m, code, resp)
		}
		if strings.Contains(resp, sid) {
			t.Fatalf("the response repeats the session id")
		}
	}
	ops, errs := b.rec.calls()
	if len(ops) != 3 || !errors.Is(errs[0], sessions.ErrStore) {
		t.Fatalf("OnError on B: %v %v, want three store failures", ops, errs)
	}
	if got, err := whoami(ctx, c); err != nil || got != "A" {
		t.Fatalf("the session on A after B's failures: %q, %v", got, err)
	}
	a.rec.expectNone(t)
}

// At the agent's limit, the initialize is refused with a JSON-RPC error that
// says why, and no session ID is handed out.
func TestEndToEndLimit(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	a := startInstance(t, db, "A", sessions.Config{Limit: 1}, wiringFull)
	b := startInstance(t, db, "B", sessions.Config{Limit: 1}, wiringFull)
	ctx := context.Background()
	rt := &router{}
	rt.to(a)
	if err := initialize(ctx, newClient(t, rt)); err != nil {
		t.Fatal(err)
	}
	rt2 := &router{}
	rt2.to(b)
	c2 := newClient(t, rt2)
	err := initialize(ctx, c2)
	if err == nil || !strings.Contains(err.Error(), `agent "mcp-e2e" already holds its limit of 1 live sessions`) {
		t.Fatalf("second initialize, on B: %v; want the limit error", err)
	}
	if sid := c2.GetSessionId(); sid != "" {
		t.Fatalf("refused initialize set a session id")
	}
	b.rec.expectOnly(t, mcpsessions.OpGenerate, sessions.ErrLimitExceeded)
	if n := db.rows(t); n != 1 {
		t.Fatalf("%d stored sessions, want 1", n)
	}
	// Without a session the client gets nowhere, on either instance.
	for _, in := range []*mcpInstance{a, b} {
		if code, _ := send(t, http.MethodPost, in.url(), "", callWhoami); code != http.StatusNotFound {
			t.Fatalf("tools/call on %s without a session: %d, want 404", in.name, code)
		}
	}
}
