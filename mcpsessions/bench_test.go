package mcpsessions_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/mcpsessions"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// What a session check costs per MCP request, on PostgreSQL:
//
//	go test -run '^$' -bench . -benchtime 2s ./...   (from mcpsessions/, TEST_DATABASE_URL set)

// BenchmarkValidate is one Validate of a live session: a signature check
// and one store read, from PostgreSQL or, with pgxstore.Store.RunCache, from
// the instance's cache.
func BenchmarkValidate(b *testing.B) {
	for _, cached := range []bool{false, true} {
		name := "postgres"
		if cached {
			name = "postgres+RunCache"
		}
		b.Run(name, func(b *testing.B) {
			db := newDB(b)
			inst := db.instance(b, sessions.Config{})
			if cached {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- inst.store.RunCache(ctx, pgxstore.CacheConfig{}) }()
				b.Cleanup(func() {
					cancel()
					if err := <-done; err != nil {
						b.Error(err)
					}
				})
			}
			a, err := mcpsessions.New(inst.mgr, mcpsessions.Options{AgentID: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			sid := a.Generate()
			if sid == "" {
				b.Fatal("Generate failed")
			}
			for b.Loop() {
				if term, err := a.Validate(sid); term || err != nil {
					b.Fatal(term, err)
				}
			}
		})
	}
}

// BenchmarkValidateForged is one Validate of a forged session ID: refused on
// its signature, with no store call.
func BenchmarkValidateForged(b *testing.B) {
	db := newDB(b)
	inst := db.instance(b, sessions.Config{})
	a, err := mcpsessions.New(inst.mgr, mcpsessions.Options{AgentID: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	sid := a.Generate()
	forged := sid[:len(sid)-2] + "AA"
	if forged == sid {
		forged = sid[:len(sid)-2] + "BB"
	}
	for b.Loop() {
		if _, err := a.Validate(forged); err == nil {
			b.Fatal("forged ID accepted")
		}
	}
}

// BenchmarkToolCall is one tools/call over loopback HTTP through the full
// wiring (Middleware, resolver), against the same call on mcp-go's default
// session manager, which checks nothing across instances.
func BenchmarkToolCall(b *testing.B) {
	for _, name := range []string{"mcpsessions", "mcp-go default"} {
		b.Run(name, func(b *testing.B) {
			ms := server.NewMCPServer("bench", "1.0.0", server.WithToolCapabilities(false))
			ms.AddTool(mcp.NewTool("whoami"), func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				return mcp.NewToolResultText("bench"), nil
			})
			var h http.Handler
			if name == "mcpsessions" {
				db := newDB(b)
				inst := db.instance(b, sessions.Config{})
				a, err := mcpsessions.New(inst.mgr, mcpsessions.Options{AgentID: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				h = a.Middleware(server.NewStreamableHTTPServer(ms, server.WithSessionIdManagerResolver(a)))
			} else {
				h = server.NewStreamableHTTPServer(ms)
			}
			srv := httptest.NewServer(h)
			b.Cleanup(srv.Close)
			sid := initializeRaw(b, srv.URL)
			for b.Loop() {
				if code, body := send(b, http.MethodPost, srv.URL, sid, callWhoami); code != http.StatusOK {
					b.Fatal(code, body)
				}
			}
		})
	}
}

// initializeRaw initialises a session with a raw request and returns its ID.
func initializeRaw(tb testing.TB, u string) string {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"`+mcp.LATEST_LEGACY_PROTOCOL_VERSION+
			`","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	sid := resp.Header.Get(server.HeaderKeySessionID)
	if resp.StatusCode != http.StatusOK || sid == "" {
		tb.Fatalf("initialize: %d, session id %q", resp.StatusCode, sid)
	}
	return sid
}
