package main

import (
	"strings"
	"testing"

	"github.com/agentsessions/agentsessions/internal/testdb"
)

// --direct-database-url (or its environment variable) reaches the store's
// Config.DirectDatabaseURL: one that does not parse stops serve before it
// listens, without repeating the URL (it may hold a password). Its use
// through PgBouncer is tested in sessions/pgxstore (pgbouncer_test.go).
func TestServeDirectDatabaseURL(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	out := wantCLI(t, exitError, "Config.DirectDatabaseURL is not a valid connection string",
		"serve", "--direct-database-url", "postgres://user:hunter2@%zz")
	t.Setenv(envDirectDatabaseURL, "postgres://user:hunter2@%zz")
	out += wantCLI(t, exitError, "Config.DirectDatabaseURL is not a valid connection string", "serve")
	if strings.Contains(out, "hunter2") {
		t.Fatalf("the password of the direct URL was printed: %q", out)
	}
}
