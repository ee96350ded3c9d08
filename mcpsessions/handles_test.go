package mcpsessions_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mcpgoclient "github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcpgo "github.com/mark3labs/mcp-go/mcp"
	mcpgoserver "github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/mcpsessions"
	"github.com/agentsessions/agentsessions/sessions"
)

// RegisterHandleTools on mcp-go, driven by mcp-go's client on protocol
// 2026-07-28 through RequireBearerToken, on a memory store.

var errListDown = errors.New("connection refused (db.internal:5432)")

// listStore is a memory store whose ListAgent fails while down is set.
type listStore struct {
	*sessions.MemoryStore
	down atomic.Bool
}

func (s *listStore) ListAgent(ctx context.Context, agentID, kind string, now time.Time) ([]sessions.Session, error) {
	if s.down.Load() {
		return nil, errListDown
	}
	return s.MemoryStore.ListAgent(ctx, agentID, kind, now)
}

type toolsEnv struct {
	mgr   *sessions.Manager
	h     *sessions.Handles
	store *listStore
	ms    *mcpgoserver.MCPServer
	url   string
}

func newToolsEnv(t *testing.T, opts mcpsessions.HandleToolsOptions) *toolsEnv {
	t.Helper()
	st := &listStore{MemoryStore: sessions.NewMemoryStore()}
	m, err := sessions.New(st, sessions.Config{Secret: testSecret, TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	h, err := sessions.NewHandles(m, sessions.HandleKind{Name: "basket", TTL: time.Hour, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	ms := mcpgoserver.NewMCPServer("handles-test", "1.0.0", mcpgoserver.WithToolCapabilities(false))
	if err := mcpsessions.RegisterHandleTools(ms, h, "basket", opts); err != nil {
		t.Fatal(err)
	}
	mw, err := mcpsessions.RequireBearerToken(m, mcpsessions.BearerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(mw(mcpgoserver.NewStreamableHTTPServer(ms)))
	t.Cleanup(ts.Close)
	return &toolsEnv{mgr: m, h: h, store: st, ms: ms, url: ts.URL}
}

// tokenTransport sends a bearer token with every request.
type tokenTransport struct{ token string }

func (tt tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+tt.token)
	return http.DefaultTransport.RoundTrip(r)
}

// client connects mcp-go's client with a token of agent's, on 2026-07-28.
func (e *toolsEnv) client(t *testing.T, agent string) *mcpgoclient.Client {
	t.Helper()
	iss, err := e.mgr.Issue(context.Background(), agent)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := transport.NewStreamableHTTP(e.url, transport.WithHTTPBasicClient(&http.Client{Transport: tokenTransport{iss.Token}}))
	if err != nil {
		t.Fatal(err)
	}
	return startMCPGoClient(t, mcpgoclient.NewClient(tr), modernPV)
}

func startMCPGoClient(t *testing.T, c *mcpgoclient.Client, wantPV string) *mcpgoclient.Client {
	t.Helper()
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	var req mcpgo.InitializeRequest
	req.Params.ClientInfo = mcpgo.Implementation{Name: "handles-test-client", Version: "1.0.0"}
	res, err := c.Initialize(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if wantPV != "" && res.ProtocolVersion != wantPV {
		t.Fatalf("negotiated %q, want %s", res.ProtocolVersion, wantPV)
	}
	return c
}

func (e *toolsEnv) create(t *testing.T, principal string) sessions.Handle {
	t.Helper()
	h, err := e.h.Create(context.Background(), principal, "basket")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// toolResult is a tool call's outcome as the client sees it.
type toolResult struct {
	isError    bool
	text       string
	structured string // JSON, "" when absent
}

func callTool(t *testing.T, c *mcpgoclient.Client, name string, args map[string]any) toolResult {
	t.Helper()
	var req mcpgo.CallToolRequest
	req.Params.Name = name
	if args != nil {
		req.Params.Arguments = args
	}
	res, err := c.CallTool(context.Background(), req)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	r := toolResult{isError: res.IsError}
	for _, content := range res.Content {
		if tc, ok := content.(mcpgo.TextContent); ok {
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

func sameJSON(t *testing.T, a, b string) bool {
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

// wantBaskets checks the list tool's result holds exactly these handles
// with their times (ties within a second are in the store's order, so
// both sides are compared sorted by ID), in structured content and as the
// same JSON in text.
func wantBaskets(t *testing.T, got toolResult, want ...sessions.Handle) {
	t.Helper()
	if got.isError {
		t.Fatalf("list failed: %s", got.text)
	}
	type entry struct {
		ID        string `json:"id"`
		CreatedAt string `json:"created_at"`
		ExpiresAt string `json:"expires_at"`
	}
	var res struct {
		Baskets []entry `json:"baskets"`
	}
	if err := json.Unmarshal([]byte(got.structured), &res); err != nil || res.Baskets == nil {
		t.Fatalf("list result %q: %v (want a baskets array)", got.structured, err)
	}
	wantEntries := []entry{}
	for _, h := range want {
		wantEntries = append(wantEntries, entry{h.Handle, h.CreatedAt.UTC().Format(time.RFC3339), h.ExpiresAt.UTC().Format(time.RFC3339)})
	}
	byID := func(s []entry) { sort.Slice(s, func(i, j int) bool { return s[i].ID < s[j].ID }) }
	byID(res.Baskets)
	byID(wantEntries)
	if !reflect.DeepEqual(res.Baskets, wantEntries) {
		t.Fatalf("list = %+v, want %+v", res.Baskets, wantEntries)
	}
	if !sameJSON(t, got.text, got.structured) {
		t.Fatalf("list text %q is not the structured JSON %s", got.text, got.structured)
	}
}

// The list and destroy tools act on the caller's handles only, and answer
// another principal's handle exactly as a made-up one.
func TestRegisterHandleToolsMCPGoCallersHandlesOnly(t *testing.T) {
	e := newToolsEnv(t, mcpsessions.HandleToolsOptions{})
	alice, bob := e.client(t, "agent-alice"), e.client(t, "agent-bob")
	a1, a2 := e.create(t, "agent-alice"), e.create(t, "agent-alice")
	b1 := e.create(t, "agent-bob")

	wantBaskets(t, callTool(t, alice, "list_baskets", nil), a1, a2)
	wantBaskets(t, callTool(t, bob, "list_baskets", nil), b1)

	foreign := callTool(t, bob, "destroy_basket", map[string]any{"basket_id": a1.Handle})
	forged := callTool(t, bob, "destroy_basket", map[string]any{"basket_id": "basket_AAAAAAAAAAAAAAAAAAAAAAAAAAAA"})
	if foreign.isError || !sameJSON(t, foreign.structured, `{"destroyed":false}`) {
		t.Fatalf("destroy of another's handle = %+v, want destroyed false", foreign)
	}
	if foreign != forged {
		t.Fatalf("another's handle answers %+v, a forged one %+v: they must be the same", foreign, forged)
	}
	if !strings.Contains(foreign.text, "nothing was destroyed") {
		t.Fatalf("text %q does not say nothing was destroyed", foreign.text)
	}
	wantBaskets(t, callTool(t, alice, "list_baskets", nil), a1, a2)

	res := callTool(t, alice, "destroy_basket", map[string]any{"basket_id": a1.Handle})
	if res.isError || !sameJSON(t, res.structured, `{"destroyed":true}`) {
		t.Fatalf("destroy = %+v, want destroyed true", res)
	}
	if _, err := e.h.Resolve(context.Background(), "agent-alice", "basket", a1.Handle); !errors.Is(err, sessions.ErrUnknownHandle) {
		t.Fatalf("Resolve after destroy: %v, want ErrUnknownHandle", err)
	}
	wantBaskets(t, callTool(t, alice, "list_baskets", nil), a2)
	if again := callTool(t, alice, "destroy_basket", map[string]any{"basket_id": a1.Handle}); again != forged {
		t.Fatalf("second destroy = %+v, want %+v", again, forged)
	}
	callTool(t, bob, "destroy_basket", map[string]any{"basket_id": b1.Handle})
	wantBaskets(t, callTool(t, bob, "list_baskets", nil))
}

// tools/list shows both tools with their schemas and annotations; custom
// names replace the defaults.
func TestRegisterHandleToolsMCPGoDeclarations(t *testing.T) {
	for _, tc := range []struct {
		opts          mcpsessions.HandleToolsOptions
		list, destroy string
	}{
		{mcpsessions.HandleToolsOptions{}, "list_baskets", "destroy_basket"},
		{mcpsessions.HandleToolsOptions{ListName: "my_baskets", DestroyName: "drop_basket", ListDescription: "L", DestroyDescription: "D"},
			"my_baskets", "drop_basket"},
	} {
		e := newToolsEnv(t, tc.opts)
		res, err := e.client(t, "agent-alice").ListTools(context.Background(), mcpgo.ListToolsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		tools := map[string]mcpgo.Tool{}
		for _, tool := range res.Tools {
			tools[tool.Name] = tool
		}
		list, okL := tools[tc.list]
		destroy, okD := tools[tc.destroy]
		if len(tools) != 2 || !okL || !okD {
			t.Fatalf("tools = %v, want %s and %s", tools, tc.list, tc.destroy)
		}
		asJSON := func(v any) string { b, _ := json.Marshal(v); return string(b) }
		if in := asJSON(destroy); !strings.Contains(in, `"inputSchema":{"additionalProperties":false,"properties":{"basket_id"`) ||
			!strings.Contains(in, `"required":["basket_id"]`) {
			t.Fatalf("destroy tool %s: its input schema does not require basket_id", in)
		}
		if out := asJSON(destroy); !strings.Contains(out, `"outputSchema":{"properties":{"destroyed":{"type":"boolean"}}`) {
			t.Fatalf("destroy tool %s: no destroyed output", out)
		}
		if out := asJSON(list); !strings.Contains(out, `"required":["baskets"]`) {
			t.Fatalf("list tool %s: no baskets output", out)
		}
		if a := list.Annotations; a.ReadOnlyHint == nil || !*a.ReadOnlyHint {
			t.Fatalf("list annotations %+v, want read-only", a)
		}
		if a := destroy.Annotations; a.DestructiveHint == nil || !*a.DestructiveHint || a.IdempotentHint == nil || !*a.IdempotentHint {
			t.Fatalf("destroy annotations %+v, want destructive and idempotent", a)
		}
		if tc.opts.ListDescription != "" && (list.Description != "L" || destroy.Description != "D") {
			t.Fatalf("descriptions %q, %q", list.Description, destroy.Description)
		}
	}
}

// Without a verified session in the context (no RequireBearerToken), both
// tools are tool errors that say what is missing, and act on nothing.
func TestRegisterHandleToolsMCPGoWithoutSession(t *testing.T) {
	e := newToolsEnv(t, mcpsessions.HandleToolsOptions{})
	a := e.create(t, "agent-alice")
	c, err := mcpgoclient.NewInProcessClient(e.ms)
	if err != nil {
		t.Fatal(err)
	}
	c = startMCPGoClient(t, c, "")
	for _, tc := range []struct {
		name string
		args map[string]any
	}{{"list_baskets", nil}, {"destroy_basket", map[string]any{"basket_id": a.Handle}}} {
		res := callTool(t, c, tc.name, tc.args)
		if !res.isError || !strings.Contains(res.text, "no verified agentsessions session") || !strings.Contains(res.text, "RequireBearerToken") {
			t.Fatalf("%s without a session = %+v, want a tool error naming RequireBearerToken", tc.name, res)
		}
	}
	if _, err := e.h.Resolve(context.Background(), "agent-alice", "basket", a.Handle); err != nil {
		t.Fatalf("the handle is gone after a call without a session: %v", err)
	}
}

// A store failure is a tool error with the client-safe message, not the
// store's text; a missing or non-string argument is a tool error.
func TestRegisterHandleToolsMCPGoErrors(t *testing.T) {
	e := newToolsEnv(t, mcpsessions.HandleToolsOptions{})
	c := e.client(t, "agent-alice")
	e.store.down.Store(true)
	res := callTool(t, c, "list_baskets", nil)
	e.store.down.Store(false)
	if !res.isError || !strings.HasPrefix(res.text, sessions.CodeStoreUnavailable+": ") || strings.Contains(res.text, "db.internal") {
		t.Fatalf("list with the store down = %+v, want a store_unavailable tool error without the store's text", res)
	}
	for _, args := range []map[string]any{nil, {"basket_id": 7}, {"basket": "x"}} {
		if res := callTool(t, c, "destroy_basket", args); !res.isError {
			t.Fatalf("destroy %v = %+v, want a tool error", args, res)
		}
	}
}

func TestRegisterHandleToolsMCPGoOptionErrors(t *testing.T) {
	e := newToolsEnv(t, mcpsessions.HandleToolsOptions{})
	ms := mcpgoserver.NewMCPServer("x", "1")
	for _, tc := range []struct {
		name string
		ms   *mcpgoserver.MCPServer
		h    *sessions.Handles
		kind string
		opts mcpsessions.HandleToolsOptions
	}{
		{"nil server", nil, e.h, "basket", mcpsessions.HandleToolsOptions{}},
		{"nil handles", ms, nil, "basket", mcpsessions.HandleToolsOptions{}},
		{"unknown kind", ms, e.h, "browser", mcpsessions.HandleToolsOptions{}},
		{"bad name", ms, e.h, "basket", mcpsessions.HandleToolsOptions{DestroyName: "destroy/basket"}},
		{"same names", ms, e.h, "basket", mcpsessions.HandleToolsOptions{ListName: "x", DestroyName: "x"}},
	} {
		if err := mcpsessions.RegisterHandleTools(tc.ms, tc.h, tc.kind, tc.opts); !errors.Is(err, mcpsessions.ErrInvalidOptions) {
			t.Errorf("%s: %v, want ErrInvalidOptions", tc.name, err)
		}
	}
}
