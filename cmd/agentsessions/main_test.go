package main

import (
	"bytes"
	"context"
	"io/fs"
	"sort"
	"strings"
	"testing"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/migrations"
)

func TestMain(m *testing.M) { testdb.Main(m) }

// cli runs the command in-process and returns its exit status and output.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// embeddedMigrations lists the migration files in this binary, in order.
func embeddedMigrations(t *testing.T) []string {
	t.Helper()
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(names) < 2 {
		t.Fatalf("embedded migrations: %v %v", names, err)
	}
	sort.Strings(names)
	return names
}

func TestMigrateLifecycle(t *testing.T) {
	d := testdb.NewEmpty(t)
	conn := d.Conn(t)
	files := embeddedMigrations(t)
	latest, prev := files[len(files)-1], files[len(files)-2]
	version := func(file string) string { return strings.TrimLeft(strings.SplitN(file, "_", 2)[0], "0") }
	tableExists := func() bool {
		var ok bool
		if err := conn.QueryRow(context.Background(), "SELECT to_regclass('agent_sessions') IS NOT NULL").Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	step := func(wantOut string, args ...string) {
		t.Helper()
		code, out, errOut := cli(t, append(args, "--database-url", d.URL)...)
		if code != exitOK || !strings.Contains(out, wantOut) {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q; want %q in stdout", args, code, out, errOut, wantOut)
		}
	}
	step("0", "migrate", "version")
	step("pending", "migrate", "status")
	step("up   00001_create_agent_sessions.sql", "migrate", "up")
	if !tableExists() {
		t.Fatal("no agent_sessions table after up")
	}
	step("no pending migrations", "migrate", "up")
	step(version(latest)+"\n", "migrate", "version")
	step("applied", "migrate", "status")
	step("down 00001_create_agent_sessions.sql", "migrate", "down", "--to", "0")
	if tableExists() {
		t.Fatal("agent_sessions still there after down to 0")
	}
	step("0", "migrate", "version")
	step("up   "+latest, "migrate", "up")
	step("down "+latest, "migrate", "down")
	step(version(prev)+"\n", "migrate", "version")
	step("up   "+latest, "migrate", "up")
	if !tableExists() {
		t.Fatal("no agent_sessions table after second up")
	}
}

func TestMigrateDatabaseURLFromEnv(t *testing.T) {
	d := testdb.NewEmpty(t)
	t.Setenv("DATABASE_URL", d.URL)
	if code, out, errOut := cli(t, "migrate", "up"); code != exitOK || !strings.Contains(out, "up") {
		t.Fatalf("exit %d, %q %q", code, out, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate"}, "needs a subcommand"},
		{[]string{"migrate", "sideways"}, `unknown migrate subcommand "sideways"`},
		{[]string{"migrate", "up"}, "pass --database-url or set DATABASE_URL"},
		{[]string{"migrate", "up", "--nope"}, "unknown flag"},
		{[]string{"migrate", "down", "--to", "-1", "--database-url", "postgres://127.0.0.1:1/x"}, "--to must be >= 0"},
		{[]string{"prune", "--batch-size", "0", "--database-url", "postgres://127.0.0.1:1/x"}, "--batch-size must be between"},
	} {
		code, _, errOut := cli(t, c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", c.args, code, errOut, c.want)
		}
	}
}

func TestUnreachableDatabase(t *testing.T) {
	code, _, errOut := cli(t, "migrate", "up", "--database-url", "postgres://postgres@127.0.0.1:1/x?connect_timeout=2")
	if code != exitError || !strings.Contains(errOut, "cannot reach the database") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

// The database URL may carry a password: help must not print it.
func TestHelpDoesNotLeakDatabaseURL(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:hunter2@db/x")
	_, out, errOut := cli(t, "migrate", "up", "--help")
	if strings.Contains(out+errOut, "hunter2") {
		t.Fatal("help output contains the database password")
	}
}

func TestPrune(t *testing.T) {
	d := testdb.New(t)
	ctx := context.Background()
	conn := d.Conn(t)
	// Two expired rows and one that expires in a day.
	if _, err := conn.Exec(ctx, `INSERT INTO agent_sessions VALUES
		('a', 'x', now() - interval '2 hours', now() - interval '1 hour', repeat('0', 64)),
		('b', 'y', now() - interval '2 hours', now() - interval '1 second', repeat('0', 64)),
		('c', 'x', now(), now() + interval '1 day', repeat('0', 64))`); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := cli(t, "prune", "--batch-size", "1", "--database-url", d.URL)
	if code != exitOK || !strings.Contains(out, "deleted 2 expired sessions in 3 batches") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	var left []string
	rows, _ := conn.Query(ctx, "SELECT id FROM agent_sessions")
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		left = append(left, id)
	}
	if rows.Err() != nil || len(left) != 1 || left[0] != "c" {
		t.Fatalf("rows left: %v (%v)", left, rows.Err())
	}
	if code, _, errOut := cli(t, "prune", "--batch-size", "-5", "--database-url", d.URL); code != exitUsage || !strings.Contains(errOut, "--batch-size must be") {
		t.Fatalf("negative batch size: exit %d, %q", code, errOut)
	}
}

// Guessing a flag for a secret's value gets a hint at the file flag (and
// environment variable) that command takes; usage error, nothing run.
func TestUnknownSecretFlagHints(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"issue", "--agent", "a", "--secret", "s3cr3t-value"}, "pass --secret-file PATH or set $AGENTSESSIONS_SECRET"},
		{[]string{"verify", "--token", "x.y", "--secret=s3cr3t-value"}, "pass --secret-file PATH or set $AGENTSESSIONS_SECRET"},
		{[]string{"serve", "--secret", "s3cr3t-value"}, "pass --secret-file PATH or set $AGENTSESSIONS_SECRET"},
		{[]string{"verify", "--token", "x.y", "--previous-secret", "s3cr3t-value"}, "pass --verify-secret-file PATH"},
		{[]string{"serve", "--verify-secret", "s3cr3t-value"}, "pass --verify-secret-file PATH"},
		{[]string{"serve", "--admin-key", "s3cr3t-value"}, "pass --admin-key-file PATH or set $AGENTSESSIONS_ADMIN_KEY"},
	} {
		code, out, errOut := cli(t, c.args...)
		if code != exitUsage || !strings.Contains(errOut, "unknown flag: --") || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and %q", c.args, code, errOut, c.want)
		}
		if strings.Contains(out+errOut, "s3cr3t-value") {
			t.Errorf("%v: the value is echoed: %q", c.args, out+errOut)
		}
	}
	// A command that takes no secret gets cobra's error alone.
	code, _, errOut := cli(t, "list", "--agent", "a", "--secret", "x")
	if code != exitUsage || errOut != "agentsessions: unknown flag: --secret\nRun 'agentsessions --help' for usage.\n" {
		t.Errorf("list --secret: exit %d, %q", code, errOut)
	}
}
