package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// instance is one simulated service instance: its own pool, store and
// manager, sharing the database (and the clock) with the others.
type instance struct {
	store *pgxstore.Store
	mgr   *sessions.Manager
}

func newInstances(t *testing.T, d *testdb.DB, n, limit int, clock *fakeClock) []instance {
	t.Helper()
	return newInstancesWith(t, d, n, limit, clock, nil)
}

// newInstancesWith is newInstances with stores configured by cfg (nil:
// the defaults).
func newInstancesWith(t *testing.T, d *testdb.DB, n, limit int, clock *fakeClock, cfg *pgxstore.Config) []instance {
	t.Helper()
	out := make([]instance, n)
	for i := range out {
		store, err := pgxstore.New(d.Pool(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		mgr, err := sessions.New(store, sessions.Config{
			Secret: []byte(secret), TTL: time.Hour, Limit: limit, Clock: clock.Now,
		})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = instance{store: store, mgr: mgr}
	}
	return out
}

type issuedBy struct {
	inst instance
	iss  sessions.Issued
}

type tally struct {
	mu      sync.Mutex
	issued  []issuedBy
	ok      map[string]int
	limited map[string]int
	other   []error
}

// issueAtOnce starts one goroutine per (agent, attempt), spread round-robin
// over the instances, releases them together and tallies the outcomes.
func issueAtOnce(insts []instance, agents []string, perAgent int) *tally {
	tl := &tally{ok: map[string]int{}, limited: map[string]int{}}
	start := make(chan struct{})
	var wg sync.WaitGroup
	n := 0
	for _, a := range agents {
		for range perAgent {
			inst := insts[n%len(insts)]
			n++
			wg.Go(func() {
				<-start
				iss, err := inst.mgr.Issue(context.Background(), a)
				tl.mu.Lock()
				defer tl.mu.Unlock()
				switch {
				case err == nil:
					tl.ok[a]++
					tl.issued = append(tl.issued, issuedBy{inst, iss})
				case errors.Is(err, sessions.ErrLimitExceeded):
					tl.limited[a]++
				default:
					tl.other = append(tl.other, err)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	return tl
}

func retries(insts []instance) (tx, retried, exhausted uint64) {
	var stores []*pgxstore.Store
	for _, in := range insts {
		stores = append(stores, in.store)
	}
	st := totalStats(stores)
	return st.Transactions, st.Retries, st.Exhausted
}

// rowsPerAgent asks the database itself how many rows each agent holds.
func rowsPerAgent(t *testing.T, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT agent_id, count(*) FROM agent_sessions GROUP BY agent_id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var a string
		var n int
		if err := rows.Scan(&a, &n); err != nil {
			t.Fatal(err)
		}
		out[a] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func checkNoRawErrors(t *testing.T, tl *tally) {
	t.Helper()
	for _, err := range tl.other {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			t.Errorf("raw PostgreSQL error escaped: %v (SQLSTATE %s)", err, pgErr.Code)
		} else {
			t.Errorf("unexpected error: %v", err)
		}
	}
}

// Four instances, 64 goroutines released at the same instant, one agent,
// limit 5: exactly 5 sessions exist afterwards, by the callers' count and by
// the database's.
func TestInvariantOneAgentFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	insts := newInstances(t, d, 4, 5, newClock(1_700_000_000))
	tl := issueAtOnce(insts, []string{agent}, 64)
	checkNoRawErrors(t, tl)
	if tl.ok[agent] != 5 || tl.limited[agent] != 59 {
		t.Fatalf("%d issued, %d limited; want 5 and 59", tl.ok[agent], tl.limited[agent])
	}
	if got := rowsPerAgent(t, d.Pool(t))[agent]; got != 5 {
		t.Fatalf("database holds %d sessions for the agent, want 5", got)
	}
	tx, retried, exhausted := retries(insts)
	t.Logf("one agent: %d transactions, %d serialization retries, %d exhausted", tx, retried, exhausted)
}

// The same with 24 agents at once, 12 attempts each over 4 instances:
// every agent ends with exactly its limit.
func TestInvariantManyAgentsFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	insts := newInstances(t, d, 4, 5, newClock(1_700_000_000))
	issueTwelveEachToLimitFive(t, d, insts, "did:agentmesh:agent-%02d", 24)
	tx, retried, exhausted := retries(insts)
	t.Logf("24 agents: %d transactions, %d serialization retries, %d exhausted", tx, retried, exhausted)
}

// issueTwelveEachToLimitFive releases 12 issues for each of n agents
// (IDs from format and an index) at once over insts, whose limit is 5, and
// checks every agent ends with exactly 5 issued, 7 refused and 5 rows.
func issueTwelveEachToLimitFive(t *testing.T, d *testdb.DB, insts []instance, format string, n int) {
	t.Helper()
	agents := make([]string, n)
	for i := range agents {
		agents[i] = fmt.Sprintf(format, i)
	}
	tl := issueAtOnce(insts, agents, 12)
	checkNoRawErrors(t, tl)
	rows := rowsPerAgent(t, d.Pool(t))
	for _, a := range agents {
		if tl.ok[a] != 5 || tl.limited[a] != 7 || rows[a] != 5 {
			t.Errorf("%s: %d issued, %d limited, %d rows; want 5, 7, 5", a, tl.ok[a], tl.limited[a], rows[a])
		}
	}
	checkCounts(t, d.Pool(t))
}

// 256 distinct agents issue from 4 instances at the same instant, twice:
// first as new agents (each gets its count row on the way), then as known
// ones. No two transactions are for the same agent, so any retry counted
// here is a false conflict between agents. Counting through the agents'
// count rows (migration 00004) exists to make those rare: counting session
// rows through a shared index page gave 151-376 retries per 256 issues.
func TestInvariantDistinctAgentsFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	insts := newInstances(t, d, 4, 2, newClock(1_700_000_000))
	agents := make([]string, 256)
	for i := range agents {
		agents[i] = fmt.Sprintf("did:agentmesh:distinct-%03d", i)
	}
	for round := 1; round <= 2; round++ {
		tl := issueAtOnce(insts, agents, 1)
		checkNoRawErrors(t, tl)
		for _, a := range agents {
			if tl.ok[a] != 1 {
				t.Fatalf("round %d, %s: not issued (%d limited)", round, a, tl.limited[a])
			}
		}
	}
	checkCounts(t, d.Pool(t))
	tx, retried, exhausted := retries(insts)
	t.Logf("256 distinct agents, 2 rounds: %d transactions, %d serialization retries (all cross-agent), %d exhausted", tx, retried, exhausted)
	if retried*10 > tx {
		t.Errorf("%d cross-agent retries in %d transactions: agents are making each other retry", retried, tx)
	}
}

// checkCounts fails unless every agent's count row (migration 00004)
// holds exactly its number of session rows and a lower bound on their
// expiry, and no agent with rows lacks one.
func checkCounts(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT coalesce(c.agent_id, s.agent_id), coalesce(c.kind, s.kind), coalesce(c.stored, -1), coalesce(s.n, 0)
		FROM agent_session_counts c
		FULL JOIN (SELECT agent_id, kind, count(*) AS n, min(expires_at) AS oldest FROM agent_sessions GROUP BY agent_id, kind) s
		  ON s.agent_id = c.agent_id AND s.kind = c.kind
		WHERE c.stored IS DISTINCT FROM coalesce(s.n, 0) OR c.oldest_expiry > s.oldest`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var agent, kind string
		var stored, actual int64
		if err := rows.Scan(&agent, &kind, &stored, &actual); err != nil {
			t.Fatal(err)
		}
		t.Errorf("agent %s, kind %s: count row says %d sessions (-1: no row), table holds %d (or its expiry bound is too high)", agent, kind, stored, actual)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// Expired rows count for nothing: with the clock moved past expiry, a new
// round across instances again admits exactly the limit.
func TestInvariantAfterExpiry(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	insts := newInstances(t, d, 4, 3, clock)
	if tl := issueAtOnce(insts, []string{agent}, 16); tl.ok[agent] != 3 || len(tl.other) > 0 {
		t.Fatalf("first round: %d issued, errors %v", tl.ok[agent], tl.other)
	}
	clock.Advance(time.Hour)
	tl := issueAtOnce(insts, []string{agent}, 16)
	checkNoRawErrors(t, tl)
	if tl.ok[agent] != 3 || rowsPerAgent(t, d.Pool(t))[agent] != 3 {
		t.Fatalf("second round: %d issued, %d rows; want 3 and 3", tl.ok[agent], rowsPerAgent(t, d.Pool(t))[agent])
	}
}

// conflictingInsert makes Insert hit a serialization failure
// on its first attempt, deterministically: the agent has an expired row; a
// second transaction deletes it and holds the row lock; the store's prune
// blocks on that row; the second transaction commits; under SERIALIZABLE
// the prune now fails with 40001 ("concurrent delete"). It returns the
// store's result.
func conflictingInsert(t *testing.T, d *testdb.DB, store *pgxstore.Store) (bool, error) {
	t.Helper()
	ctx := context.Background()
	conn := d.Conn(t)
	now := time.Unix(1_700_000_000, 0)
	if _, err := conn.Exec(ctx, `INSERT INTO agent_sessions VALUES ('old', $1, $2, $3, $4)`,
		agent, now.Add(-2*time.Hour), now.Add(-time.Hour), digest("x")); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `DELETE FROM agent_sessions WHERE id = 'old'`); err != nil {
		t.Fatal(err)
	}
	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := store.Insert(ctx, sessions.Session{
			ID: "new", AgentID: agent, IssuedAt: now, ExpiresAt: now.Add(time.Hour), TokenDigest: digest("y"),
		}, sessions.InsertRequest{Limit: 5, Now: now})
		done <- result{res.Inserted, err}
	}()
	waitForBlocked(t, d, conn.PgConn().PID())
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	return r.ok, r.err
}

// A transaction that hits a serialization failure on its only allowed
// attempt reports ErrRetriesExhausted (inside a StoreError), never the raw
// 40001, and stores nothing.
func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	store, err := pgxstore.New(d.Pool(t), &pgxstore.Config{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := conflictingInsert(t, d, store)
	var pgErr *pgconn.PgError
	if ok || !errors.Is(err, pgxstore.ErrRetriesExhausted) || !errors.Is(err, sessions.ErrStore) ||
		!errors.As(err, &pgErr) || pgErr.Code != "40001" {
		t.Fatalf("got %v %v, want ErrRetriesExhausted in a StoreError, caused by 40001", ok, err)
	}
	if st := store.Stats(); st.Exhausted != 1 || st.Retries != 0 || st.Transactions != 1 {
		t.Fatalf("stats %+v", st)
	}
	if n := rowsPerAgent(t, d.Pool(t))[agent]; n != 0 {
		t.Fatalf("the failed insert left %d rows", n)
	}
}

// With retries allowed, the caller never sees the failure: the second
// attempt finds the expired row gone and inserts.
func TestRetryThenSucceeds(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	store, err := pgxstore.New(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := conflictingInsert(t, d, store)
	if !ok || err != nil {
		t.Fatalf("got %v %v, want inserted after a retry", ok, err)
	}
	if st := store.Stats(); st.Retries != 1 || st.Exhausted != 0 {
		t.Fatalf("stats %+v, want exactly one retry", st)
	}
	if _, found, _ := store.Get(context.Background(), "new"); !found {
		t.Fatal("session not stored")
	}
}

// waitForBlocked returns once some backend waits on a lock held by the
// backend with process ID blocker.
func waitForBlocked(t *testing.T, d *testdb.DB, blocker uint32) {
	t.Helper()
	probe := d.Conn(t)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := probe.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))`, int32(blocker)).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("nothing ever waited on backend %d", blocker)
}

// A deadline that passes while the store waits on a lock comes back
// promptly as a StoreError wrapping context.DeadlineExceeded.
func TestDeadlineWhileBlocked(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store, err := pgxstore.New(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	blocker := d.Conn(t)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE agent_sessions IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = mgr.Issue(dctx, agent)
	if !errors.Is(err, sessions.ErrStore) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want store error wrapping DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("returned after %v, long past the 200ms deadline", waited)
	}
}

// The schema refuses rows the library would never write.
func TestSchemaConstraints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := testdb.New(t).Conn(t)
	now := time.Unix(1_700_000_000, 0)
	for name, args := range map[string][]any{
		"expires before issued": {"a", agent, now, now, digest("x")},
		"digest not hex":        {"b", agent, now, now.Add(time.Hour), "not-a-digest"},
		"empty id":              {"", agent, now, now.Add(time.Hour), digest("x")},
		"empty agent":           {"c", "", now, now.Add(time.Hour), digest("x")},
	} {
		_, err := conn.Exec(ctx, `INSERT INTO agent_sessions VALUES ($1, $2, $3, $4, $5)`, args...)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
			t.Errorf("%s: got %v, want check violation", name, err)
		}
	}
}

func TestPostgresConfigRejected(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t).Pool(t)
	for _, c := range []pgxstore.Config{
		{MaxAttempts: -1}, {MinBackoff: -1}, {MinBackoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		if _, err := pgxstore.New(pool, &c); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	if _, err := pgxstore.New(nil, nil); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Errorf("nil pool: %v", err)
	}
}

// Instances whose clocks disagree by more than the TTL still cannot push an
// agent over its limit: each issue counts every row the agent has left
// after its own prune. (Skew only cuts sessions short: the instance running
// ahead prunes rows the others still consider live.)
func TestInvariantClockSkew(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	var insts []instance
	for _, skew := range []time.Duration{0, 90 * time.Minute, -90 * time.Minute, 30 * time.Minute} {
		insts = append(insts, newInstances(t, d, 1, 3, newClock(1_700_000_000+int64(skew/time.Second)))...)
	}
	pool := d.Pool(t)
	for round := range 3 {
		tl := issueAtOnce(insts, []string{agent}, 32)
		checkNoRawErrors(t, tl)
		usable := 0
		for _, ib := range tl.issued {
			if _, err := ib.inst.mgr.Authenticate(context.Background(), ib.iss.Token, agent); err == nil {
				usable++
			}
		}
		if n := rowsPerAgent(t, pool)[agent]; n > 3 || usable > 3 {
			t.Fatalf("round %d: %d rows, %d usable tokens for an agent with limit 3", round, n, usable)
		}
	}
}

// Extreme same-agent contention (4 instances x 16 connections, 128
// goroutines, one agent) with no retries allowed: calls give up, but only
// as ErrRetriesExhausted inside ErrStore, never as a raw 40001, and the
// limit still holds.
func TestExtremeContentionNoRetries(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	var insts []instance
	for range 4 {
		cfg, err := pgxpool.ParseConfig(d.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = 16
		store, err := pgxstore.New(d.PoolWith(t, cfg), &pgxstore.Config{MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		mgr, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 5})
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, instance{store: store, mgr: mgr})
	}
	tl := issueAtOnce(insts, []string{agent}, 128)
	var exhaustedErrs int
	for _, err := range tl.other {
		var pgErr *pgconn.PgError
		switch {
		case errors.Is(err, pgxstore.ErrRetriesExhausted) && errors.Is(err, sessions.ErrStore):
			exhaustedErrs++
		case errors.As(err, &pgErr):
			t.Errorf("raw PostgreSQL error escaped: %v", err)
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if n := rowsPerAgent(t, d.Pool(t))[agent]; tl.ok[agent] > 5 || n != tl.ok[agent] {
		t.Fatalf("%d issued, %d rows, limit 5", tl.ok[agent], n)
	}
	_, retried, exhausted := retries(insts)
	if uint64(exhaustedErrs) != exhausted {
		t.Fatalf("%d callers saw ErrRetriesExhausted, stores counted %d", exhaustedErrs, exhausted)
	}
	t.Logf("128 goroutines, no retries: %d issued, %d limited, %d gave up (ErrRetriesExhausted), %d retries",
		tl.ok[agent], tl.limited[agent], exhaustedErrs, retried)
}

// Evicting at the limit for a session that expires before the agent's
// others (its issuer has a shorter TTL) leaves the count unchanged but
// must lower the count row's expiry bound, which checkCounts verifies.
func TestCountBoundFollowsShorterTTL(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	store, err := pgxstore.New(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	clock := newClock(1_700_000_000)
	withTTL := func(ttl time.Duration) *sessions.Manager {
		return newManager(t, store, clock, func(c *sessions.Config) {
			c.Limit, c.TTL, c.Policy = 2, ttl, sessions.PolicyEvictOldest
		})
	}
	long, short := withTTL(2*time.Hour), withTTL(time.Hour)
	mustIssue(t, long, agent)
	mustIssue(t, long, agent)
	clock.Advance(time.Second)
	iss := mustIssue(t, short, agent)
	if len(iss.Evicted) != 1 {
		t.Fatalf("evicted %v, want the oldest session", iss.Evicted)
	}
	checkCounts(t, d.Pool(t))
}

// On a database that was never migrated, every call fails with a store
// error that names the fix, not a bare "relation does not exist".
func TestUnmigratedDatabaseNamesTheFix(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := pgxstore.New(testdb.NewEmpty(t).Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	token := mustIssue(t, iss, agent).Token // a genuine token, so Authenticate reaches the store
	for name, call := range map[string]func() error{
		"Issue":         func() error { _, err := m.Issue(ctx, agent); return err },
		"Authenticate":  func() error { _, err := m.Authenticate(ctx, token, agent); return err },
		"Revoke":        func() error { _, err := m.Revoke(ctx, "some-session"); return err },
		"RevokeAgent":   func() error { _, err := m.RevokeAgent(ctx, agent); return err },
		"List":          func() error { _, err := m.List(ctx, agent); return err },
		"SetAgentLimit": func() error { return m.SetAgentLimit(ctx, agent, 2) },
	} {
		err := call()
		if !errors.Is(err, sessions.ErrStore) || !errors.Is(err, pgxstore.ErrNotMigrated) {
			t.Errorf("%s: %v; want ErrStore with ErrNotMigrated in the chain", name, err)
			continue
		}
		if !strings.Contains(err.Error(), "migrations.Up") || !strings.Contains(err.Error(), "agentsessions migrate up") {
			t.Errorf("%s: %q does not say how to migrate", name, err)
		}
	}
}

// Import stores sessions in bulk and leaves each agent's count row equal
// to its rows, so the limit check that follows counts them: an agent
// imported at its limit is refused its next session.
func TestImportKeepsCountsInStep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := testdb.New(t)
	store, err := pgxstore.New(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	var rows []sessions.Session
	for i := range 5 {
		rows = append(rows, sessions.Session{ID: fmt.Sprintf("imp-%d", i), AgentID: []string{agent, other}[i%2],
			IssuedAt: now, ExpiresAt: now.Add(time.Hour), TokenDigest: digest(fmt.Sprint(i))})
	}
	if n, err := store.Import(ctx, rows); err != nil || n != 5 {
		t.Fatalf("import = %d, %v", n, err)
	}
	checkCounts(t, d.Pool(t))
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 3, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Issue(ctx, agent); !errors.Is(err, sessions.ErrLimitExceeded) {
		t.Fatalf("agent imported with 3 sessions at limit 3: issue = %v, want ErrLimitExceeded", err)
	}
	mustIssue(t, m, other) // 2 of 3
	if _, err := store.Import(ctx, rows[:1]); !errors.Is(err, sessions.ErrStore) {
		t.Fatalf("re-import of a stored ID: %v, want ErrStore", err)
	}
	checkCounts(t, d.Pool(t))
}
