package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/migrations"
)

// The failover tests' harness: a private primary and a streaming standby
// (initdb, pg_basebackup -R), each on a free port and a data directory in
// the test's temporary directory, never the shared server. The test can
// make the replication synchronous, stop the primary (fast or immediate)
// and promote the standby; everything is stopped when the test ends.

// pgNode is one private PostgreSQL server.
type pgNode struct {
	t      *testing.T
	name   string
	bin    string // directory holding initdb, pg_ctl, pg_basebackup
	dir    string // owned by the server's user: data/ and server.log
	pgdata string
	port   int
	cred   *syscall.Credential // the server's user when we are root; nil: ourselves
}

// pgBinDir finds PostgreSQL's server programs: on PATH, else pg_config
// --bindir. Without them the test is skipped, except in CI (CI set), where
// it fails, as newCluster does.
func pgBinDir(t *testing.T) string {
	t.Helper()
	need := []string{"initdb", "pg_ctl", "pg_basebackup"}
	var dirs []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if p, err = filepath.EvalSymlinks(p); err == nil { // e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	for _, dir := range dirs {
		found := 0
		for _, n := range need {
			if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
				found++
			}
		}
		if found == len(need) {
			return dir
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI must run the failover tests, but PostgreSQL's %s were not found together (pg_config --bindir, or next to initdb on PATH)",
			strings.Join(need, ", "))
	}
	t.Skipf("FAILOVER TEST SKIPPED: needs PostgreSQL's %s (pg_config --bindir, or next to initdb on PATH)", strings.Join(need, ", "))
	return ""
}

