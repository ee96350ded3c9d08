package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// Issue a session, authenticate its token, hit the limit, revoke.
func Example() {
	ctx := context.Background()
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("use-32-random-bytes-in-production"),
		TTL:    15 * time.Minute,
		Limit:  1,
	})
	if err != nil {
		log.Fatal(err)
	}

	issued, err := m.Issue(ctx, "did:agentmesh:planner")
	if err != nil {
		log.Fatal(err)
	}
	// Hand issued.Token to the agent; it presents it on later calls.
	s, err := m.Authenticate(ctx, issued.Token, "did:agentmesh:planner")
	fmt.Println("authenticated:", err == nil && s.ID == issued.Session.ID)

	_, err = m.Issue(ctx, "did:agentmesh:planner")
	fmt.Println("second session:", errors.Is(err, sessions.ErrLimitExceeded))

	_, _ = m.Revoke(ctx, issued.Session.ID)
	_, err = m.Authenticate(ctx, issued.Token, "did:agentmesh:planner")
	fmt.Println("after revoke:", errors.Is(err, sessions.ErrAccessDenied))
	// Output:
	// authenticated: true
	// second session: true
	// after revoke: true
}

// Telling failures apart: the caller's fault, the agent's, or the store's.
func ExampleManager_Authenticate() {
	m, _ := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("use-32-random-bytes-in-production"), TTL: time.Hour, Limit: 5,
	})
	_, err := m.Authenticate(context.Background(), "not-a-token", "did:agentmesh:planner")
	switch {
	case errors.Is(err, sessions.ErrInvalidTokenFormat), errors.Is(err, sessions.ErrInvalidSignature):
		fmt.Println("401: bad token")
	case errors.Is(err, sessions.ErrAccessDenied), errors.Is(err, sessions.ErrSessionExpired):
		fmt.Println("401: session not usable")
	case errors.Is(err, sessions.ErrStore):
		fmt.Println("503: try again")
	}
	// Output: 401: bad token
}

// Protect an agent-facing HTTP API: requests carry the session token as a
// bearer token and the agent ID in X-Agent-ID; handlers read the session
// from the request context.
func ExampleMiddleware() {
	ctx := context.Background()
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("use-32-random-bytes-in-production"),
		TTL:    15 * time.Minute,
		Limit:  2,
	})
	if err != nil {
		log.Fatal(err)
	}
	tools := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, _ := sessions.SessionFromContext(r.Context())
		fmt.Fprintf(w, "hello %s", s.AgentID)
	})
	srv := httptest.NewServer(sessions.Middleware(m, sessions.MiddlewareConfig{})(tools))
	defer srv.Close()

	issued, err := m.Issue(ctx, "did:agentmesh:planner")
	if err != nil {
		log.Fatal(err)
	}
	call := func(token, agentID string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/tools", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("X-Agent-ID", agentID)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, strings.TrimSpace(string(body)))
	}
	call(issued.Token, "did:agentmesh:planner")
	call(issued.Token, "did:agentmesh:critic")
	_, _ = m.Revoke(ctx, issued.Session.ID)
	call(issued.Token, "did:agentmesh:planner")
	// Output:
	// 200 hello did:agentmesh:planner
	// 403 {"error":{"code":"forbidden","message":"the token belongs to another agent than the one in the X-Agent-ID header"}}
	// 401 {"error":{"code":"unauthorized","message":"the session is unknown, revoked, or the token was superseded by a refresh"}}
}
