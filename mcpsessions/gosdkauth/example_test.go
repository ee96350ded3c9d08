package gosdkauth_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsessions/agentsessions/mcpsessions/gosdkauth"
	"github.com/agentsessions/agentsessions/sessions"
)

// withToken is an http.RoundTripper that sends a bearer token.
type withToken struct{ token string }

func (t withToken) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return http.DefaultTransport.RoundTrip(r)
}

// A Stateless go-sdk server behind RequireBearerToken, and a go-sdk client
// on protocol 2026-07-28 whose tool call is authorized by an agentsessions
// token. In production the manager is on pgxstore, shared by every
// instance.
func ExampleRequireBearerToken() {
	mgr, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("example-secret-0123456789abcdef!"), TTL: time.Hour, Limit: 5,
	})
	if err != nil {
		log.Fatal(err)
	}

	// The server.
	srv := mcp.NewServer(&mcp.Implementation{Name: "example", Version: "1.0.0"}, nil)
	srv.AddTool(&mcp.Tool{Name: "whoami", InputSchema: map[string]any{"type": "object"}},
		func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			s, _ := gosdkauth.SessionFromTokenInfo(req.Extra.TokenInfo)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s.AgentID}}}, nil
		})
	requireToken, err := gosdkauth.RequireBearerToken(mgr, gosdkauth.Options{})
	if err != nil {
		log.Fatal(err)
	}
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv },
		&mcp.StreamableHTTPOptions{Stateless: true})
	ts := httptest.NewServer(requireToken(handler))
	defer ts.Close()

	// The client, with a token issued to its agent.
	iss, err := mgr.Issue(context.Background(), "agent-7")
	if err != nil {
		log.Fatal(err)
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "example-client", Version: "1.0.0"}, nil)
	cs, err := client.Connect(context.Background(), &mcp.StreamableClientTransport{
		Endpoint:   ts.URL,
		HTTPClient: &http.Client{Transport: withToken{iss.Token}},
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "whoami"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("protocol:", cs.InitializeResult().ProtocolVersion)
	fmt.Println("whoami:", res.Content[0].(*mcp.TextContent).Text)

	// Without a valid token: 401 and a challenge.
	resp, err := http.Post(ts.URL, "application/json", nil)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	// Output:
	// protocol: 2026-07-28
	// whoami: agent-7
	// 401 Bearer
}
