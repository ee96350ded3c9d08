package mcpsessions_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	mcpgoclient "github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcpgo "github.com/mark3labs/mcp-go/mcp"
	mcpgoserver "github.com/mark3labs/mcp-go/server"
	gosdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsessions/agentsessions/mcpsessions"
	"github.com/agentsessions/agentsessions/mcpsessions/gosdkauth"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
	"github.com/agentsessions/agentsessions/sessions/sessionstest"
)

// End-to-end, protocol 2026-07-28 (no Mcp-Session-Id, no initialize):
// servers of both Go SDKs, several instances on one PostgreSQL schema, each
// authenticating every request by its bearer token, driven by the SDKs' own
// clients.

const (
	sdkGo    = "go-sdk" // github.com/modelcontextprotocol/go-sdk, Stateless
	sdkMCPGo = "mcp-go" // github.com/mark3labs/mcp-go
	modernPV = "2026-07-28"
	agentE2E = "agent-bearer-e2e"
)

// bearerInstance is one MCP server instance: its own pool, store and
// manager (same secret as every other) on the shared schema, an MCP server
// of one SDK behind that SDK's bearer middleware, and a loopback HTTP
// server.
type bearerInstance struct {
	name    string
	sdk     string
	pool    *pgxpool.Pool
	store   *pgxstore.Store
	counted *sessionstest.CountingStore
	mgr     *sessions.Manager
	srv     *httptest.Server
	onError atomic.Int32 // calls of the middleware's OnError
}

func (in *bearerInstance) url() string { return in.srv.URL + "/mcp" }

// whoamiText is what every instance's whoami tool answers: the instance,
// and the agent of the verified session as the tool handler read it.
func whoamiText(instance, agent string) string { return instance + " " + agent }

