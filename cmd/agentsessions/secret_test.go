package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
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
	store, err := pgxstore.New(d.Pool(t), nil)
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

// The two-phase rotation of SECURITY.md with the CLI: a phase-1 call
// (old secret, next one verify-only) and a phase-2 call (next secret, old
// one verify-only) accept each other's tokens; --verify-secret-file is
// repeatable, and --previous-secret-file still works as its old name.
func TestVerifySecretFileRotation(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, "")
	oldFile := writeFile(t, "old.key", testSecret+"\n", 0o600)
	nextFile := writeFile(t, "next.key", testSecret2+"\n", 0o600)
	otherFile := writeFile(t, "other.key", "cli-test-secret-other-0123456789abcdef-0\n", 0o600)
	phase1 := []string{"--secret-file", oldFile, "--verify-secret-file", nextFile}
	phase2 := []string{"--secret-file", nextFile, "--verify-secret-file", oldFile}
	issue := func(secretArgs []string) string {
		t.Helper()
		out := mustCLI(t, append([]string{"issue", "--agent", agentA, "--json"}, secretArgs...)...)
		return strictJSON[server.IssuedResponse](t, out).Token
	}

	tok1, tok2 := issue(phase1), issue(phase2)
	for _, tok := range []string{tok1, tok2} {
		for _, args := range [][]string{phase1, phase2} {
			mustCLI(t, append([]string{"verify", "--agent", agentA, "--token", tok}, args...)...)
		}
	}
	// Phase 0 (old secret only) rejects the phase-2 token: why phase 1 comes first.
	wantCLI(t, exitError, "not signed with this secret", "verify", "--token", tok2, "--secret-file", oldFile)

	// Repeatable: the token verifies when its secret is the second of two.
	mustCLI(t, "verify", "--token", tok1, "--secret-file", nextFile,
		"--verify-secret-file", otherFile, "--verify-secret-file", oldFile)
	// The old name, alone and mixed with the new one, with a warning.
	mustCLI(t, "verify", "--token", tok1, "--secret-file", nextFile,
		"--verify-secret-file", otherFile, "--previous-secret-file", oldFile)
	code, _, errOut := cli(t, "verify", "--token", tok1, "--secret-file", nextFile, "--previous-secret-file", oldFile)
	if code != exitOK || !strings.Contains(errOut, "--previous-secret-file is the old name of --verify-secret-file") {
		t.Fatalf("--previous-secret-file: exit %d, stderr %q", code, errOut)
	}
	// Help shows the new flag, not the old name.
	_, help, _ := cli(t, "verify", "--help")
	if !strings.Contains(help, "--verify-secret-file") || strings.Contains(help, "--previous-secret-file") {
		t.Fatalf("verify --help:\n%s", help)
	}
}
