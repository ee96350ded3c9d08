package pgxstore_test

import (
	"context"
	"errors"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// A service instance on PostgreSQL: migrate at start-up (safe from many
// instances at once), then share the store through a Manager.
func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		log.Fatal(err)
	}
	store, err := pgxstore.New(pool, nil)
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
