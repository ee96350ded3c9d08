package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
	"github.com/agentsessions/agentsessions/sessions/sessionstest"
)

// The PgBouncer tests run a pgbouncer process of their own (1.18, as
// Debian ships it: no protocol-level prepared statements in transaction
// mode) on a free port, with its ini and userlist in t.TempDir(), in
// pool_mode = transaction and fewer server connections than clients, in
// front of the test's schema on the test server. Without the binary they
// are skipped, except in CI (CI set), where they fail: .ci/run installs
// it.

// pgbouncerBin finds pgbouncer: on PATH, else /usr/sbin/pgbouncer (Debian).
func pgbouncerBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CI must run the PgBouncer tests, but pgbouncer is neither on PATH nor /usr/sbin/pgbouncer (apt-get install -y pgbouncer)")
	}
	t.Skip("PGBOUNCER TEST SKIPPED: needs pgbouncer on PATH or in /usr/sbin (apt-get install -y pgbouncer)")
	return ""
}

// bouncer is one pgbouncer process of a test.
type bouncer struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{}
}

// bouncerPoolSize is the server connections per database and user: fewer
// than the tests' clients, so that server connections really are shared.
const bouncerPoolSize = 4

// newBouncer starts pgbouncer in transaction mode in front of d's
// database. Every server connection it opens first runs SET search_path
// (its connect_query), since PgBouncer 1.18 refuses search_path as a
// startup parameter, which is how testdb points connections at a schema.
func newBouncer(t *testing.T, d *testdb.DB) *bouncer {
	t.Helper()
	bin := pgbouncerBin(t)
	target, err := pgconn.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	cred := serverCred(t) // pgbouncer refuses to run as root
	b := &bouncer{t: t, bin: bin, dir: privateDir(t, cred, "pgbouncer"), port: freePort(t), cred: cred}
	server := fmt.Sprintf("host=%s port=%d dbname=%s user=%s", target.Host, target.Port, target.Database, target.User)
	if target.Password != "" {
		server += " password=" + target.Password
	}
	ini := strings.Join([]string{
		"[databases]",
		fmt.Sprintf("agentsessions = %s connect_query='SET search_path = %s'", server, d.Schema),
		"[pgbouncer]",
		"listen_addr = 127.0.0.1",
		fmt.Sprintf("listen_port = %d", b.port),
		"unix_socket_dir =",
		"auth_type = trust",
		"auth_file = " + filepath.Join(b.dir, "userlist.txt"),
		"pool_mode = transaction",
		fmt.Sprintf("default_pool_size = %d", bouncerPoolSize),
		"max_client_conn = 500",
		"logfile = " + filepath.Join(b.dir, "pgbouncer.log"),
		"",
	}, "\n")
	b.write("pgbouncer.ini", ini)
	b.write("userlist.txt", fmt.Sprintf("%q \"\"\n", target.User))
	b.start()
	t.Cleanup(b.kill)
	return b
}

func (b *bouncer) write(name, content string) {
	b.t.Helper()
	p := filepath.Join(b.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		b.t.Fatal(err)
	}
	if b.cred != nil {
		if err := os.Chown(p, int(b.cred.Uid), int(b.cred.Gid)); err != nil {
			b.t.Fatal(err)
		}
	}
}

