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
