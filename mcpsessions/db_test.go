package mcpsessions_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// This module cannot import the parent module's internal/testdb, so it does
// the same here: every test gets a fresh schema on the server named by
// TEST_DATABASE_URL, migrated with migrations.Up and dropped afterwards.

const skipMessage = "mcpsessions: TEST_DATABASE_URL is not set: SKIPPING every PostgreSQL test of this module. " +
	"From mcpsessions/, run: TEST_DATABASE_URL=$(../scripts/devdb.sh agentsessions_test) go test -race ./..."

// TestMain skips the PostgreSQL tests, loudly, when TEST_DATABASE_URL is
// unset; under CI (the CI environment variable set, as CI services do) it
// fails instead, so a CI run cannot pass without them.
func TestMain(m *testing.M) {
	if os.Getenv("TEST_DATABASE_URL") == "" {
		fmt.Fprintln(os.Stderr, "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!")
		fmt.Fprintln(os.Stderr, "!!! "+skipMessage)
		fmt.Fprintln(os.Stderr, "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!")
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "mcpsessions: CI is set, so a missing TEST_DATABASE_URL is a failure")
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// testSecret is shared by every instance in a test, as in a deployment.
var testSecret = []byte("mcpsessions-test-secret-0123456789abcdef")

// testDB is one test's schema.
type testDB struct {
	url    string // with search_path set to the schema
	schema string
}

// newDB creates a migrated schema, dropped when the test ends. It skips the
// test only when TEST_DATABASE_URL is unset.
func newDB(t testing.TB) *testDB {
	t.Helper()
	base := os.Getenv("TEST_DATABASE_URL")
	if base == "" {
		t.Skip(skipMessage)
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to TEST_DATABASE_URL: %v", err)
	}
	defer admin.Close(ctx)
	var b [8]byte
	_, _ = rand.Read(b[:])
	schema := "mcp_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	u, err := withSearchPath(base, schema)
	if err != nil {
		t.Fatal(err)
	}
	d := &testDB{url: u, schema: schema}
	p := d.pool(t)
	if err := migrations.Up(ctx, p); err != nil {
		t.Fatalf("migrate %s: %v", schema, err)
	}
	return d
}

// pool opens a pool on the schema (one per simulated instance), closed when
// the test ends.
func (d *testDB) pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), d.url)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// rows counts the stored sessions, through its own connection.
func (d *testDB) rows(t testing.TB) int {
	t.Helper()
	c, err := pgx.Connect(context.Background(), d.url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(context.Background(), "SELECT count(*) FROM agent_sessions").Scan(&n); err != nil {
		t.Fatalf("count sessions: %v", err)
	}
	return n
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

func withSearchPath(connString, schema string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("parse TEST_DATABASE_URL: %w", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return connString + " search_path=" + schema, nil
}
