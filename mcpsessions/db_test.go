package mcpsessions_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// The PostgreSQL tests run on the parent module's internal/testdb (a
// nested module may import its parent's internal packages): a fresh,
// migrated schema per test on TEST_DATABASE_URL, else a container.

// TestMain stops the container, if testdb started one.
func TestMain(m *testing.M) { testdb.Main(m) }

// testSecret is shared by every instance in a test, as in a deployment.
var testSecret = []byte("mcpsessions-test-secret-0123456789abcdef")

// testDB is one test's schema.
type testDB struct{ *testdb.DB }

// newDB creates a migrated schema, dropped when the test ends.
func newDB(t testing.TB) *testDB { return &testDB{testdb.New(t)} }

// pool opens a pool on the schema (one per simulated instance), closed when
// the test ends.
func (d *testDB) pool(t testing.TB) *pgxpool.Pool { return d.Pool(t) }

// rows counts the stored sessions, live or not.
func (d *testDB) rows(t testing.TB) int {
	t.Helper()
	res, err := db.New(d.Pool(t)).CheckLimit(context.Background(), math.MaxInt32)
	if err != nil {
		t.Fatalf("count sessions: %v", err)
	}
	return int(res.Rows)
}

// instance is what one service instance holds: its own pool and manager on
// the shared schema.
type instance struct {
	pool  *pgxpool.Pool
	store *pgxstore.Store
	mgr   *sessions.Manager
}

func (d *testDB) instance(t testing.TB, cfg sessions.Config) instance {
	t.Helper()
	p := d.pool(t)
	store, err := pgxstore.New(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	if cfg.TTL == 0 {
		cfg.TTL = time.Hour
	}
	if cfg.Limit == 0 {
		cfg.Limit = 5
	}
	m, err := sessions.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return instance{pool: p, store: store, mgr: m}
}
