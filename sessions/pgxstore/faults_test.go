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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// faultInstances makes n managers on their own pools, whose connections all
// carry application name app so a test can find (and kill) their backends.
func faultInstances(t *testing.T, url, app string, n, limit int, ttl time.Duration) ([]*sessions.Manager, []*pgxstore.Store) {
	t.Helper()
	var mgrs []*sessions.Manager
	var stores []*pgxstore.Store
	for range n {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnConfig.RuntimeParams["application_name"] = app
		cfg.ConnConfig.ConnectTimeout = 2 * time.Second
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		store, err := pgxstore.New(pool, nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: ttl, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		mgrs, stores = append(mgrs, m), append(stores, store)
	}
	return mgrs, stores
}

func agentNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("did:agentmesh:load-%03d", i)
	}
	return out
}

// recovered runs fault-free load in one-second windows until one window
// completes operations with no store error at all: the instances healed
// by themselves. It allows 10 windows, since a server shared with the
// package's other parallel tests (one container in make test-containers,
// under -race) can stay saturated for a while after the fault.
func recovered(t *testing.T, mgrs []*sessions.Manager, agents []string, limit int) {
	t.Helper()
	var after *loadStats
	for window := 1; window <= 10; window++ {
		after = &loadStats{}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		(&load{mgrs: mgrs, agents: agents, limit: limit, workers: 8, stats: after}).run(ctx)
		cancel()
		after.check(t)
		if after.storeErrs.Load() == 0 && after.ops() > 0 {
			t.Logf("recovered: window %d clean (%s)", window, after)
			return
		}
		t.Logf("window %d after the fault not clean yet: %s; first store errors: %q", window, after, after.storeExamples)
	}
	t.Fatalf("not recovered 10 s after the fault: %s\nfirst store errors: %q", after, after.storeExamples)
}

