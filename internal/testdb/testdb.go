// Package testdb gives each test its own PostgreSQL schema on a real server.
//
// The server is TEST_DATABASE_URL when set. Otherwise one container per test
// binary is started with testcontainers-go's postgres module, from the image
// named by AGENTSESSIONS_POSTGRES_IMAGE (default postgres:16-alpine); call
// [Main] from TestMain so it is stopped when the tests end.
//
// Which of the two a test binary used is reported once, on stderr (seen with
// go test -v or when a test fails) and, when AGENTSESSIONS_TESTDB_LOG names a
// file, as one line appended to it ("<binary> container image=... addr=..."
// or "<binary> TEST_DATABASE_URL addr=..."; never a password), so a run over
// many packages can check the way each one took (make test-containers does).
//
// Each [New] creates a fresh schema and points every connection made through
// it there with search_path, so tests and packages can run in parallel on one
// database without seeing each other's rows or migration history.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"github.com/agentsessions/agentsessions/migrations"
)

// DefaultImage is the container image used when TEST_DATABASE_URL is unset
// and AGENTSESSIONS_POSTGRES_IMAGE does not name another.
const DefaultImage = "postgres:16-alpine"

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
	container  *tcpostgres.PostgresContainer
	adminPool  *pgxpool.Pool
)

// Main runs the tests, stops the container if one was started, and exits.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run runs the tests, then closes the harness's pool and stops the
// container, if one was started; it returns the exit code for os.Exit.
func Run(m *testing.M) int {
	code := m.Run()
	if adminPool != nil {
		adminPool.Close()
	}
	if container != nil {
		if err := testcontainers.TerminateContainer(container); err != nil {
			fmt.Fprintf(os.Stderr, "testdb: stopping container: %v\n", err)
		}
	}
	return code
}

func server(t testing.TB) (string, *pgxpool.Pool) {
	t.Helper()
	serverOnce.Do(func() {
		serverURL, serverErr = startServer()
		if serverErr == nil {
			adminPool, serverErr = pgxpool.New(context.Background(), serverURL)
		}
	})
	if serverErr != nil {
		t.Fatalf("testdb: no PostgreSQL for integration tests: %v\n"+
			"Set TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable) "+
			"or make a Docker engine available for testcontainers "+
			"(where none runs or no registry answers: eval \"$(scripts/containers.sh prepare postgres)\").", serverErr)
	}
	return serverURL, adminPool
}

func startServer() (string, error) {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		report("TEST_DATABASE_URL addr=" + hostPort(u))
		return u, nil
	}
	image := os.Getenv("AGENTSESSIONS_POSTGRES_IMAGE")
	if image == "" {
		image = DefaultImage
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithDatabase("agentsessions"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if c != nil {
		container = c
	}
	if err != nil {
		return "", fmt.Errorf("starting %s with testcontainers: %w", image, err)
	}
	u, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return "", fmt.Errorf("container %s: %w", image, err)
	}
	id := c.GetContainerID()
	if len(id) > 12 {
		id = id[:12]
	}
	report(fmt.Sprintf("container image=%s id=%s addr=%s started_in=%s",
		image, id, hostPort(u), time.Since(start).Round(10*time.Millisecond)))
	return u, nil
}

// report tells where this test binary's server came from: see the package
// doc. A log file that cannot be written is reported on stderr only.
func report(how string) {
	line := filepath.Base(os.Args[0]) + " " + how
	fmt.Fprintln(os.Stderr, "testdb: "+line)
	name := os.Getenv("AGENTSESSIONS_TESTDB_LOG")
	if name == "" {
		return
	}
	f, err := os.OpenFile(name, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		_, err = fmt.Fprintln(f, line)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testdb: AGENTSESSIONS_TESTDB_LOG: %v\n", err)
	}
}

// hostPort is the server's address in a connection string (URL or
// key=value form), without user or password; "?" when it cannot tell.
func hostPort(connString string) string {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
}

// DB is one test's schema.
type DB struct {
	// URL connects to the test server with search_path set to Schema.
	URL    string
	Schema string
}

// New creates an empty schema with the migrations applied and drops it when
// the test ends.
func New(t testing.TB) *DB {
	t.Helper()
	d := NewEmpty(t)
	p := d.Pool(t)
	sqlDB := stdlib.OpenDBFromPool(p)
	defer sqlDB.Close()
	// No session locker: the schema is this test's alone, and goose's
	// advisory lock is database-wide, which would serialise parallel tests.
	prov, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations.FS,
		goose.WithTableName(migrations.VersionTable), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatalf("testdb: goose provider: %v", err)
	}
	if _, err := prov.Up(context.Background()); err != nil {
		t.Fatalf("testdb: migrate %s: %v", d.Schema, err)
	}
	return d
}

// NewEmpty creates an empty schema (no migrations) and drops it when the
// test ends.
func NewEmpty(t testing.TB) *DB {
	t.Helper()
	base, admin := server(t)
	var b [8]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("testdb: create schema: %v", err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("testdb: drop schema %s: %v", schema, err)
		}
	})
	u, err := withSearchPath(base, schema)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return &DB{URL: u, Schema: schema}
}

// Pool opens a new pool on the schema, closed when the test ends. Each
// call stands in for one service instance.
func (d *DB) Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatalf("testdb: parse url: %v", err)
	}
	return d.PoolWith(t, cfg)
}

// PoolWith opens a pool from cfg (parsed from URL, then adjusted by the
// test), closed when the test ends.
func (d *DB) PoolWith(t testing.TB, cfg *pgxpool.Config) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("testdb: open pool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// Conn opens a single connection on the schema, closed when the test ends.
func (d *DB) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), d.URL)
	if err != nil {
		t.Fatalf("testdb: connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// withSearchPath adds search_path to a connection string in URL or
// key=value form; pgx sends it as a run-time parameter.
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
