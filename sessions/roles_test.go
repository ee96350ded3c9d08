package sessions_test

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
)

// The runtime role SECURITY.md recommends (USAGE on the schema; SELECT,
// INSERT, DELETE on agent_sessions; nothing else) can do everything the
// library does, and cannot change the schema or rewrite sessions.
func TestLeastPrivilegeRuntimeRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	admin := d.Conn(t)
	role := "agentsessions_runtime_" + d.Schema
	for _, stmt := range []string{
		"CREATE ROLE " + role + " NOLOGIN",
		"GRANT USAGE ON SCHEMA " + d.Schema + " TO " + role,
		"GRANT SELECT, INSERT, DELETE ON agent_sessions TO " + role,
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
	store, _ := sessions.NewPostgresStore(pool, nil)
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	iss := mustIssue(t, m, agent)
	if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil {
		t.Fatal(err)
	}
	if err := m.Revoke(ctx, iss.Session.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Prune(ctx, sessions.PruneConfig{LockID: rand.Int64()}); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"UPDATE agent_sessions SET expires_at = expires_at + interval '1 year'",
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