// serverCred is who runs the private servers: ourselves, or when we are
// root (initdb and postgres refuse to run as root) postgres or nobody.
func serverCred(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Getuid() != 0 {
		return nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	t.Fatal("running as root, and neither user postgres nor nobody exists to run PostgreSQL")
	return nil
}

// privateDir is a directory the server's user owns, inside t.TempDir().
func privateDir(t *testing.T, cred *syscall.Credential, name string) string {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{base, filepath.Dir(base)} {
		if err := os.Chmod(d, 0o755); err != nil { // the server's user must get through
			t.Fatal(err)
		}
	}
	dir := filepath.Join(base, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newNode(t *testing.T, name string) *pgNode {
	t.Helper()
	bin := pgBinDir(t)
	cred := serverCred(t)
	dir := privateDir(t, cred, name)
	n := &pgNode{t: t, name: name, bin: bin, dir: dir, pgdata: filepath.Join(dir, "data"), port: freePort(t), cred: cred}
	t.Cleanup(n.kill)
	return n
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// run runs one of PostgreSQL's programs as the server's user.
func (n *pgNode) run(prog string, args ...string) {
	n.t.Helper()
	if out, err := n.output(prog, args...); err != nil {
		n.t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
}

func (n *pgNode) output(prog string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(n.bin, prog), args...)
	cmd.Dir = n.dir
	if n.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: n.cred}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// initdb creates a cluster for a primary. Its postgresql.conf is copied by
// pg_basebackup, so a standby gets the same settings.
func (n *pgNode) initdb() {
	n.t.Helper()
	n.run("initdb", "-D", n.pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	conf := strings.Join([]string{
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = ''",
		"fsync = off", // the servers are stopped, never the machine
		"shared_buffers = 32MB",
		"max_connections = 100",
		"wal_level = replica",
		"max_wal_senders = 4",
		"hot_standby = on",
		"synchronous_commit = on",
		"wal_receiver_status_interval = 1s",
		"wal_retrieve_retry_interval = 200ms", // a promotion after a lost primary waits for one such retry
		"",
	}, "\n")
	f, err := os.OpenFile(filepath.Join(n.pgdata, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		n.t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		n.t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		n.t.Fatal(err)
	}
}

// start starts the server and waits until it accepts connections (a
// standby: until it accepts read-only ones).
func (n *pgNode) start() {
	n.t.Helper()
	n.run("pg_ctl", "-D", n.pgdata, "-l", filepath.Join(n.dir, "server.log"), "-w", "-t", "60",
		"-o", fmt.Sprintf("-p %d -c cluster_name=%s", n.port, n.name), "start")
}

// stop stops the server: mode is "fast" (clients cut, checkpoint, every
// WAL record sent to the standbys first) or "immediate" (a crash: no
// shutdown checkpoint, nothing more sent).
func (n *pgNode) stop(mode string) {
	n.t.Helper()
	n.run("pg_ctl", "-D", n.pgdata, "-m", mode, "-w", "-t", "60", "stop")
}

func (n *pgNode) promote() {
	n.t.Helper()
	n.run("pg_ctl", "-D", n.pgdata, "-w", "-t", "60", "promote")
}

// kill stops the server if it runs, at test cleanup.
func (n *pgNode) kill() {
	if _, err := os.Stat(filepath.Join(n.pgdata, "postmaster.pid")); err != nil {
		return
	}
	if out, err := n.output("pg_ctl", "-D", n.pgdata, "-m", "immediate", "-w", "-t", "30", "stop"); err != nil {
		n.t.Logf("stopping %s: %v\n%s", n.name, err, out)
	}
}

// url connects to database db on this server alone.
func (n *pgNode) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=5", n.port, db)
}

func (n *pgNode) exec(sql string) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, n.url("postgres"))
	if err != nil {
		n.t.Fatalf("%s: %v", n.name, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		n.t.Fatalf("%s: %s: %v", n.name, sql, err)
	}
}

// pauseWALReceiver stops (SIGSTOP) this standby's WAL receiver process;
// the function returned resumes it (SIGCONT).
func (n *pgNode) pauseWALReceiver() (resume func()) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, n.url("postgres"))
	if err != nil {
		n.t.Fatalf("%s: %v", n.name, err)
	}
	defer conn.Close(ctx)
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&pid); err != nil {
		n.t.Fatalf("%s: no WAL receiver: %v", n.name, err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		n.t.Fatalf("pausing the WAL receiver (pid %d): %v", pid, err)
	}
	var once sync.Once
	resume = func() {
		once.Do(func() {
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				n.t.Errorf("resuming the WAL receiver (pid %d): %v", pid, err)
			}
		})
	}
	n.t.Cleanup(resume)
	return resume
}

// crashWhileBehind pauses (SIGSTOP) the primary's WAL sender, lets the
// primary go on acknowledging commits for behind, then crashes it: an
// immediate shutdown (SIGQUIT to the postmaster, as pg_ctl stop -m
// immediate sends) and SIGKILL for the paused sender, which cannot take
// the signal. What the primary committed meanwhile never left it; with
// synchronous replication those commits were never acknowledged either.
// (Pausing the standby's WAL receiver instead would not do: what the
// sender had sent waits in the standby's socket buffer and arrives after
// all.)
func (h *haPair) crashWhileBehind(behind time.Duration) {
	t := h.primary.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, h.primary.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var sender int
	err = conn.QueryRow(ctx, "SELECT pid FROM pg_stat_replication WHERE application_name = $1", h.standby.name).Scan(&sender)
	conn.Close(ctx)
	if err != nil {
		t.Fatalf("no WAL sender for %s: %v", h.standby.name, err)
	}
	pidFile, err := os.ReadFile(filepath.Join(h.primary.pgdata, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	postmaster, err := strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(sender, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(behind)
	if err := syscall.Kill(postmaster, syscall.SIGQUIT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the postmaster is shutting down: a killed child is no crash to restart from
	if err := syscall.Kill(sender, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); syscall.Kill(postmaster, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the primary's postmaster did not exit within 30s of an immediate shutdown")
		}
	}
}

// basebackup makes a standby of primary named name (pg_basebackup -R:
// standby.signal and primary_conninfo written), not started yet.
func (primary *pgNode) basebackup(name string) *pgNode {
	primary.t.Helper()
	s := newNode(primary.t, name)
	s.run("pg_basebackup", "-D", s.pgdata, "-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", "postgres",
		"-R", "-X", "stream", "-c", "fast", "--no-sync")
	return s
}

// haPair is a primary with one streaming standby, and a database
// "agentsessions" with the migrations applied.
type haPair struct {
	primary, standby *pgNode
	sync             bool
}

const haDB = "agentsessions"

// newHAPair starts the two servers. With sync, commits on the primary wait
// until the standby has flushed them (synchronous_standby_names = '*',
// synchronous_commit = on); it is set after the base backup, so the
// standby, once promoted, does not wait for a standby of its own.
func newHAPair(t *testing.T, sync bool) *haPair {
	t.Helper()
	p := newNode(t, "primary")
	p.initdb()
	p.start()
	p.exec("CREATE DATABASE " + haDB)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, p.url(haDB))
	if err != nil {
		t.Fatal(err)
	}
	err = migrations.Up(ctx, pool)
	pool.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := p.basebackup("standby")
	s.start()
	if sync {
		p.exec("ALTER SYSTEM SET synchronous_standby_names = '*'")
		p.exec("SELECT pg_reload_conf()")
	}
	h := &haPair{primary: p, standby: s, sync: sync}
	h.waitReplication(ctx)
	if sync {
		h.proveSync(ctx)
	}
	return h
}

// proveSync waits until a commit on the primary really waits for the
// standby: pg_stat_replication can say "sync" before every process of the
// primary has applied the reloaded setting. With the standby's WAL
// receiver paused, a commit must block; it is then cancelled (the server
// warns that it committed locally only; it is no session of a test).
func (h *haPair) proveSync(ctx context.Context) {
	t := h.primary.t
	t.Helper()
	conn, err := pgx.Connect(ctx, h.primary.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// A commit waits only if its transaction wrote WAL: an INSERT, not
	// just an xid. The table is created before the pause.
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS harness_sync_probe (at timestamptz)"); err != nil {
		t.Fatal(err)
	}
	resume := h.standby.pauseWALReceiver()
	defer resume()
	for {
		done := make(chan error, 1)
		go func() { _, err := conn.Exec(ctx, "INSERT INTO harness_sync_probe VALUES (now())"); done <- err }()
		select {
		case err := <-done:
			if err != nil || ctx.Err() != nil {
				t.Fatalf("synchronous replication never took effect: a commit did not wait for the paused standby (%v)", err)
			}
			time.Sleep(50 * time.Millisecond)
		case <-time.After(300 * time.Millisecond):
			if err := conn.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
			<-done // committed locally only, with a WARNING: not a session
			return
		}
	}
}

// waitReplication waits until the primary reports the standby streaming,
// in the wanted sync_state.
func (h *haPair) waitReplication(ctx context.Context) {
	t := h.primary.t
	t.Helper()
	want := "async"
	if h.sync {
		want = "sync"
	}
	conn, err := pgx.Connect(ctx, h.primary.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for {
		var state, syncState string
		err := conn.QueryRow(ctx, `SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1`,
			h.standby.name).Scan(&state, &syncState)
		if err == nil && state == "streaming" && syncState == want {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the standby is not streaming in %s mode (last: state=%q sync_state=%q err=%v)", want, state, syncState, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// url is the multi-host URL the instances use: both servers, and
// target_session_attrs=read-write, so pgx connects to whichever is the
// primary now.
func (h *haPair) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		h.primary.port, h.standby.port, haDB)
}
