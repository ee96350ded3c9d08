package migrations_test

import (
	"context"
	"database/sql"
	"io/fs"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/migrations"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// Several instances starting at once all run Up; the advisory lock makes
// them take turns, so every call succeeds and the schema is applied once.
func TestConcurrentUp(t *testing.T) {
	d := testdb.NewEmpty(t)
	const instances = 4
	errs := make([]error, instances)
	var wg sync.WaitGroup
	for i := range instances {
		pool := d.Pool(t)
		wg.Go(func() { errs[i] = migrations.Up(context.Background(), pool) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d: %v", i, err)
		}
	}
	var applied int
	err := d.Conn(t).QueryRow(context.Background(),
		"SELECT count(*) FROM "+migrations.VersionTable+" WHERE version_id > 0 AND is_applied").Scan(&applied)
	if err != nil {
		t.Fatal(err)
	}
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if applied != len(files) {
		t.Fatalf("%d applied migration rows, want one per file (%d)", applied, len(files))
	}
}

func TestUpDownUp(t *testing.T) {
	ctx := context.Background()
	d := testdb.NewEmpty(t)
	pool := d.Pool(t)
	for round := range 2 {
		if err := migrations.Up(ctx, pool); err != nil {
			t.Fatalf("round %d up: %v", round, err)
		}
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM agent_sessions").Scan(&n); err != nil {
			t.Fatalf("round %d: table missing after up: %v", round, err)
		}
		db := openSQL(t, pool)
		p, err := migrations.NewProvider(db)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.DownTo(ctx, 0); err != nil {
			t.Fatalf("round %d down: %v", round, err)
		}
		var exists bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass('agent_sessions') IS NOT NULL").Scan(&exists); err != nil || exists {
			t.Fatalf("round %d: table still there after down to 0 (%v)", round, err)
		}
	}
}

func openSQL(t *testing.T, pool *pgxpool.Pool) *sql.DB {
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { db.Close() })
	return db
}

// Migration 00005 (session kinds) leaves what was stored before it as it
// was: every session, count row and limit override becomes kind 'session'
// with the same values; down again drops the column and keeps them.
func TestSessionKindsMigrationKeepsSessions(t *testing.T) {
	ctx := context.Background()
	d := testdb.NewEmpty(t)
	pool := d.Pool(t)
	p, err := migrations.NewProvider(openSQL(t, pool))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 4); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`INSERT INTO agent_sessions (id, agent_id, issued_at, expires_at, token_digest)
		 VALUES ('s1', 'a', '2026-01-01Z', '2026-01-02Z', repeat('a', 64)), ('s2', 'a', '2026-01-01Z', '2026-01-03Z', repeat('b', 64))`,
		`INSERT INTO agent_session_counts (agent_id, stored, oldest_expiry) VALUES ('a', 2, '2026-01-02Z')`,
		`INSERT INTO agent_limits (agent_id, max_sessions) VALUES ('a', 7)`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	const state = `SELECT (SELECT string_agg(id || ':' || agent_id || ':' || expires_at::date, ',' ORDER BY id) FROM agent_sessions),
	                      (SELECT agent_id || ':' || stored || ':' || oldest_expiry::date FROM agent_session_counts),
	                      (SELECT agent_id || ':' || max_sessions FROM agent_limits)`
	var before [3]string
	if err := pool.QueryRow(ctx, state).Scan(&before[0], &before[1], &before[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 5); err != nil {
		t.Fatal(err)
	}
	var kinds string
	if err := pool.QueryRow(ctx, `SELECT string_agg(DISTINCT kind, ',') FROM (
		SELECT kind FROM agent_sessions UNION ALL SELECT kind FROM agent_session_counts UNION ALL SELECT kind FROM agent_limits) k`).Scan(&kinds); err != nil {
		t.Fatal(err)
	}
	if kinds != "session" {
		t.Fatalf("kinds after 00005: %q, want every row 'session'", kinds)
	}
	for _, step := range []string{"up", "down"} {
		var after [3]string
		if err := pool.QueryRow(ctx, state).Scan(&after[0], &after[1], &after[2]); err != nil {
			t.Fatal(err)
		}
		if after != before {
			t.Fatalf("after %s: %q, want %q", step, after, before)
		}
		if _, err := p.DownTo(ctx, 4); err != nil {
			t.Fatal(err)
		}
	}
}