func startBearerInstance(t *testing.T, db *testDB, name, sdk string, cache bool) *bearerInstance {
	t.Helper()
	in := &bearerInstance{name: name, sdk: sdk, pool: db.pool(t)}
	store, err := pgxstore.New(in.pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	in.store = store
	in.counted = &sessionstest.CountingStore{Store: store}
	in.mgr, err = sessions.New(in.counted, sessions.Config{Secret: testSecret, TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	if cache {
		runCache(t, store)
	}
	onError := func(context.Context, error) { in.onError.Add(1) }

	var h http.Handler
	switch sdk {
	case sdkGo:
		s := gosdk.NewServer(&gosdk.Implementation{Name: "bearer-e2e", Version: "1.0.0"}, nil)
		s.AddTool(&gosdk.Tool{Name: "whoami", InputSchema: map[string]any{"type": "object"}},
			func(ctx context.Context, req *gosdk.CallToolRequest) (*gosdk.CallToolResult, error) {
				sess, ok := gosdkauth.SessionFromTokenInfo(req.Extra.TokenInfo)
				if !ok {
					return nil, errors.New("no verified session in the token info")
				}
				if cs, ok := sessions.SessionFromContext(ctx); !ok || cs.ID != sess.ID {
					return nil, errors.New("the tool handler's context does not carry the verified session")
				}
				if req.Extra.TokenInfo.UserID != sess.AgentID || !req.Extra.TokenInfo.Expiration.Equal(sess.ExpiresAt) {
					return nil, fmt.Errorf("token info %+v does not match the session", req.Extra.TokenInfo)
				}
				return &gosdk.CallToolResult{Content: []gosdk.Content{&gosdk.TextContent{Text: whoamiText(name, sess.AgentID)}}}, nil
			})
		mcpHandler := gosdk.NewStreamableHTTPHandler(func(*http.Request) *gosdk.Server { return s },
			&gosdk.StreamableHTTPOptions{Stateless: true})
		mw, err := gosdkauth.RequireBearerToken(in.mgr, gosdkauth.Options{OnError: onError})
		if err != nil {
			t.Fatal(err)
		}
		h = mw(mcpHandler)
	case sdkMCPGo:
		ms := mcpgoserver.NewMCPServer("bearer-e2e", "1.0.0", mcpgoserver.WithToolCapabilities(false))
		ms.AddTool(mcpgo.NewTool("whoami"), func(ctx context.Context, _ mcpgo.CallToolRequest) (*mcpgo.CallToolResult, error) {
			sess, ok := sessions.SessionFromContext(ctx)
			if !ok {
				return nil, errors.New("no verified session in the context")
			}
			return mcpgo.NewToolResultText(whoamiText(name, sess.AgentID)), nil
		})
		mw, err := mcpsessions.RequireBearerToken(in.mgr, mcpsessions.BearerOptions{OnError: onError})
		if err != nil {
			t.Fatal(err)
		}
		h = mw(mcpgoserver.NewStreamableHTTPServer(ms))
	default:
		t.Fatalf("unknown SDK %q", sdk)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", h)
	in.srv = httptest.NewServer(mux)
	t.Cleanup(in.srv.Close)
	return in
}

// runCache runs store.RunCache (MaxStaleness 300ms) until the test ends,
// and waits until the cache answers.
func runCache(t *testing.T, store *pgxstore.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- store.RunCache(ctx, pgxstore.CacheConfig{MaxStaleness: 300 * time.Millisecond}) }()
	// Registered after the pool's cleanup, so it runs before it.
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunCache: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !store.CacheStats().Fresh {
		if time.Now().After(deadline) {
			t.Fatal("the cache did not become fresh within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exchange is one HTTP response a client received.
type exchange struct {
	instance   string
	method     string // Mcp-Method of the request (SEP-2243)
	status     int
	challenge  string // WWW-Authenticate
	retryAfter string
}

// bearerRouter is a client's http.RoundTripper: it sends each request to
// the instance chosen last (a load balancer without sticky sessions), with
// the client's bearer token, and records every response.
type bearerRouter struct {
	token  string // "" sends no Authorization header
	target atomic.Pointer[bearerInstance]

	mu  sync.Mutex
	log []exchange
}

func (rt *bearerRouter) to(in *bearerInstance) *bearerRouter { rt.target.Store(in); return rt }

func (rt *bearerRouter) RoundTrip(r *http.Request) (*http.Response, error) {
	in := rt.target.Load()
	u, err := url.Parse(in.url())
	if err != nil {
		return nil, err
	}
	r = r.Clone(r.Context())
	r.URL.Scheme, r.URL.Host, r.Host = u.Scheme, u.Host, u.Host
	if rt.token != "" {
		r.Header.Set("Authorization", "Bearer "+rt.token)
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	rt.mu.Lock()
	rt.log = append(rt.log, exchange{
		instance:   in.name,
		method:     r.Header.Get("Mcp-Method"),
		status:     resp.StatusCode,
		challenge:  resp.Header.Get("WWW-Authenticate"),
		retryAfter: resp.Header.Get("Retry-After"),
	})
	rt.mu.Unlock()
	return resp, nil
}

func (rt *bearerRouter) exchanges() []exchange {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return append([]exchange(nil), rt.log...)
}

func (rt *bearerRouter) last(t *testing.T) exchange {
	t.Helper()
	log := rt.exchanges()
	if len(log) == 0 {
		t.Fatal("no request reached a server")
	}
	return log[len(log)-1]
}

// caller is a connected client of either SDK.
type caller interface {
	whoami(ctx context.Context) (string, error)
}

type goSDKCaller struct{ cs *gosdk.ClientSession }

func (c goSDKCaller) whoami(ctx context.Context) (string, error) {
	res, err := c.cs.CallTool(ctx, &gosdk.CallToolParams{Name: "whoami"})
	if err != nil {
		return "", err
	}
	if res.IsError || len(res.Content) != 1 {
		return "", fmt.Errorf("tool failed: %+v", res)
	}
	text, ok := res.Content[0].(*gosdk.TextContent)
	if !ok {
		return "", errors.New("tool result is not text")
	}
	return text.Text, nil
}

type mcpGoCaller struct{ c *mcpgoclient.Client }

func (c mcpGoCaller) whoami(ctx context.Context) (string, error) { return whoami(ctx, c.c) }

// connect connects a client of the SDK through rt, and checks that it
// negotiated protocol 2026-07-28.
func connect(t *testing.T, sdk string, rt *bearerRouter) (caller, error) {
	t.Helper()
	ctx := context.Background()
	hc := &http.Client{Transport: rt}
	switch sdk {
	case sdkGo:
		c := gosdk.NewClient(&gosdk.Implementation{Name: "bearer-e2e-client", Version: "1.0.0"}, nil)
		cs, err := c.Connect(ctx, &gosdk.StreamableClientTransport{
			Endpoint: "http://mcp.invalid/mcp", HTTPClient: hc, MaxRetries: -1, DisableStandaloneSSE: true,
		}, nil)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { _ = cs.Close() })
		if pv := cs.InitializeResult().ProtocolVersion; pv != modernPV {
			t.Fatalf("go-sdk client negotiated %q, want %s", pv, modernPV)
		}
		return goSDKCaller{cs}, nil
	case sdkMCPGo:
		tr, err := transport.NewStreamableHTTP("http://mcp.invalid/mcp", transport.WithHTTPBasicClient(hc))
		if err != nil {
			t.Fatal(err)
		}
		c := mcpgoclient.NewClient(tr)
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		var req mcpgo.InitializeRequest
		req.Params.ClientInfo = mcpgo.Implementation{Name: "bearer-e2e-client", Version: "1.0.0"}
		res, err := c.Initialize(ctx, req)
		if err != nil {
			return nil, err
		}
		if res.ProtocolVersion != modernPV {
			t.Fatalf("mcp-go client negotiated %q, want %s", res.ProtocolVersion, modernPV)
		}
		return mcpGoCaller{c}, nil
	}
	t.Fatalf("unknown SDK %q", sdk)
	return nil, nil
}

func mustConnect(t *testing.T, sdk string, rt *bearerRouter) caller {
	t.Helper()
	c, err := connect(t, sdk, rt)
	if err != nil {
		t.Fatalf("%s client: connect: %v (responses %+v)", sdk, err, rt.exchanges())
	}
	return c
}

func mustWhoami(t *testing.T, c caller, rt *bearerRouter, want string) {
	t.Helper()
	got, err := c.whoami(context.Background())
	if err != nil {
		t.Fatalf("whoami: %v (responses %+v)", err, rt.exchanges())
	}
	if got != want {
		t.Fatalf("whoami = %q, want %q", got, want)
	}
}

// wantInvalidToken checks a refusal of a bad token: 401 with the RFC 6750
// invalid_token challenge, and no Retry-After.
func wantInvalidToken(t *testing.T, ex exchange) {
	t.Helper()
	if ex.status != http.StatusUnauthorized {
		t.Fatalf("%s answered %d, want 401 (%+v)", ex.instance, ex.status, ex)
	}
	if !strings.HasPrefix(ex.challenge, `Bearer error="invalid_token"`) {
		t.Fatalf("%s: WWW-Authenticate = %q, want Bearer error=\"invalid_token\"", ex.instance, ex.challenge)
	}
	if ex.retryAfter != "" {
		t.Fatalf("%s: Retry-After %q on a 401", ex.instance, ex.retryAfter)
	}
}

// cluster is two instances of each SDK on one schema.
type cluster struct {
	goA, goB, mcpA, mcpB *bearerInstance
}

func (c cluster) all() []*bearerInstance { return []*bearerInstance{c.goA, c.goB, c.mcpA, c.mcpB} }

func startCluster(t *testing.T, cache bool) cluster {
	t.Helper()
	db := newDB(t)
	return cluster{
		goA:  startBearerInstance(t, db, "go-A", sdkGo, cache),
		goB:  startBearerInstance(t, db, "go-B", sdkGo, cache),
		mcpA: startBearerInstance(t, db, "mcpgo-A", sdkMCPGo, cache),
		mcpB: startBearerInstance(t, db, "mcpgo-B", sdkMCPGo, cache),
	}
}

// A session issued by one instance's manager authorizes tool calls on every
// instance of both SDKs, each client roaming between its SDK's instances,
// and the tool reads the caller's agent from the verified session.
func TestBearerE2ESessionWorksOnEveryInstance(t *testing.T) {
	c := startCluster(t, false)
	iss, err := c.goA.mgr.Issue(context.Background(), agentE2E)
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]*bearerInstance{{c.goA, c.goB}, {c.mcpA, c.mcpB}} {
		a, b := pair[0], pair[1]
		rt := (&bearerRouter{token: iss.Token}).to(b) // connect on B
		cl := mustConnect(t, a.sdk, rt)
		for _, in := range []*bearerInstance{a, b, a} {
			rt.to(in)
			mustWhoami(t, cl, rt, whoamiText(in.name, agentE2E))
		}
		// Every request was of protocol 2026-07-28 (Mcp-Method is a header
		// of that revision, SEP-2243) and none was an initialize.
		var methods []string
		for _, ex := range rt.exchanges() {
			if ex.status != http.StatusOK || ex.method == "" || ex.method == "initialize" {
				t.Fatalf("%s client: a response was not 200, or a request not modern: %+v", a.sdk, rt.exchanges())
			}
			methods = append(methods, ex.method)
		}
		t.Logf("%s client sent %v", a.sdk, methods)
	}
}

// revokeAndExpectRefusal connects a client to every instance, has each
// serve a call, revokes the session through one instance's manager, and
// then waits for each client's next call to be refused with 401; with
// immediate, the very next call must be.
func revokeAndExpectRefusal(t *testing.T, c cluster, immediate bool) {
	t.Helper()
	ctx := context.Background()
	iss, err := c.mcpA.mgr.Issue(ctx, agentE2E)
	if err != nil {
		t.Fatal(err)
	}
	type pinned struct {
		in *bearerInstance
		rt *bearerRouter
		cl caller
	}
	var clients []pinned
	for _, in := range c.all() {
		rt := (&bearerRouter{token: iss.Token}).to(in)
		cl := mustConnect(t, in.sdk, rt)
		mustWhoami(t, cl, rt, whoamiText(in.name, agentE2E))
		clients = append(clients, pinned{in, rt, cl})
	}

	if revoked, err := c.goB.mgr.Revoke(ctx, iss.Session.ID); err != nil || !revoked {
		t.Fatalf("Revoke = %v, %v; want true, nil", revoked, err)
	}

	deadline := time.Now().Add(10 * time.Second) // MaxStaleness is 300ms
	for _, p := range clients {
		for {
			text, err := p.cl.whoami(ctx)
			if err != nil {
				ex := p.rt.last(t)
				if ex.method != "tools/call" {
					t.Fatalf("%s: the refused request was %q, not tools/call", p.in.name, ex.method)
				}
				wantInvalidToken(t, ex)
				break
			}
			if immediate {
				t.Fatalf("%s served %q after the revocation, without a cache", p.in.name, text)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still serves the revoked session after 10s", p.in.name)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if p.in.onError.Load() != 0 {
			t.Fatalf("%s reported a failure for a revoked token", p.in.name)
		}
	}
}

// Without the cache, after Manager.Revoke on one instance every instance
// of both SDKs refuses the next call (401, invalid_token).
func TestBearerE2ERevokeRefusedAtOnceEverywhere(t *testing.T) {
	revokeAndExpectRefusal(t, startCluster(t, false), true)
}

// With pgxstore.Store.RunCache on every instance (MaxStaleness 300ms), the
// calls are answered from the cache, and after a Revoke every instance
// refuses the session within the staleness bound (polled with a generous
// deadline).
func TestBearerE2ERevokeRefusedWithCache(t *testing.T) {
	c := startCluster(t, true)
	revokeAndExpectRefusal(t, c, false)
	for _, in := range c.all() {
		if st := in.store.CacheStats(); st.Hits == 0 {
			t.Fatalf("%s: the cache answered no Get (%+v): the test did not exercise it", in.name, st)
		}
	}
}

// With its database down (pool closed) an instance answers 503 with
// Retry-After, never 401, and reports the failure; the client keeps its
// token, and the session still works on the other instance.
func TestBearerE2EStoreDownIs503(t *testing.T) {
	c := startCluster(t, false)
	iss, err := c.goA.mgr.Issue(context.Background(), agentE2E)
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]*bearerInstance{{c.goA, c.goB}, {c.mcpA, c.mcpB}} {
		up, down := pair[0], pair[1]
		rt := (&bearerRouter{token: iss.Token}).to(up)
		cl := mustConnect(t, up.sdk, rt)
		mustWhoami(t, cl, rt, whoamiText(up.name, agentE2E))

		down.pool.Close()
		rt.to(down)
		if text, err := cl.whoami(context.Background()); err == nil {
			t.Fatalf("%s served %q with its database down", down.name, text)
		}
		ex := rt.last(t)
		if ex.status != http.StatusServiceUnavailable || ex.retryAfter == "" || ex.challenge != "" {
			t.Fatalf("%s with its database down: %+v; want 503 with Retry-After and no challenge", down.name, ex)
		}
		if down.onError.Load() == 0 {
			t.Fatalf("%s did not report the store failure", down.name)
		}
		if up.onError.Load() != 0 {
			t.Fatalf("%s reported a failure", up.name)
		}

		// The client is not told its token is bad: a fresh client of the
		// same SDK, same token, is served by the instance that is up.
		rt2 := (&bearerRouter{token: iss.Token}).to(up)
		mustWhoami(t, mustConnect(t, up.sdk, rt2), rt2, whoamiText(up.name, agentE2E))
	}
}

// Forged, tampered and foreign-secret tokens are refused with 401 and the
// invalid_token challenge by every instance without a single store call;
// a request without a token gets the bare Bearer challenge; an expired
// token (genuine, so it may cost a store call) gets 401 too.
func TestBearerE2EBadTokensAre401(t *testing.T) {
	c := startCluster(t, false)
	ctx := context.Background()
	iss, err := c.goA.mgr.Issue(ctx, agentE2E)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("another-secret-0123456789abcdef!"), TTL: time.Hour, Limit: 5,
	})
	if err != nil {
		t.Fatal(err)
	}
	foreignTok, err := foreign.Issue(ctx, agentE2E)
	if err != nil {
		t.Fatal(err)
	}
	tampered := []byte(iss.Token)
	if tampered[len(tampered)-1] == 'A' {
		tampered[len(tampered)-1] = 'B'
	} else {
		tampered[len(tampered)-1] = 'A'
	}
	forged := map[string]string{
		"random":         "not-a-token",
		"tampered":       string(tampered),
		"foreign secret": foreignTok.Token,
	}

	for _, in := range c.all() {
		for name, tok := range forged {
			before := in.counted.Calls()
			rt := (&bearerRouter{token: tok}).to(in)
			if _, err := connect(t, in.sdk, rt); err == nil {
				t.Fatalf("%s: a client with a %s token connected", in.name, name)
			}
			for _, ex := range rt.exchanges() {
				wantInvalidToken(t, ex)
			}
			if n := in.counted.Calls() - before; n != 0 {
				t.Fatalf("%s: a %s token cost %d store calls, want 0", in.name, name, n)
			}
		}

		rt := (&bearerRouter{}).to(in)
		if _, err := connect(t, in.sdk, rt); err == nil {
			t.Fatalf("%s: a client without a token connected", in.name)
		}
		for _, ex := range rt.exchanges() {
			if ex.status != http.StatusUnauthorized || ex.challenge != "Bearer" {
				t.Fatalf("%s without a token: %+v; want 401 with WWW-Authenticate: Bearer", in.name, ex)
			}
		}
		if in.onError.Load() != 0 {
			t.Fatalf("%s reported a failure for a bad token", in.name)
		}
	}

	// An expired token: issued two hours ago with a one-hour TTL, by a
	// manager on the same store whose clock is behind.
	past, err := sessions.New(c.goA.counted.Store, sessions.Config{
		Secret: testSecret, TTL: time.Hour, Limit: 5,
		Clock: func() time.Time { return time.Now().Add(-2 * time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	expired, err := past.Issue(ctx, agentE2E)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []*bearerInstance{c.goB, c.mcpB} {
		rt := (&bearerRouter{token: expired.Token}).to(in)
		if _, err := connect(t, in.sdk, rt); err == nil {
			t.Fatalf("%s: a client with an expired token connected", in.name)
		}
		wantInvalidToken(t, rt.last(t))
	}
}

// One mcp-go endpoint for both eras: RequireBearerToken with
// LegacyPassThrough in front of the Mcp-Session-Id bridge. A client pinned
// to 2025-11-25 is served through the bridge without a bearer token; a
// 2026-07-28 client with a token is served by the token; a 2026-07-28
// request without one is refused with 401, after which mcp-go's client
// falls back to the initialize handshake, that is to the bridge.
func TestBearerE2EBothErasOnOneEndpoint(t *testing.T) {
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, _ := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "mcp-bridge"})
	ms := mcpgoserver.NewMCPServer("both-eras", "1.0.0", mcpgoserver.WithToolCapabilities(false))
	ms.AddTool(mcpgo.NewTool("whoami"), func(ctx context.Context, _ mcpgo.CallToolRequest) (*mcpgo.CallToolResult, error) {
		if s, ok := sessions.SessionFromContext(ctx); ok {
			return mcpgo.NewToolResultText(whoamiText("both", s.AgentID)), nil
		}
		return mcpgo.NewToolResultText(whoamiText("both", "bridge")), nil
	})
	httpSrv := mcpgoserver.NewStreamableHTTPServer(ms, mcpgoserver.WithSessionIdManagerResolver(a))
	bearerMW, err := mcpsessions.RequireBearerToken(inst.mgr, mcpsessions.BearerOptions{LegacyPassThrough: true})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", bearerMW(a.Middleware(httpSrv)))
	in := &bearerInstance{name: "both", sdk: sdkMCPGo, srv: httptest.NewServer(mux)}
	t.Cleanup(in.srv.Close)
	ctx := context.Background()

	// 2026-07-28 with a token.
	iss, err := inst.mgr.Issue(ctx, agentE2E)
	if err != nil {
		t.Fatal(err)
	}
	rt := (&bearerRouter{token: iss.Token}).to(in)
	mustWhoami(t, mustConnect(t, sdkMCPGo, rt), rt, whoamiText("both", agentE2E))

	// 2025-11-25 without a token, through the bridge.
	startLegacy := func(rt *bearerRouter, opts ...mcpgoclient.ClientOption) *mcpgoclient.Client {
		t.Helper()
		tr, err := transport.NewStreamableHTTP("http://mcp.invalid/mcp", transport.WithHTTPBasicClient(&http.Client{Transport: rt}))
		if err != nil {
			t.Fatal(err)
		}
		c := mcpgoclient.NewClient(tr, opts...)
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		var req mcpgo.InitializeRequest
		req.Params.ClientInfo = mcpgo.Implementation{Name: "legacy-client", Version: "1.0.0"}
		res, err := c.Initialize(ctx, req)
		if err != nil {
			t.Fatalf("initialize: %v (responses %+v)", err, rt.exchanges())
		}
		if res.ProtocolVersion != mcpgo.ProtocolVersion20251125 || c.GetSessionId() == "" {
			t.Fatalf("negotiated %q with session ID %q; want 2025-11-25 with a session", res.ProtocolVersion, c.GetSessionId())
		}
		return c
	}
	rt = (&bearerRouter{}).to(in)
	legacy := startLegacy(rt, mcpgoclient.WithProtocolVersion(mcpgo.ProtocolVersion20251125))
	mustWhoami(t, mcpGoCaller{legacy}, rt, whoamiText("both", "bridge"))

	// 2026-07-28 without a token: refused, then the handshake.
	rt = (&bearerRouter{}).to(in)
	fallback := startLegacy(rt)
	log := rt.exchanges()
	if log[0].method != "server/discover" || log[0].status != http.StatusUnauthorized || log[0].challenge != "Bearer" {
		t.Fatalf("the modern probe without a token got %+v; want 401 with WWW-Authenticate: Bearer", log[0])
	}
	mustWhoami(t, mcpGoCaller{fallback}, rt, whoamiText("both", "bridge"))
}

func TestRequireBearerTokenOptions(t *testing.T) {
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: testSecret, TTL: time.Hour, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		m    *sessions.Manager
		opts mcpsessions.BearerOptions
	}{
		"nil manager":      {nil, mcpsessions.BearerOptions{}},
		"negative timeout": {m, mcpsessions.BearerOptions{Timeout: -time.Second}},
		"quoted URL":       {m, mcpsessions.BearerOptions{ResourceMetadataURL: "https://x/\"\r\n"}},
	} {
		if _, err := mcpsessions.RequireBearerToken(tc.m, tc.opts); !errors.Is(err, mcpsessions.ErrInvalidOptions) {
			t.Errorf("%s: err = %v, want ErrInvalidOptions", name, err)
		}
	}
	if _, err := mcpsessions.RequireBearerToken(m, mcpsessions.BearerOptions{}); err != nil {
		t.Fatalf("zero options: %v", err)
	}
}
