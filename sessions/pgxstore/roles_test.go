package pgxstore_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// The runtime role SECURITY.md recommends (USAGE on the schema; SELECT,
// INSERT, DELETE and UPDATE of the expiry and digest on agent_sessions;
// SELECT on agent_limits; SELECT, INSERT and UPDATE of the count on
// agent_session_counts) can do everything a service instance does, and
// cannot change the schema, rewrite whose a session is, or change limits.
func TestLeastPrivilegeRuntimeRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	admin := d.Conn(t)
	role := "agentsessions_runtime_" + d.Schema
	for _, stmt := range []string{
		"CREATE ROLE " + role + " NOLOGIN",
		"GRANT USAGE ON SCHEMA " + d.Schema + " TO " + role,
		"GRANT SELECT, INSERT, DELETE, UPDATE (expires_at, token_digest) ON agent_sessions TO " + role,
		"GRANT SELECT ON agent_limits TO " + role,
		"GRANT SELECT, INSERT, UPDATE (stored, oldest_expiry) ON agent_session_counts TO " + role,
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, stmt := range []string{"DROP OWNED BY " + role, "DROP ROLE " + role} {
			if _, err := admin.Exec(context.Background(), stmt); err != nil {
				t.Errorf("%s: %v", stmt, err)
			}
		}
	})
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET ROLE "+role)
		return err
	}
	pool := d.PoolWith(t, cfg)
	store, _ := pgxstore.New(pool, nil)
	clock := newClock(1_700_000_000)
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 1, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	iss := mustIssue(t, m, agent)
	if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil {
		t.Fatal(err)
	}
	clock.Advance(10 * time.Second)
	if iss, err = m.Refresh(ctx, iss.Token, agent); err != nil {
		t.Fatal(err)
	}
	if list, err := m.List(ctx, agent); err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := m.AgentLimit(ctx, agent); err != nil {
		t.Fatal(err)
	}
	if err := m.SetAgentLimit(ctx, agent, 9); !errors.Is(err, sessions.ErrStore) {
		t.Errorf("runtime role could set a limit: %v", err)
	}
	if _, err := m.Revoke(ctx, iss.Session.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.RevokeAgent(ctx, agent); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Prune(ctx, pgxstore.PruneConfig{LockID: rand.Int64()}); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"UPDATE agent_sessions SET agent_id = 'someone-else'",
		"UPDATE agent_limits SET max_sessions = 1000",
		"DELETE FROM agent_limits",
		"DELETE FROM agent_session_counts",
		"UPDATE agent_session_counts SET agent_id = 'someone-else'",
		"TRUNCATE agent_sessions",
		"DROP TABLE agent_sessions",
		"CREATE TABLE t (x int)",
	} {
		_, err := pool.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "42501" && pgErr.Code != "42P01") {
			t.Errorf("runtime role could run %q: %v", stmt, err)
		}
	}
}