// start runs pgbouncer and waits until it accepts connections.
func (b *bouncer) start() {
	b.t.Helper()
	cmd := exec.Command(b.bin, filepath.Join(b.dir, "pgbouncer.ini"))
	cmd.Dir = b.dir
	// Killed with the test binary, even when it dies without running its
	// cleanups (a -timeout panic): an orphaned pooler would keep its server
	// connections, and whatever they hold, open on the shared server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: b.cred, Pdeathsig: syscall.SIGKILL}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.cmd, b.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(b.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", b.port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-b.done:
			log, _ := os.ReadFile(filepath.Join(b.dir, "pgbouncer.log"))
			b.t.Fatalf("pgbouncer exited: %s\n%s", out.String(), log)
		default:
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("pgbouncer not accepting connections on port %d after 10s", b.port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends pgbouncer at once (SIGKILL): every client and server
// connection through it breaks.
func (b *bouncer) kill() {
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
	b.cmd = nil
}

func (b *bouncer) restart(down time.Duration) {
	b.t.Helper()
	b.kill()
	time.Sleep(down)
	b.start()
}

// url connects through the pooler with pgx's default_query_exec_mode
// mode ("" for pgx's default, cache_statement).
func (b *bouncer) url(mode string) string {
	q := url.Values{"sslmode": {"disable"}}
	if mode != "" {
		q.Set("default_query_exec_mode", mode)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/agentsessions?%s", b.port, q.Encode())
}

// bouncedStore is a store (and manager) on a pool of its own through the
// pooler, like one service instance.
func bouncedStore(t *testing.T, connString string, cfg *pgxstore.Config, limit int) (*pgxstore.Store, *sessions.Manager) {
	t.Helper()
	pc, err := pgxpool.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := pgxstore.New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: limit})
	if err != nil {
		t.Fatal(err)
	}
	return store, m
}

// pgx's query exec modes through PgBouncer in transaction mode, each with
// 4 pools sharing fewer server connections: issue, authenticate and
// revoke under load, then one issue with metadata (a jsonb parameter).
//
//   - cache_describe, the mode docs/operations.md recommends, serves
//     everything, with the limit held: it describes each query once per
//     connection, in a round trip of its own, and from then on sends it
//     with Parse of the unnamed statement, Bind and Execute before one
//     Sync, so nothing outlives the round trip (the store's pipelined
//     BEGIN, statement, COMMIT included).
//   - exec and simple_protocol serve the load but not metadata: with no
//     statement description, pgx sends the []byte of a jsonb parameter as
//     bytea text, which jsonb refuses (22P02).
//   - describe_exec and cache_statement, pgx's default, fail: the first
//     describes the unnamed statement in one round trip and binds it in
//     the next, which PgBouncer may send to another server connection
//     (26000, 08P01); the second's named prepared statements do not
//     follow the client from one server connection to the next (42P05,
//     26000; PgBouncer 1.18 does not track them).
func TestPgBouncerExecModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"cache_describe", "describe_exec", "exec", "simple_protocol", "cache_statement"} {
		t.Run(mode, func(t *testing.T) {
			d := testdb.New(t)
			b := newBouncer(t, d)
			const limit = 3
			var mgrs []*sessions.Manager
			for range 4 {
				_, m := bouncedStore(t, b.url(mode), nil, limit)
				mgrs = append(mgrs, m)
			}
			stats := &loadStats{}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			(&load{mgrs: mgrs, agents: agentNames(20), limit: limit, workers: 16, stats: stats}).run(ctx)
			_, mdErr := mgrs[0].Issue(context.Background(), "did:agentmesh:with-metadata", sessions.WithMetadata(map[string]string{"client": "pgbouncer"}))
			t.Logf("%s through PgBouncer: %s; first store errors: %q; issue with metadata: %v", mode, stats, stats.storeExamples, mdErr)
			var pgErr *pgconn.PgError
			switch mode {
			case "cache_statement", "describe_exec":
				// The statement described on one server connection is
				// run on another: "prepared statement ... does not exist"
				// or, when the other connection's unnamed statement takes
				// different parameters, their types ("invalid input syntax").
				if examples := strings.Join(stats.storeExamples, " "); stats.storeErrs.Load() == 0 ||
					!strings.Contains(examples, "prepared statement") && !strings.Contains(examples, "invalid input syntax") {
					t.Fatalf("%s should fail through PgBouncer 1.18 in transaction mode on prepared statements, as documented: %q", mode, stats.storeExamples)
				}
				return
			case "exec", "simple_protocol":
				if !errors.As(mdErr, &pgErr) || pgErr.Code != "22P02" {
					t.Errorf("issue with metadata in %s mode: %v; want 22P02 (jsonb sent as bytea), as documented", mode, mdErr)
				}
			default:
				if mdErr != nil {
					t.Errorf("issue with metadata: %v", mdErr)
				}
			}
			stats.check(t)
			if stats.storeErrs.Load() > 0 || stats.issued.Load() == 0 || stats.authOK.Load() == 0 {
				t.Fatalf("want only successes and refusals at the limit: %s; %q", stats, stats.storeExamples)
			}
			if over := overLimit(t, d.Pool(t), limit); over != "" {
				t.Fatal(over)
			}
			checkCounts(t, d.Pool(t))
		})
	}
}

// pooledMode is the exec mode docs/operations.md recommends through a
// pooler in transaction mode.
const pooledMode = "cache_describe"

// The store contract suite through the pooler, in the recommended mode.
func TestPgBouncerStoreContract(t *testing.T) {
	t.Parallel()
	pgbouncerBin(t)
	sessionstest.Run(t, func(t *testing.T) sessions.Store {
		d := testdb.New(t)
		b := newBouncer(t, d)
		store, _ := bouncedStore(t, b.url(pooledMode), nil, 5)
		t.Cleanup(func() { checkCounts(t, d.Pool(t)) })
		return store
	})
}

