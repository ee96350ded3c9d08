package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

// A service that loads the CLI's secret file with sessions.LoadSecretFile
// signs with the same bytes as the CLI: each accepts the other's tokens,
// whatever line ending the file has.
func TestSecretFileSharedWithLibrary(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, "")
	file := writeFile(t, "secret.key", testSecret+"\r\n\n", 0o600)

	secret, err := sessions.LoadSecretFile(file)
	if err != nil {
		t.Fatal(err)
	}
	store, err := sessions.NewPostgresStore(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: secret, TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	out := mustCLI(t, "issue", "--agent", agentA, "--secret-file", file, "--json")
	cliTok := strictJSON[server.IssuedResponse](t, out).Token
	if _, err := m.Authenticate(ctx, cliTok, agentA); err != nil {
		t.Fatalf("the library rejects the CLI's token: %v", err)
	}
	iss, err := m.Issue(ctx, agentA)
	if err != nil {
		t.Fatal(err)
	}
	mustCLI(t, "verify", "--agent", agentA, "--token", iss.Token, "--secret-file", file)
}

// An empty secret file is a usage error saying so, through the library's
// rule; the CLI's own 32-byte minimum still applies.
func TestSecretFileEmptyAndShort(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://127.0.0.1:1/x")
	t.Setenv(envSecret, "")
	empty := writeFile(t, "empty.key", "\n", 0o600)
	wantCLI(t, exitUsage, "--secret-file: secret file "+empty+" is empty", "issue", "--agent", agentA, "--secret-file", empty)
	short := writeFile(t, "short.key", strings.Repeat("s", 31)+"\n", 0o600)
	wantCLI(t, exitUsage, "is 31 bytes; use at least 32", "issue", "--agent", agentA, "--secret-file", short)
}
