package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/migrations"
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

	_ = m.Revoke(ctx, issued.Session.ID)
	_, err = m.Authenticate(ctx, issued.Token, "did:agentmesh:planner")
	fmt.Println("after revoke:", errors.Is(err, sessions.ErrAccessDenied))
	// Output:
	// authenticated: true
	// second session: true
	// after revoke: true
}

// A service instance on PostgreSQL: migrate at start-up (safe from many
// instances at once), then share the store through a Manager.
func ExampleNewPostgresStore() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		log.Fatal(err)
	}
	store, err := sessions.NewPostgresStore(pool, nil)
	if err != nil {
		log.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte(os.Getenv("AGENTSESSIONS_SECRET")),
		TTL:    time.Hour,
		Limit:  5,
	})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := m.Issue(ctx, "did:agentmesh:planner"); err != nil {
		var le *sessions.LimitError
		if errors.As(err, &le) {
			log.Printf("agent %s already has %d sessions", le.AgentID, le.Limit)
		}
	}
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