// The invariant test through the pooler: 24 agents, 12 issues each
// released at once over 4 instances whose pools share 4 server
// connections; each agent ends with exactly its limit of 5.
func TestInvariantPgBouncerFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	b := newBouncer(t, d)
	var insts []instance
	for range 4 {
		store, m := bouncedStore(t, b.url(pooledMode), nil, 5)
		insts = append(insts, instance{store: store, mgr: m})
	}
	issueTwelveEachToLimitFive(t, d, insts, "did:agentmesh:bounced-%02d", 24)
	tx, retried, exhausted := retries(insts)
	t.Logf("through PgBouncer (%s): %d transactions, %d serialization retries, %d exhausted", pooledMode, tx, retried, exhausted)
}

// PgBouncer is killed and restarted in the middle of traffic from 4
// instances. As for a database restart: only ErrStore during the outage,
// nothing acknowledged lost, the limit held (asked of the database
// directly, every 20ms), and recovery without intervention.
func TestFaultPgBouncerRestart(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	b := newBouncer(t, d)
	const limit = 3
	agents := agentNames(30)
	var mgrs []*sessions.Manager
	var stores []*pgxstore.Store
	for range 4 {
		s, m := bouncedStore(t, b.url(pooledMode), nil, limit)
		mgrs, stores = append(mgrs, m), append(stores, s)
	}
	stats := &loadStats{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	go checkInvariant(ctx, d.Pool(t), limit, 20*time.Millisecond, stats)
	restarted := make(chan struct{})
	go func() {
		defer close(restarted)
		time.Sleep(time.Second)
		b.restart(500 * time.Millisecond)
	}()
	(&load{mgrs: mgrs, agents: agents, limit: limit, workers: 16, stats: stats}).run(ctx)
	<-restarted
	t.Logf("%d calls rerun on a fresh connection; %s", totalStats(stores).Reconnects, stats)
	stats.check(t)
	if stats.storeErrs.Load()+int64(totalStats(stores).Reconnects) == 0 {
		t.Fatal("no store errors and no reruns while PgBouncer was down: the test proves nothing")
	}
	recovered(t, mgrs, agents, limit)
	if over := overLimit(t, d.Pool(t), limit); over != "" {
		t.Fatal(over)
	}
	checkCounts(t, d.Pool(t))
}

// The cache through the pooler: its LISTEN connection on the pooled URL is
// refused at once, saying what to set; on a direct DirectDatabaseURL it
// runs, and a revocation on another pooled instance reaches it.
func TestPgBouncerCacheListenURL(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	b := newBouncer(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	pooled, _ := bouncedStore(t, b.url(pooledMode), nil, 5)
	start := time.Now()
	err := pooled.RunCache(ctx, pgxstore.CacheConfig{})
	var ce *sessions.ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "DirectDatabaseURL") || !strings.Contains(err.Error(), "pooler") {
		t.Fatalf("RunCache on a pooled listen connection: %v; want a ConfigError naming the pooler and DirectDatabaseURL", err)
	}
	t.Logf("refused after %s: %v", time.Since(start).Round(time.Millisecond), err)
	err = pooled.RunHandleEvents(ctx, pgxstore.HandleEventsConfig{OnEvent: func(pgxstore.HandleEvent) {}})
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "DirectDatabaseURL") {
		t.Fatalf("RunHandleEvents on a pooled listen connection: %v; want a ConfigError naming DirectDatabaseURL", err)
	}

	direct, m1 := bouncedStore(t, b.url(pooledMode), &pgxstore.Config{DirectDatabaseURL: d.URL}, 5)
	_, m2 := bouncedStore(t, b.url(pooledMode), nil, 5)
	cacheCtx, stopCache := context.WithCancel(ctx)
	cacheDone := make(chan error, 1)
	go func() {
		cacheDone <- direct.RunCache(cacheCtx, pgxstore.CacheConfig{MaxStaleness: 200 * time.Millisecond})
	}()
	waitFor(t, 10*time.Second, "the cache on the direct listen URL fresh", func() bool { return direct.CacheStats().Fresh })
	iss := mustIssue(t, m2, agent)
	// The first authenticate fills the cache and a later one hits it. Not
	// always the second: a fill is dropped when its shard saw any
	// invalidation meanwhile, and the notification channels are the
	// database's, so parallel tests in other schemas invalidate too (seen
	// in CI: 27 invalidations, no hit in two tries).
	waitFor(t, 5*time.Second, "a cache hit on the direct listen URL", func() bool {
		if _, err := m1.Authenticate(ctx, iss.Token, agent); err != nil {
			t.Fatal(err)
		}
		return direct.CacheStats().Hits > 0
	})
	if _, err := m2.Revoke(ctx, iss.Session.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the revocation on the other instance reaching the cache", func() bool {
		_, err := m1.Authenticate(ctx, iss.Token, agent)
		return errors.Is(err, sessions.ErrAccessDenied)
	})
	stopCache()
	if err := <-cacheDone; err != nil {
		t.Fatal(err)
	}
}

