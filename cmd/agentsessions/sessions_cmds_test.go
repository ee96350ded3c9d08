package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

const (
	agentA = "did:agentmesh:planner"
	agentB = "did:agentmesh:critic"
)

// testSecret is 40 bytes; testSecret2 another valid secret.
const (
	testSecret  = "cli-test-secret-0123456789abcdef-0123456"
	testSecret2 = "cli-test-secret-two-0123456789abcdef-012"
)

// cliIn is cli with standard input.
func cliIn(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := runIO(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// writeFile writes content to a new file in the test's temp dir with mode.
func writeFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

// mustCLI runs the command and fails the test unless it exits 0.
func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := cli(t, args...)
	if code != exitOK {
		t.Fatalf("%v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
	}
	return out
}

// wantCLI runs the command and fails the test unless it exits code with
// wantErr in its standard error.
func wantCLI(t *testing.T, code int, wantErr string, args ...string) string {
	t.Helper()
	got, out, errOut := cli(t, args...)
	if got != code || !strings.Contains(errOut, wantErr) {
		t.Fatalf("%v: exit %d, stdout %q, stderr %q; want exit %d and %q", args, got, out, errOut, code, wantErr)
	}
	return out + errOut
}

// strictJSON decodes out into T, refusing unknown fields: the --json shape
// is exactly the documented one.
func strictJSON[T any](t *testing.T, out string) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	return v
}

func TestSessionCommands(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)

	// issue: a table by default, JSON with --json.
	out := mustCLI(t, "issue", "--agent", agentA, "--metadata", "client=cli", "--metadata", "note=a=b")
	for _, want := range []string{"token ", "session ", "agent  ", agentA, "issued at ", "expires at ", `metadata    {"client":"cli","note":"a=b"}`} {
		if !strings.Contains(out, want) {
			t.Fatalf("issue table lacks %q:\n%s", want, out)
		}
	}
	first := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentA, "--json"))
	if first.Token == "" || first.Session.AgentID != agentA || first.Session.ID == "" || first.Evicted != nil {
		t.Fatalf("issue --json: %+v", first)
	}
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`).MatchString(first.Session.ExpiresAt) {
		t.Fatalf("expires_at %q is not RFC 3339 UTC", first.Session.ExpiresAt)
	}

	// verify: by flag, from standard input, with and without --agent.
	out = mustCLI(t, "verify", "--token", first.Token)
	if !strings.Contains(out, first.Session.ID) || strings.Contains(out, first.Token) {
		t.Fatalf("verify table: %q", out)
	}
	code, out, errOut := cliIn(t, first.Token+"\n", "verify", "--agent", agentA, "--token", "-", "--json")
	if code != exitOK {
		t.Fatalf("verify --token -: exit %d %q", code, errOut)
	}
	if v := strictJSON[server.SessionResponse](t, out); v.Session.ID != first.Session.ID {
		t.Fatalf("verify --json: %+v", v)
	}

	// Rejected tokens exit 1 and say why.
	wantCLI(t, exitError, "token rejected: it belongs to another agent", "verify", "--agent", agentB, "--token", first.Token)
	wantCLI(t, exitError, "token rejected: it is malformed or not signed with this secret", "verify", "--token", "garbage")
	wantCLI(t, exitError, "token rejected: it is malformed or not signed with this secret", "verify", "--token", first.Token+"x")

	// list: oldest first.
	out = mustCLI(t, "list", "--agent", agentA)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`^SESSION +ISSUED AT +EXPIRES AT +METADATA$`).MatchString(lines[0]) ||
		!strings.Contains(out, `{"client":"cli","note":"a=b"}`) || !strings.Contains(out, first.Session.ID+"  ") {
		t.Fatalf("list table:\n%s", out)
	}
	list := strictJSON[server.SessionsResponse](t, mustCLI(t, "list", "--agent", agentA, "--json"))
	if len(list.Sessions) != 2 || (list.Sessions[0].ID != first.Session.ID && list.Sessions[1].ID != first.Session.ID) {
		t.Fatalf("list --json: %+v", list)
	}

	// refresh: same session, new token; the old token is rejected.
	ref := strictJSON[server.IssuedResponse](t, mustCLI(t, "refresh", "--agent", agentA, "--token", first.Token, "--json", "--ttl", "2h"))
	if ref.Session.ID != first.Session.ID || ref.Token == first.Token || ref.Session.ExpiresAt <= first.Session.ExpiresAt {
		t.Fatalf("refresh: %+v after %+v", ref, first)
	}
	wantCLI(t, exitError, "token rejected", "verify", "--token", first.Token)
	mustCLI(t, "verify", "--token", ref.Token, "--agent", agentA)
	code, out, _ = cliIn(t, ref.Token, "refresh", "--agent", agentA, "--token", "-", "--ttl", "2h")
	if code != exitOK || !strings.Contains(out, "token ") {
		t.Fatalf("refresh --token -: %d %q", code, out)
	}

	// revoke one session, then the agent's others.
	if out := mustCLI(t, "revoke", "--session", first.Session.ID); out != "revoked session "+first.Session.ID+"\n" {
		t.Fatalf("revoke: %q", out)
	}
	// Revoked already: not found, exit 1 (the --json shape is TestRevokeUnknownSession's).
	wantCLI(t, exitError, "session "+first.Session.ID+" not found", "revoke", "--session", first.Session.ID)
	wantCLI(t, exitError, "token rejected: unknown session", "verify", "--token", ref.Token)
	mustCLI(t, "issue", "--agent", agentB)
	mustCLI(t, "issue", "--agent", agentB)
	if out := mustCLI(t, "revoke", "--agent", agentB); out != "revoked 2 sessions of agent "+agentB+"\n" {
		t.Fatalf("revoke --agent: %q", out)
	}
	mustCLI(t, "issue", "--agent", agentB)
	if v := strictJSON[server.RevokedResponse](t, mustCLI(t, "revoke", "--agent", agentA, "--json")); v.Revoked != 1 {
		t.Fatalf("revoke --agent --json: %+v", v)
	}
	if out := mustCLI(t, "revoke", "--agent", agentB); out != "revoked 1 session of agent "+agentB+"\n" {
		t.Fatalf("revoke --agent: %q", out)
	}
	mustCLI(t, "issue", "--agent", agentB)
	if out := mustCLI(t, "revoke", "--agent", agentA); out != "revoked 0 sessions of agent "+agentA+"\n" {
		t.Fatalf("revoke --agent: %q", out)
	}
	if out := mustCLI(t, "list", "--agent", agentA); !strings.Contains(out, "no live sessions for agent "+agentA) {
		t.Fatalf("list after revoke: %q", out)
	}
	if out := mustCLI(t, "list", "--agent", agentA, "--json"); strings.TrimSpace(out) != "{\n  \"sessions\": []\n}" {
		t.Fatalf("empty list --json: %q", out)
	}
	if list := strictJSON[server.SessionsResponse](t, mustCLI(t, "list", "--agent", agentB, "--json")); len(list.Sessions) != 1 {
		t.Fatalf("the other agent's session: %+v", list)
	}
}

func TestLimitCommands(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)

	if out := mustCLI(t, "limits", "list"); !strings.Contains(out, "no per-agent overrides") {
		t.Fatalf("limits list, empty: %q", out)
	}
	if out := mustCLI(t, "limits", "list", "--json"); strings.TrimSpace(out) != "{\n  \"limits\": []\n}" {
		t.Fatalf("limits list --json, empty: %q", out)
	}
	if out := mustCLI(t, "limits", "get", "--agent", agentA); !strings.Contains(out, "agent "+agentA+": limit 5 (no override") {
		t.Fatalf("limits get: %q", out)
	}
	if out := mustCLI(t, "limits", "get", "--agent", agentA, "--default-limit", "8"); !strings.Contains(out, "limit 8 (no override") {
		t.Fatalf("limits get --default-limit: %q", out)
	}
	if out := mustCLI(t, "limits", "set", "--agent", agentA, "--limit", "2"); out != "agent "+agentA+": limit 2 (override)\n" {
		t.Fatalf("limits set: %q", out)
	}
	mustCLI(t, "limits", "set", "--agent", agentB, "--limit", "7")
	v := strictJSON[server.LimitResponse](t, mustCLI(t, "limits", "get", "--agent", agentA, "--json"))
	if v != (server.LimitResponse{AgentID: agentA, Limit: 2, Override: true}) {
		t.Fatalf("limits get --json: %+v", v)
	}
	if out := mustCLI(t, "limits", "list"); !regexp.MustCompile(`(?s)^AGENT\s+LIMIT\n` + agentB + `\s+7\n` + agentA + `\s+2\n$`).MatchString(out) {
		t.Fatalf("limits list:\n%s", out)
	}
	ll := strictJSON[limitsList](t, mustCLI(t, "limits", "list", "--json"))
	if len(ll.Limits) != 2 || ll.Limits[0] != (limitOverride{agentB, 7}) || ll.Limits[1] != (limitOverride{agentA, 2}) {
		t.Fatalf("limits list --json: %+v", ll)
	}

	// The override applies to issue; the error says what to do.
	oldest := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentA, "--json"))
	second := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentA, "--json"))
	msg := wantCLI(t, exitError, `agent "`+agentA+`" already holds its limit of 2 live sessions`, "issue", "--agent", agentA)
	for _, hint := range []string{"agentsessions revoke --session ID", "agentsessions limits set --agent " + agentA + " --limit N", "--policy evict-oldest"} {
		if !strings.Contains(msg, hint) {
			t.Fatalf("limit error lacks %q: %s", hint, msg)
		}
	}
	// evict-oldest makes room (the two were issued within one second:
	// either may count as the oldest).
	iss := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentA, "--policy", "evict-oldest", "--json"))
	if len(iss.Evicted) != 1 || (iss.Evicted[0] != oldest.Session.ID && iss.Evicted[0] != second.Session.ID) {
		t.Fatalf("evicted %v, want one of %s, %s", iss.Evicted, oldest.Session.ID, second.Session.ID)
	}
	if out := mustCLI(t, "issue", "--agent", agentA, "--policy", "evict-oldest"); !strings.Contains(out, "evicted ") {
		t.Fatalf("issue table lacks the evicted line: %q", out)
	}

	v = strictJSON[server.LimitResponse](t, mustCLI(t, "limits", "delete", "--agent", agentA, "--json"))
	if v != (server.LimitResponse{AgentID: agentA, Limit: 5, Override: false}) {
		t.Fatalf("limits delete --json: %+v", v)
	}
	mustCLI(t, "limits", "delete", "--agent", agentA) // idempotent
	mustCLI(t, "issue", "--agent", agentA)            // back to the default 5
	wantCLI(t, exitUsage, "--limit must be >= 1", "limits", "set", "--agent", agentA, "--limit", "0")
	wantCLI(t, exitUsage, "invalid limit", "limits", "set", "--agent", agentA, "--limit", "4294967296")
}

// Secrets come only from a file or the environment, must be at least 32
// bytes, and never appear in any output.
func TestSecretRules(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, "")
	var outputs strings.Builder
	record := func(code int, out, errOut string) (int, string, string) {
		outputs.WriteString(out + errOut)
		return code, out, errOut
	}

	// No secret: usage error saying how to make one.
	code, _, errOut := record(cli(t, "issue", "--agent", agentA))
	if code != exitUsage || !strings.Contains(errOut, "no signing secret: pass --secret-file PATH or set AGENTSESSIONS_SECRET") ||
		!strings.Contains(errOut, "head -c 32 /dev/urandom") {
		t.Fatalf("no secret: %d %q", code, errOut)
	}
	// There is no flag that takes the secret itself.
	for _, flag := range []string{"--secret", "--secret-key"} {
		if code, _, errOut := record(cli(t, "issue", "--agent", agentA, flag, testSecret)); code != exitUsage || !strings.Contains(errOut, "unknown flag") {
			t.Fatalf("%s: %d %q", flag, code, errOut)
		}
	}

	short := strings.Repeat("s", 31)
	t.Setenv(envSecret, short)
	for _, args := range [][]string{
		{"issue", "--agent", agentA},
		{"verify", "--token", "x.y"},
		{"refresh", "--agent", agentA, "--token", "x.y"},
		{"serve", "--addr", "127.0.0.1:0"},
	} {
		code, _, errOut := record(cli(t, args...))
		if code != exitUsage || !strings.Contains(errOut, "the secret from $AGENTSESSIONS_SECRET is 31 bytes; use at least 32") {
			t.Fatalf("%v with a 31-byte secret: %d %q", args, code, errOut)
		}
	}
	t.Setenv(envSecret, "")
	shortFile := writeFile(t, "short.key", short+"\n", 0o600)
	code, _, errOut = record(cli(t, "issue", "--agent", agentA, "--secret-file", shortFile))
	if code != exitUsage || !strings.Contains(errOut, "is 31 bytes") {
		t.Fatalf("31-byte secret file: %d %q", code, errOut)
	}
	code, _, errOut = record(cli(t, "issue", "--agent", agentA, "--secret-file", filepath.Join(t.TempDir(), "missing")))
	if code != exitUsage || !strings.Contains(errOut, "cannot read --secret-file") {
		t.Fatalf("missing secret file: %d %q", code, errOut)
	}

	// Exactly 32 bytes plus the newline an editor adds: accepted.
	exact := strings.Repeat("e", 32)
	exactFile := writeFile(t, "exact.key", exact+"\n", 0o600)
	code, out, errOut := record(cli(t, "issue", "--agent", agentA, "--secret-file", exactFile, "--json"))
	if code != exitOK || errOut != "" {
		t.Fatalf("32-byte secret file: %d %q", code, errOut)
	}
	tok := strictJSON[server.IssuedResponse](t, out).Token
	// The file's bytes are the secret: the same bytes in the environment
	// verify the token.
	t.Setenv(envSecret, exact)
	if code, _, errOut := record(cli(t, "verify", "--token", tok)); code != exitOK {
		t.Fatalf("verify with the same secret from the environment: %d %q", code, errOut)
	}
	// --secret-file wins over the environment.
	t.Setenv(envSecret, testSecret2)
	if code, _, errOut := record(cli(t, "verify", "--token", tok, "--secret-file", exactFile)); code != exitOK {
		t.Fatalf("--secret-file over $%s: %d %q", envSecret, code, errOut)
	}

	// A secret file others can read works, with a warning.
	loose := writeFile(t, "loose.key", testSecret, 0o644)
	code, _, errOut = record(cli(t, "issue", "--agent", agentB, "--secret-file", loose))
	if code != exitOK || !strings.Contains(errOut, "warning: --secret-file "+loose+" is readable by group or others (mode 0644); chmod 600 it") {
		t.Fatalf("group-readable secret: %d %q", code, errOut)
	}

	// Rotation: a token signed with the old secret verifies with the new
	// one only while the old one is given as a previous secret.
	oldFile := writeFile(t, "old.key", testSecret, 0o600)
	newFile := writeFile(t, "new.key", testSecret2, 0o600)
	code, out, _ = record(cli(t, "issue", "--agent", agentB, "--secret-file", oldFile, "--json"))
	if code != exitOK {
		t.Fatal("issue with the old secret failed")
	}
	oldTok := strictJSON[server.IssuedResponse](t, out).Token
	code, _, errOut = record(cli(t, "verify", "--token", oldTok, "--secret-file", newFile))
	if code != exitError || !strings.Contains(errOut, "not signed with this secret") {
		t.Fatalf("old token, new secret: %d %q", code, errOut)
	}
	if code, _, errOut := record(cli(t, "verify", "--token", oldTok, "--secret-file", newFile, "--previous-secret-file", oldFile)); code != exitOK {
		t.Fatalf("old token, new secret, old as previous: %d %q", code, errOut)
	}
	// A refresh re-signs it with the new secret. (--ttl 2h moves the
	// expiry: a refresh that would not move it returns the token as is.)
	code, out, _ = record(cli(t, "refresh", "--agent", agentB, "--token", oldTok, "--secret-file", newFile,
		"--previous-secret-file", oldFile, "--json", "--ttl", "2h"))
	if code != exitOK {
		t.Fatalf("refresh during rotation: %d", code)
	}
	newTok := strictJSON[server.IssuedResponse](t, out).Token
	if code, _, _ := record(cli(t, "verify", "--token", newTok, "--secret-file", newFile)); code != exitOK {
		t.Fatal("refreshed token does not verify with the new secret alone")
	}
	code, _, errOut = record(cli(t, "verify", "--token", newTok, "--secret-file", newFile, "--previous-secret-file", shortFile))
	if code != exitUsage || !strings.Contains(errOut, "verify-only secrets must be >= 32 bytes") {
		t.Fatalf("short previous secret: %d %q", code, errOut)
	}

	all := outputs.String()
	for what, s := range map[string]string{"31-byte secret": short, "32-byte secret": exact, "secret": testSecret, "secret two": testSecret2} {
		if strings.Contains(all, s) {
			t.Errorf("the %s appears in the output:\n%s", what, all)
		}
	}
}

// Usage errors exit 2 before anything connects (no database is given).
func TestSessionUsageErrors(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	t.Setenv(envSecret, testSecret)
	for _, c := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"issue"}, "", "--agent is required"},
		{[]string{"issue", "--agent", "a\x01b"}, "", "--agent: invalid agent id"},
		{[]string{"issue", "--agent", strings.Repeat("a", 513)}, "", "--agent: invalid agent id"},
		{[]string{"issue", "--agent", "a", "--metadata", "novalue"}, "", `--metadata "novalue": want KEY=VALUE`},
		{[]string{"issue", "--agent", "a", "--metadata", "=v"}, "", "non-empty KEY"},
		{[]string{"issue", "--agent", "a", "--metadata", "k=1", "--metadata", "k=2"}, "", `key "k" given twice`},
		{[]string{"issue", "--agent", "a", "--ttl", "1500ms"}, "", "--ttl must be whole seconds"},
		{[]string{"issue", "--agent", "a", "--ttl", "0s"}, "", "--ttl must be at least 1s"},
		{[]string{"issue", "--agent", "a", "--limit", "0"}, "", "--limit must be >= 1"},
		{[]string{"issue", "--agent", "a", "--policy", "lru"}, "", "--policy must be reject, evict-oldest or evict-least-recently-used"},
		{[]string{"issue", "--agent", "a", "--ttl", "2h", "--max-lifetime", "1h"}, "", "--max-lifetime (1h0m0s) must not be below --ttl (2h0m0s)"},
		{[]string{"issue", "--agent", "a"}, "", "no database: pass --database-url or set DATABASE_URL"},
		{[]string{"issue", "--agent", "a", "extra"}, "", "accepts 0 arg(s)"},
		{[]string{"verify"}, "", "--token is required"},
		{[]string{"verify", "--token", "-"}, "", "standard input is empty"},
		{[]string{"verify", "--token", "-"}, "\n\n", "standard input is empty"},
		{[]string{"verify", "--token", "t", "--agent", "a\nb"}, "", "--agent: invalid agent id"},
		{[]string{"refresh", "--token", "t"}, "", "--agent is required"},
		{[]string{"refresh", "--agent", "a"}, "", "--token is required"},
		{[]string{"refresh", "--agent", "a", "--token", "t", "--ttl", "-1s"}, "", "--ttl must be at least 1s"},
		{[]string{"revoke"}, "", "pass exactly one of --session ID or --agent AGENT"},
		{[]string{"revoke", "--session", "s", "--agent", "a"}, "", "pass exactly one of --session ID or --agent AGENT"},
		{[]string{"revoke", "--session", "s"}, "", "no database"},
		{[]string{"list"}, "", "--agent is required"},
		{[]string{"limits"}, "", "limits needs a subcommand: set, get, delete or list"},
		{[]string{"limits", "raise"}, "", `unknown limits subcommand "raise"`},
		{[]string{"limits", "set", "--agent", "a"}, "", "--limit N is required"},
		{[]string{"limits", "set", "--limit", "3"}, "", "--agent is required"},
		{[]string{"limits", "get", "--agent", "a", "--default-limit", "0"}, "", "--default-limit must be >= 1"},
		{[]string{"limits", "list"}, "", "no database"},
		{[]string{"serve", "--shutdown-timeout", "0s"}, "", "--shutdown-timeout must be > 0"},
		{[]string{"serve", "--log-format", "xml"}, "", "--log-format must be text or json"},
		{[]string{"serve", "--log-level", "loud"}, "", "--log-level must be debug, info, warn or error"},
		{[]string{"serve", "--policy", "random"}, "", "--policy must be reject, evict-oldest or evict-least-recently-used"},
		{[]string{"bogus"}, "", "unknown command"},
	} {
		code, out, errOut := cliIn(t, c.stdin, c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) || !strings.Contains(errOut, "Run 'agentsessions --help' for usage.") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and %q", c.args, code, out, errOut, c.want)
		}
	}
}

// Errors found by the library after connecting are usage errors too when
// the input was wrong; a store failure says what to check.
func TestLibraryErrorsExplained(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	wantCLI(t, exitUsage, "invalid session metadata", "issue", "--agent", agentA, "--metadata", "k="+strings.Repeat("v", 2000))

	// An un-migrated database: the store fails and the message says so.
	empty := testdb.NewEmpty(t)
	wantCLI(t, exitError, "is the database up and migrated? try 'agentsessions migrate status'",
		"issue", "--agent", agentA, "--database-url", empty.URL)
	wantCLI(t, exitError, "cannot reach the database",
		"list", "--agent", agentA, "--database-url", "postgres://postgres@127.0.0.1:1/x?connect_timeout=2")
}

// revoke --session of a session that does not exist says so and exits 1,
// with --json too ({"session_id", "revoked": false} on stdout); a real
// revoke prints {"session_id", "revoked": true} and exits 0.
func TestRevokeUnknownSession(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	type revoked struct {
		SessionID string `json:"session_id"`
		Revoked   bool   `json:"revoked"`
	}

	code, out, errOut := cli(t, "revoke", "--session", "no-such-session")
	if code != exitError || strings.Contains(out, "revoked") ||
		!strings.Contains(errOut, "session no-such-session not found: nothing revoked") {
		t.Fatalf("unknown session: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = cli(t, "revoke", "--session", "no-such-session", "--json")
	if v := strictJSON[revoked](t, out); code != exitError || v != (revoked{"no-such-session", false}) || !strings.Contains(errOut, "not found") {
		t.Fatalf("unknown session --json: exit %d, %+v, stderr %q", code, v, errOut)
	}

	iss := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentA, "--json"))
	if v := strictJSON[revoked](t, mustCLI(t, "revoke", "--session", iss.Session.ID, "--json")); v != (revoked{iss.Session.ID, true}) {
		t.Fatalf("revoke --json: %+v", v)
	}
	// Revoking it again: it is gone.
	code, out, _ = cli(t, "revoke", "--session", iss.Session.ID, "--json")
	if v := strictJSON[revoked](t, out); code != exitError || v.Revoked {
		t.Fatalf("second revoke: exit %d, %+v", code, v)
	}
}

// limits --kind manages the per-principal limits of a kind of state
// handle: the same table, its own key; a Handles of that kind applies
// them, and agent sessions' limits are untouched.
func TestLimitCommandsPerKind(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	if out := mustCLI(t, "limits", "set", "--agent", agentA, "--kind", "basket", "--limit", "1"); out != "agent "+agentA+": limit 1 (override)\n" {
		t.Fatalf("limits set --kind basket: %q", out)
	}
	if out := mustCLI(t, "limits", "get", "--agent", agentA); !strings.Contains(out, "limit 5 (no override") {
		t.Fatalf("the agent's session limit changed with its basket limit: %q", out)
	}
	ll := strictJSON[limitsList](t, mustCLI(t, "limits", "list", "--kind", "basket", "--json"))
	if len(ll.Limits) != 1 || ll.Limits[0] != (limitOverride{agentA, 1}) {
		t.Fatalf("limits list --kind basket: %+v", ll)
	}
	if out := mustCLI(t, "limits", "list"); !strings.Contains(out, "no per-agent overrides") {
		t.Fatalf("session overrides listed a basket one: %q", out)
	}
	// A Handles of kind basket, on the same database, applies it.
	pool := d.Pool(t)
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: []byte(testSecret), TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	h, err := sessions.NewHandles(m, sessions.HandleKind{Name: "basket", TTL: time.Hour, Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Create(t.Context(), agentA, "basket"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Create(t.Context(), agentA, "basket"); !errors.Is(err, sessions.ErrLimitExceeded) {
		t.Fatalf("second basket under the CLI's override of 1: %v", err)
	}
	mustCLI(t, "limits", "delete", "--agent", agentA, "--kind", "basket")
	if _, err := h.Create(t.Context(), agentA, "basket"); err != nil {
		t.Fatalf("after the override is deleted, the kind's limit of 3 applies: %v", err)
	}
	wantCLI(t, exitUsage, "--kind", "limits", "get", "--agent", agentA, "--kind", "Not A Kind")
}

// revoke-others: the token's other sessions go, its own stays; a token of
// another agent is rejected (exit 1); JSON says how many.
func TestRevokeOthersCommand(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	mine := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentA, "--json"))
	gone := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentA, "--json"))
	theirs := strictJSON[server.IssuedResponse](t, mustCLI(t, "issue", "--agent", agentB, "--json"))
	if got := strictJSON[server.RevokedResponse](t, mustCLI(t, "revoke-others", "--agent", agentA, "--token", mine.Token, "--json")); got.Revoked != 1 {
		t.Fatalf("revoke-others --json: %+v, want 1", got)
	}
	mustCLI(t, "verify", "--agent", agentA, "--token", mine.Token)
	mustCLI(t, "verify", "--agent", agentB, "--token", theirs.Token)
	wantCLI(t, exitError, "", "verify", "--agent", agentA, "--token", gone.Token)
	if out := mustCLI(t, "revoke-others", "--agent", agentA, "--token", mine.Token); out != "revoked 0 other sessions of agent "+agentA+"\n" {
		t.Fatalf("second revoke-others: %q", out)
	}
	wantCLI(t, exitError, "", "revoke-others", "--agent", agentA, "--token", theirs.Token)
	mustCLI(t, "verify", "--agent", agentB, "--token", theirs.Token)
}