// Backends are killed with pg_terminate_backend every 100ms for 2s in the
// middle of issue/authenticate/revoke traffic from 4 instances. Calls
// during the fault fail with ErrStore only; no issued session is lost; the
// limit holds; traffic recovers with no intervention.
func TestFaultBackendsTerminated(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	app := "agentsessions-fault-" + d.Schema
	const limit = 3
	agents := agentNames(30)
	mgrs, stores := faultInstances(t, d.URL, app, 4, limit, time.Hour)
	admin := d.Conn(t)
	stats := &loadStats{}

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	killed := make(chan int64, 1)
	go func() {
		var n int64
		defer func() { killed <- n }()
		time.Sleep(500 * time.Millisecond)
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			var k int64
			if err := admin.QueryRow(context.Background(),
				`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&k); err == nil {
				n += k
			}
		}
	}()
	go checkInvariant(ctx, d.Pool(t), limit, 20*time.Millisecond, stats)
	(&load{mgrs: mgrs, agents: agents, limit: limit, workers: 16, stats: stats}).run(ctx)
	n := <-killed
	reconnects := totalStats(stores).Reconnects
	t.Logf("terminated %d backends; %d calls rerun on a fresh connection; %s", n, reconnects, stats)
	stats.check(t)
	if n == 0 || reconnects+uint64(stats.storeErrs.Load()) == 0 {
		t.Fatalf("the fault did not bite (terminated %d backends, no reruns, no store errors): the test proves nothing", n)
	}
	recovered(t, mgrs, agents, limit)
	if over := overLimit(t, d.Pool(t), limit); over != "" {
		t.Fatal(over)
	}
	checkCounts(t, d.Pool(t))
}

func overLimit(t *testing.T, pool *pgxpool.Pool, limit int) string {
	for a, n := range rowsPerAgent(t, pool) {
		if n > limit {
			return fmt.Sprintf("agent %s holds %d sessions, limit %d", a, n, limit)
		}
	}
	return ""
}

// cluster is a private PostgreSQL server this test may stop and start,
// run by scripts/devdb.sh (initdb/pg_ctl) on a free port.
type cluster struct {
	t   *testing.T
	env []string
	db  string
}

func newCluster(t *testing.T) (*cluster, string) {
	t.Helper()
	if _, err := exec.LookPath("initdb"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run the restart tests, but initdb is not on PATH")
		}
		t.Skip("RESTART TEST SKIPPED: needs PostgreSQL's initdb and pg_ctl on PATH to run a private server")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil { // initdb runs as another user when we are root
			t.Fatal(err)
		}
	}
	c := &cluster{t: t, db: "restart", env: append(os.Environ(),
		"AGENTSESSIONS_PGDATA="+filepath.Join(dir, "pgdata"),
		fmt.Sprintf("AGENTSESSIONS_PGPORT=%d", port),
		"AGENTSESSIONS_PROBE_PORT=1", // never use the shared server
	)}
	url := c.devdb(c.db)
	t.Cleanup(c.stop)
	return c, url
}

func (c *cluster) devdb(arg string) string {
	c.t.Helper()
	cmd := exec.Command("../../scripts/devdb.sh", arg)
	cmd.Env = c.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("devdb.sh %s: %v\n%s", arg, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func (c *cluster) stop()  { c.devdb("--stop") }
func (c *cluster) start() { c.devdb(c.db) }

func (c *cluster) getenv(name string) string {
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			v = strings.TrimSpace(v)
			return v
		}
	}
	c.t.Fatalf("cluster: %s not set", name)
	return ""
}

// pgCtl runs pg_ctl on the cluster's data directory as the directory's
// owner (initdb ran as another user when we are root).
func (c *cluster) pgCtl(args ...string) {
	c.t.Helper()
	pgdata := c.getenv("AGENTSESSIONS_PGDATA")
	fi, err := os.Stat(pgdata)
	if err != nil {
		c.t.Fatal(err)
	}
	cmdline := append([]string{"pg_ctl", "-D", pgdata}, args...)
	if owner := fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid); owner != fmt.Sprint(os.Getuid()) {
		u, err := user.LookupId(owner)
		if err != nil {
			c.t.Fatal(err)
		}
		cmdline = append([]string{"runuser", "-u", u.Username, "--"}, cmdline...)
	}
	if out, err := exec.Command(cmdline[0], cmdline[1:]...).CombinedOutput(); err != nil {
		c.t.Fatalf("%s: %v\n%s", strings.Join(cmdline, " "), err, out)
	}
}

// startStandby starts the stopped cluster as a standby with hot standby
// off and no primary to follow: it stays in recovery and refuses every
// connection with SQLSTATE 57P03, as a server starting up does, until
// promote.
func (c *cluster) startStandby() {
	c.t.Helper()
	pgdata := c.getenv("AGENTSESSIONS_PGDATA")
	if err := os.WriteFile(filepath.Join(pgdata, "standby.signal"), nil, 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.pgCtl("-l", filepath.Join(pgdata, "server.log"), "-w", "-t", "60", "-o",
		fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %s -c unix_socket_directories='%s.sock' -c fsync=off -c hot_standby=off",
			c.getenv("AGENTSESSIONS_PGPORT"), pgdata), "start")
}

func (c *cluster) promote() { c.pgCtl("-w", "-t", "60", "promote") }

// Writes whose connection could not even be opened (server down: refused
// dial; server in recovery: 57P03 at connect) sent nothing, so they are
// rerun like any break before commit (maxReconnects = 4 times) instead of
// failing at once as "may have committed". Once the server is back, the
// same pools carry on.
func TestFaultConnectFailuresAreRerun(t *testing.T) {
	t.Parallel()
	c, url := newCluster(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	iss := mustIssue(t, m, agent)
	now := time.Now()
	writes := []struct {
		name string
		call func(context.Context) error
	}{
		{"Issue", func(ctx context.Context) error { _, err := m.Issue(ctx, agent); return err }},
		{"RevokeAgent", func(ctx context.Context) error { _, err := m.RevokeAgent(ctx, other); return err }},
		{"Extend", func(ctx context.Context) error {
			_, err := store.Extend(ctx, iss.Session.ID, iss.Session.TokenDigest, iss.Session.ExpiresAt.Add(time.Minute), digest("x"), now)
			return err
		}},
		{"SetAgentLimit", func(ctx context.Context) error { return m.SetAgentLimit(ctx, agent, 4) }},
		{"DeleteAgentLimit", func(ctx context.Context) error { _, err := m.DeleteAgentLimit(ctx, agent); return err }},
	}
	const maxReconnects = 4
	outage := func(what, wantCode string) {
		t.Helper()
		for _, w := range writes {
			before := store.Stats().Reconnects
			err := w.call(ctx)
			if !errors.Is(err, sessions.ErrStore) {
				t.Fatalf("%s with %s: %v; want ErrStore", w.name, what, err)
			}
			var pgErr *pgconn.PgError
			if wantCode != "" && (!errors.As(err, &pgErr) || pgErr.Code != wantCode) {
				t.Fatalf("%s with %s: %v; want SQLSTATE %s in the chain (is the server really in recovery?)", w.name, what, err, wantCode)
			}
			if n := store.Stats().Reconnects - before; n != maxReconnects {
				t.Errorf("%s with %s: rerun %d times, want %d: nothing was sent, so it cannot have committed (%v)",
					w.name, what, n, maxReconnects, err)
			}
		}
	}
	c.stop()
	// Connections the pool held were cut mid-session; a write on one of
	// them may have committed and is rightly not rerun. This test is
	// about the calls after that, which must open new connections.
	pool.Reset()
	outage("the server stopped", "")
	c.startStandby()
	outage("the server in recovery", "57P03")
	c.promote()
	for _, w := range writes {
		if err := w.call(ctx); err != nil {
			t.Fatalf("%s once the server is back: %v", w.name, err)
		}
	}
	if _, err := m.Authenticate(ctx, iss.Token, agent); !errors.Is(err, sessions.ErrAccessDenied) {
		t.Fatalf("the session was extended with a new digest, so its old token is superseded: %v", err)
	}
}

// The database server is shut down for a second and started again in the
// middle of traffic from 4 instances. Same guarantees as above: only
// ErrStore during the outage, nothing lost, limit held, self-recovery.
func TestFaultDatabaseRestart(t *testing.T) {
	t.Parallel()
	c, url := newCluster(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	const limit = 3
	agents := agentNames(30)
	mgrs, stores := faultInstances(t, url, "agentsessions-restart", 4, limit, time.Hour)
	stats := &loadStats{}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	go checkInvariant(lctx, pool, limit, 20*time.Millisecond, stats)
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(time.Second)
		c.stop()
		time.Sleep(time.Second)
		c.start()
	}()
	(&load{mgrs: mgrs, agents: agents, limit: limit, workers: 16, stats: stats}).run(lctx)
	<-restarted // on a loaded machine the server may still be starting
	t.Logf("%d calls rerun on a fresh connection; %s", totalStats(stores).Reconnects, stats)
	stats.check(t)
	if stats.storeErrs.Load() == 0 {
		t.Fatal("no store errors during a one-second outage: the test proves nothing")
	}
	recovered(t, mgrs, agents, limit)
	if over := overLimit(t, pool, limit); over != "" {
		t.Fatal(over)
	}
	checkCounts(t, pool)
}

// A call whose deadline passes while the database holds it up leaves no
// transaction open behind it.
func TestFaultDeadlineLeavesNoOpenTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	app := "agentsessions-slow-" + d.Schema
	mgrs, _ := faultInstances(t, d.URL, app, 1, 5, time.Hour)
	blocker := d.Conn(t)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE agent_sessions IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	for _, op := range []func(context.Context) error{
		func(c context.Context) error { _, err := mgrs[0].Issue(c, agent); return err },
		func(c context.Context) error { _, err := mgrs[0].Revoke(c, "some-session"); return err },
	} {
		dctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
		err := op(dctx)
		cancel()
		if !isDeadline(err) {
			t.Fatalf("got %v, want a store error wrapping DeadlineExceeded", err)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	probe := d.Conn(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var open int
		if err := probe.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = $1 AND state <> 'idle'`, app).Scan(&open); err != nil {
			t.Fatal(err)
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backends of the timed-out calls are still in a transaction or running", open)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
