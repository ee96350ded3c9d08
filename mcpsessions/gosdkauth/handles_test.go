package gosdkauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsessions/agentsessions/mcpsessions/gosdkauth"
	"github.com/agentsessions/agentsessions/sessions"
)

// listStore is a memory store whose ListAgent fails while down is set.
type listStore struct {
	*sessions.MemoryStore
	down atomic.Bool
}

func (s *listStore) ListAgent(ctx context.Context, agentID, kind string, now time.Time) ([]sessions.Session, error) {
	if s.down.Load() {
		return nil, errDown
	}
	return s.MemoryStore.ListAgent(ctx, agentID, kind, now)
}

type handleEnv struct {
	mgr   *sessions.Manager
	h     *sessions.Handles
	store *listStore
	srv   *mcp.Server
	url   string
}

// newHandleEnv is a Stateless go-sdk server on a memory store, behind
// RequireBearerToken, with the basket tools registered with opts.
func newHandleEnv(t *testing.T, opts gosdkauth.HandleToolsOptions) *handleEnv {
	t.Helper()
	st := &listStore{MemoryStore: sessions.NewMemoryStore()}
	m, err := sessions.New(st, sessions.Config{Secret: []byte("gosdkauth-handles-secret-0123456789"), TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	h, err := sessions.NewHandles(m, sessions.HandleKind{Name: "basket", TTL: time.Hour, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	srv := mcp.NewServer(&mcp.Implementation{Name: "handles-test", Version: "1.0.0"}, nil)
	if err := gosdkauth.RegisterHandleTools(srv, h, "basket", opts); err != nil {
		t.Fatal(err)
	}
	mw, err := gosdkauth.RequireBearerToken(m, gosdkauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(mw(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv },
		&mcp.StreamableHTTPOptions{Stateless: true})))
	t.Cleanup(ts.Close)
	return &handleEnv{mgr: m, h: h, store: st, srv: srv, url: ts.URL}
}

// client connects a go-sdk client with a token of agent's, on 2026-07-28.
func (e *handleEnv) client(t *testing.T, agent string) *mcp.ClientSession {
	t.Helper()
	iss, err := e.mgr.Issue(context.Background(), agent)
	if err != nil {
		t.Fatal(err)
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "handles-test-client", Version: "1.0.0"}, nil)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{
		Endpoint: e.url, HTTPClient: &http.Client{Transport: withToken{iss.Token}}, MaxRetries: -1, DisableStandaloneSSE: true,
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

func (e *handleEnv) create(t *testing.T, principal string) sessions.Handle {
	t.Helper()
	h, err := e.h.Create(context.Background(), principal, "basket")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// result is a tool call's outcome as a client sees it.
type result struct {
	isError    bool
	text       string
	structured string // JSON, "" when absent
}

func call(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) result {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var r result
	r.isError = res.IsError
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			r.text += tc.Text
		}
	}
	if res.StructuredContent != nil {
		b, err := json.Marshal(res.StructuredContent)
		if err != nil {
			t.Fatal(err)
		}
		r.structured = string(b)
	}
	return r
}

// wantList checks the list tool's structured result: exactly these
// handles, with their times. (Handles.List orders them oldest first; the
// handles of a test are created within a second, so the order of ties is
// the store's and is not checked here.)
func wantList(t *testing.T, got result, want ...sessions.Handle) {
	t.Helper()
	if got.isError {
		t.Fatalf("list failed: %s", got.text)
	}
	var parsed struct {
		Baskets []struct {
			ID string `json:"id"`
		} `json:"baskets"`
	}
	if err := json.Unmarshal([]byte(got.structured), &parsed); err != nil {
		t.Fatalf("list result %q: %v", got.structured, err)
	}
	byID := map[string]sessions.Handle{}
	for _, h := range want {
		byID[h.Handle] = h
	}
	want = want[:0:0]
	for _, e := range parsed.Baskets {
		if h, ok := byID[e.ID]; ok {
			want = append(want, h)
			delete(byID, e.ID)
		}
	}
	for _, h := range byID {
		want = append(want, h) // missing from the result: the comparison fails
	}
	entries := []map[string]string{}
	for _, h := range want {
		entries = append(entries, map[string]string{"id": h.Handle,
			"created_at": h.CreatedAt.UTC().Format(time.RFC3339), "expires_at": h.ExpiresAt.UTC().Format(time.RFC3339)})
	}
	b, _ := json.Marshal(map[string]any{"baskets": entries})
	if !jsonEqual(t, got.structured, string(b)) {
		t.Fatalf("list = %s, want %s", got.structured, b)
	}
	// The text is the same JSON, for clients without structured content.
	if !jsonEqual(t, got.text, string(b)) {
		t.Fatalf("list text = %s, want %s", got.text, b)
	}
}

func jsonEqual(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal([]byte(a), &x); err != nil {
		t.Fatalf("not JSON: %q", a)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatalf("not JSON: %q", b)
	}
	return reflect.DeepEqual(x, y)
}

// The list and destroy tools act on the caller's handles only, and answer
// another principal's handle exactly as a made-up one.
func TestRegisterHandleToolsCallersHandlesOnly(t *testing.T) {
	e := newHandleEnv(t, gosdkauth.HandleToolsOptions{})
	alice, bob := e.client(t, "agent-alice"), e.client(t, "agent-bob")
	a1, a2 := e.create(t, "agent-alice"), e.create(t, "agent-alice")
	b1 := e.create(t, "agent-bob")

	wantList(t, call(t, alice, "list_baskets", nil), a1, a2)
	wantList(t, call(t, bob, "list_baskets", nil), b1)

	// Bob destroys Alice's basket: nothing happens, and he is told exactly
	// what he is told for a handle that never existed.
	foreign := call(t, bob, "destroy_basket", map[string]any{"basket_id": a1.Handle})
	forged := call(t, bob, "destroy_basket", map[string]any{"basket_id": "basket_AAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
	if foreign.isError || !jsonEqual(t, foreign.structured, `{"destroyed":false}`) {
		t.Fatalf("destroy of another's handle = %+v, want destroyed false", foreign)
	}
	if foreign != forged {
		t.Fatalf("another's handle answers %+v, a forged one %+v: they must be the same", foreign, forged)
	}
	if !strings.Contains(foreign.text, "nothing was destroyed") {
		t.Fatalf("text %q does not say nothing was destroyed", foreign.text)
	}
	wantList(t, call(t, alice, "list_baskets", nil), a1, a2)

	// Alice destroys hers: gone, on a second try false.
	res := call(t, alice, "destroy_basket", map[string]any{"basket_id": a1.Handle})
	if res.isError || !jsonEqual(t, res.structured, `{"destroyed":true}`) {
		t.Fatalf("destroy = %+v, want destroyed true", res)
	}
	if _, err := e.h.Resolve(context.Background(), "agent-alice", "basket", a1.Handle); !errors.Is(err, sessions.ErrUnknownHandle) {
		t.Fatalf("Resolve after destroy: %v, want ErrUnknownHandle", err)
	}
	wantList(t, call(t, alice, "list_baskets", nil), a2)
	if again := call(t, alice, "destroy_basket", map[string]any{"basket_id": a1.Handle}); again != forged {
		t.Fatalf("second destroy = %+v, want %+v", again, forged)
	}

	// An empty list is an empty array, not null.
	call(t, bob, "destroy_basket", map[string]any{"basket_id": b1.Handle})
	if got := call(t, bob, "list_baskets", nil); !jsonEqual(t, got.structured, `{"baskets":[]}`) {
		t.Fatalf("empty list = %s", got.structured)
	}
}

// tools/list shows both tools with their schemas and annotations; custom
// names replace the defaults.
func TestRegisterHandleToolsDeclarations(t *testing.T) {
	for _, tc := range []struct {
		opts          gosdkauth.HandleToolsOptions
		list, destroy string
	}{
		{gosdkauth.HandleToolsOptions{}, "list_baskets", "destroy_basket"},
		{gosdkauth.HandleToolsOptions{ListName: "my_baskets", DestroyName: "drop_basket", ListDescription: "L", DestroyDescription: "D"},
			"my_baskets", "drop_basket"},
	} {
		e := newHandleEnv(t, tc.opts)
		res, err := e.client(t, "agent-alice").ListTools(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		tools := map[string]*mcp.Tool{}
		for _, tool := range res.Tools {
			tools[tool.Name] = tool
		}
		if len(tools) != 2 || tools[tc.list] == nil || tools[tc.destroy] == nil {
			t.Fatalf("tools = %v, want %s and %s", tools, tc.list, tc.destroy)
		}
		schema := func(v any) string { b, _ := json.Marshal(v); return string(b) }
		if in := schema(tools[tc.destroy].InputSchema); !strings.Contains(in, `"required":["basket_id"]`) {
			t.Fatalf("destroy input schema %s does not require basket_id", in)
		}
		if out := schema(tools[tc.destroy].OutputSchema); !strings.Contains(out, `"destroyed":{"type":"boolean"}`) {
			t.Fatalf("destroy output schema %s", out)
		}
		if out := schema(tools[tc.list].OutputSchema); !strings.Contains(out, `"required":["baskets"]`) {
			t.Fatalf("list output schema %s", out)
		}
		if a := tools[tc.list].Annotations; a == nil || !a.ReadOnlyHint {
			t.Fatalf("list annotations %+v, want read-only", a)
		}
		if a := tools[tc.destroy].Annotations; a == nil || a.ReadOnlyHint || a.DestructiveHint == nil || !*a.DestructiveHint || !a.IdempotentHint {
			t.Fatalf("destroy annotations %+v, want destructive and idempotent", a)
		}
		if tc.opts.ListDescription != "" && (tools[tc.list].Description != "L" || tools[tc.destroy].Description != "D") {
			t.Fatalf("descriptions %q, %q", tools[tc.list].Description, tools[tc.destroy].Description)
		}
		if tc.opts.ListDescription == "" && !strings.Contains(tools[tc.destroy].Description, "basket") {
			t.Fatalf("default description %q does not name the kind", tools[tc.destroy].Description)
		}
	}
}

// Without a verified session (no RequireBearerToken in front) both tools
// are tool errors that say what is missing, and act on nothing.
func TestRegisterHandleToolsWithoutSession(t *testing.T) {
	e := newHandleEnv(t, gosdkauth.HandleToolsOptions{})
	a := e.create(t, "agent-alice")
	ct, st := mcp.NewInMemoryTransports()
	ss, err := e.srv.Connect(context.Background(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Close() })
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "no-token", Version: "1.0.0"}, nil).Connect(context.Background(), ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.Close() })
	for _, c := range []struct {
		name string
		args map[string]any
	}{{"list_baskets", nil}, {"destroy_basket", map[string]any{"basket_id": a.Handle}}} {
		res := call(t, cs, c.name, c.args)
		if !res.isError || !strings.Contains(res.text, "no verified agentsessions session") || !strings.Contains(res.text, "RequireBearerToken") {
			t.Fatalf("%s without a session = %+v, want a tool error naming RequireBearerToken", c.name, res)
		}
	}
	if _, err := e.h.Resolve(context.Background(), "agent-alice", "basket", a.Handle); err != nil {
		t.Fatalf("the handle is gone after a call without a session: %v", err)
	}
}

// A store failure is a tool error with the client-safe message, not the
// store's error text; a bad argument is a tool error too.
func TestRegisterHandleToolsErrors(t *testing.T) {
	e := newHandleEnv(t, gosdkauth.HandleToolsOptions{})
	cs := e.client(t, "agent-alice")
	e.store.down.Store(true)
	res := call(t, cs, "list_baskets", nil)
	e.store.down.Store(false)
	if !res.isError || !strings.HasPrefix(res.text, sessions.CodeStoreUnavailable+": ") || strings.Contains(res.text, "db.internal") {
		t.Fatalf("list with the store down = %+v, want a store_unavailable tool error without the store's text", res)
	}
	for _, args := range []map[string]any{nil, {"basket_id": 7}, {"basket": "x"}} {
		if res := call(t, cs, "destroy_basket", args); !res.isError {
			t.Fatalf("destroy %v = %+v, want a tool error", args, res)
		}
	}
}

func TestRegisterHandleToolsOptionErrors(t *testing.T) {
	e := newHandleEnv(t, gosdkauth.HandleToolsOptions{})
	srv := mcp.NewServer(&mcp.Implementation{Name: "x", Version: "1"}, nil)
	for _, tc := range []struct {
		name string
		srv  *mcp.Server
		h    *sessions.Handles
		kind string
		opts gosdkauth.HandleToolsOptions
	}{
		{"nil server", nil, e.h, "basket", gosdkauth.HandleToolsOptions{}},
		{"nil handles", srv, nil, "basket", gosdkauth.HandleToolsOptions{}},
		{"unknown kind", srv, e.h, "browser", gosdkauth.HandleToolsOptions{}},
		{"bad name", srv, e.h, "basket", gosdkauth.HandleToolsOptions{ListName: "list baskets"}},
		{"same names", srv, e.h, "basket", gosdkauth.HandleToolsOptions{ListName: "x", DestroyName: "x"}},
	} {
		if err := gosdkauth.RegisterHandleTools(tc.srv, tc.h, tc.kind, tc.opts); !errors.Is(err, gosdkauth.ErrInvalidOptions) {
			t.Errorf("%s: %v, want ErrInvalidOptions", tc.name, err)
		}
	}
}

// Behind go-sdk's own auth.RequireBearerToken with TokenVerifier (no
// session in the context, only req.Extra.TokenInfo), the tools find the
// caller through PrincipalFromRequest's fallback.
func TestRegisterHandleToolsBehindGoSDKMiddleware(t *testing.T) {
	e := newHandleEnv(t, gosdkauth.HandleToolsOptions{})
	a := e.create(t, "agent-alice")
	e.create(t, "agent-bob")
	ts := httptest.NewServer(auth.RequireBearerToken(gosdkauth.TokenVerifier(e.mgr), nil)(
		mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return e.srv }, &mcp.StreamableHTTPOptions{Stateless: true})))
	t.Cleanup(ts.Close)
	e.url = ts.URL
	wantList(t, call(t, e.client(t, "agent-alice"), "list_baskets", nil), a)
}