// Config.DirectDatabaseURL must parse.
func TestDirectDatabaseURLRejected(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t).Pool(t)
	_, err := pgxstore.New(pool, &pgxstore.Config{DirectDatabaseURL: "postgres://%zz"})
	var ce *sessions.ConfigError
	if !errors.As(err, &ce) || ce.Field != "Config.DirectDatabaseURL" || strings.Contains(err.Error(), "%zz") {
		t.Fatalf("got %v; want a ConfigError for Config.DirectDatabaseURL that does not repeat the URL", err)
	}
}

// The pruner through the pooler. On the pooled connection alone a pass
// would leave its session-level advisory lock on one of PgBouncer's server
// connections, and every later pass everywhere would skip (seen before
// this was handled); so it fails, naming DirectDatabaseURL, and takes no
// lock. With DirectDatabaseURL, 4 instances prune concurrently under load:
// passes run, expired sessions go, and no lock is left behind.
func TestPgBouncerPruner(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	b := newBouncer(t, d)
	ctx := context.Background()
	lockID := rand.Int64N(1<<62) + 1 // its own key: other tests prune the same database
	locks := func() int {
		var n int
		if err := d.Pool(t).QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1`, lockID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	pooled, _ := bouncedStore(t, b.url(pooledMode), nil, 5)
	_, err := pooled.Prune(ctx, pgxstore.PruneConfig{LockID: lockID})
	var ce *sessions.ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "DirectDatabaseURL") {
		t.Fatalf("Prune through the pooler without DirectDatabaseURL: %v; want a ConfigError naming DirectDatabaseURL", err)
	}
	if n := locks(); n != 0 {
		t.Fatalf("%d prune locks held after the refused pass", n)
	}

	const limit = 3
	var stores []*pgxstore.Store
	var mgrs []*sessions.Manager
	for range 4 {
		s, m := bouncedStore(t, b.url(pooledMode), &pgxstore.Config{DirectDatabaseURL: d.URL}, limit)
		stores, mgrs = append(stores, s), append(mgrs, m)
	}
	lctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	stats := &loadStats{}
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		(&load{mgrs: mgrs, agents: agentNames(20), limit: limit, workers: 8, stats: stats}).run(lctx)
	}()
	later := func() time.Time { return time.Now().Add(2 * time.Hour) } // every session has expired by then
	type tally struct{ ran, skipped, failed, unreachable int }
	results := make(chan tally, len(stores))
	for _, s := range stores {
		go func() {
			var tl tally
			for lctx.Err() == nil {
				r, err := s.Prune(lctx, pgxstore.PruneConfig{LockID: lockID, Clock: later})
				var connectErr *pgconn.ConnectError
				switch {
				case err != nil && lctx.Err() == nil && errors.As(err, &connectErr):
					// Each pass dials its own direct connection; a test
					// host busy with every package's tests at once may not
					// accept one in time. That is not what is tested here
					// (the lock is): the pass took no lock.
					tl.unreachable++
				case err != nil && lctx.Err() == nil:
					tl.failed++
					t.Errorf("prune pass: %v", err)
				case err != nil:
				case r.Skipped:
					tl.skipped++
				default:
					tl.ran++
				}
				time.Sleep(5 * time.Millisecond) // passes in quick succession, not a connection storm
			}
			results <- tl
		}()
	}
	var total tally
	for range stores {
		tl := <-results
		total.ran, total.skipped, total.failed = total.ran+tl.ran, total.skipped+tl.skipped, total.failed+tl.failed
		total.unreachable += tl.unreachable
	}
	<-loaded
	t.Logf("passes through PgBouncer with DirectDatabaseURL: %+v, next to %d calls of load", total, stats.ops())
	if total.ran == 0 {
		t.Fatal("no prune pass ran")
	}
	// A pass cut off by the end of the load may close its connection to
	// drop the lock; the server lets go of it as that backend exits.
	waitFor(t, 5*time.Second, "no prune lock left behind", func() bool { return locks() == 0 })
	r, err := stores[0].Prune(ctx, pgxstore.PruneConfig{LockID: lockID, Clock: later})
	if err != nil || r.Skipped {
		t.Fatalf("a pass after the others: %+v, %v; want it to run", r, err)
	}
	if rows := sum(rowsPerAgent(t, d.Pool(t))); rows != 0 {
		t.Fatalf("%d expired sessions left after the last pass", rows)
	}
	checkCounts(t, d.Pool(t))
}
