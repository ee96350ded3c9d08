package mcpsessions_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/mcpsessions"
	"github.com/agentsessions/agentsessions/sessions"
)

// newMCPHandler builds one MCP server instance whose sessions live in mgr's
// store.
func newMCPHandler(name string, mgr *sessions.Manager) (http.Handler, error) {
	a, err := mcpsessions.New(mgr, mcpsessions.Options{AgentID: "example-mcp-server"})
	if err != nil {
		return nil, err
	}
	hooks := &server.Hooks{}
	hooks.AddOnRequestInitialization(a.RejectSessionlessInitialize)
	mcpSrv := server.NewMCPServer("example", "1.0.0", server.WithToolCapabilities(false), server.WithHooks(hooks))
	mcpSrv.AddTool(mcp.NewTool("whoami"), func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return mcp.NewToolResultText(name), nil
	})
	httpSrv := server.NewStreamableHTTPServer(mcpSrv,
		server.WithSessionIdManagerResolver(a),
		server.WithStreamableHTTPProtocolVersions(mcp.LegacyProtocolVersions()...))
	return a.Middleware(httpSrv), nil
}

// Two instances of an MCP server share one session store: a client
// initialises on one, calls a tool on the other, and once it has ended the
// session through one, the other refuses it.
//
// In a deployment each instance has its own Manager on
// pgxstore.New, with the same Secret; the memory store stands
// in for the shared database here.
func Example() {
	mgr, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("example-secret-example-secret-32"), // use 32+ random bytes
		TTL:    time.Hour,                                  // the longest an MCP session can last
		Limit:  100,                                        // concurrent MCP sessions of the agent
	})
	if err != nil {
		log.Fatal(err)
	}
	var urls []string
	for _, name := range []string{"A", "B"} {
		h, err := newMCPHandler(name, mgr)
		if err != nil {
			log.Fatal(err)
		}
		srv := httptest.NewServer(h)
		defer srv.Close()
		urls = append(urls, srv.URL)
	}
	ctx := context.Background()

	// Initialise on A.
	tr, err := transport.NewStreamableHTTP(urls[0])
	if err != nil {
		log.Fatal(err)
	}
	onA := client.NewClient(tr)
	var initReq mcp.InitializeRequest
	initReq.Params.ClientInfo = mcp.Implementation{Name: "example-client", Version: "1.0.0"}
	if _, err := onA.Initialize(ctx, initReq); err != nil {
		log.Fatal(err)
	}
	sid := onA.GetSessionId()

	// Call on B with the same session ID.
	tr, err = transport.NewStreamableHTTP(urls[1], transport.WithSession(sid))
	if err != nil {
		log.Fatal(err)
	}
	onB := client.NewClient(tr, client.WithSession(), client.WithProtocolVersion(mcp.LATEST_LEGACY_PROTOCOL_VERSION))
	var call mcp.CallToolRequest
	call.Params.Name = "whoami"
	res, err := onB.CallTool(ctx, call)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("tools/call served by", res.Content[0].(mcp.TextContent).Text)

	// End the session on A (the client's DELETE): B refuses it.
	if err := onA.Close(); err != nil {
		log.Fatal(err)
	}
	_, err = onB.CallTool(ctx, call)
	fmt.Println("session terminated on B after DELETE on A:", errors.Is(err, transport.ErrSessionTerminated))
	// Output:
	// tools/call served by B
	// session terminated on B after DELETE on A: true
}
