package pgxstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Advisory locks are database-wide, and other tests running in parallel
// (here and in other packages) queue on the key of the shared test agent
// too, now that any conflict of a batch marks its agents contended; these
// tests use agents of their own, so the count sees only their locks.
const (
	lockAgent  = "did:agentmesh:queue-lock"
	stormAgent = "did:agentmesh:queue-storm"
)

// advisoryLocks counts the holders of the queue lock of agentID's sessions
// now (a bigint key shows in pg_locks as its high and low 32 bits).
func advisoryLocks(t *testing.T, d *testdb.DB, agentID string) int {
	t.Helper()
	key := pgxstore.QueueLockKey(agentID, sessions.KindSession)
	var n int
	if err := d.Pool(t).QueryRow(context.Background(), `
		SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1
		  AND classid = ((($1::bigint) >> 32) & 4294967295)::oid AND objid = (($1::bigint) & 4294967295)::oid
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A contended agent's issues queue on the advisory lock and leave none
// behind, whether they succeed, are refused at the limit, or fail in the
// statement (a duplicate session ID); the limit holds as ever.
func TestQueuedIssueReleasesItsLock(t *testing.T) {
	ctx := context.Background()
	d := testdb.New(t)
	store, err := pgxstore.New(d.Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0).UTC()
	s := sessions.Session{ID: "q-1", AgentID: lockAgent, Kind: sessions.KindSession, IssuedAt: now, ExpiresAt: now.Add(time.Hour), TokenDigest: digest("q-1")}
	req := sessions.InsertRequest{Limit: 1, Now: now}
	// The count sees the lock when it is held (so 0 below means released).
	holder := d.Conn(t)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", pgxstore.QueueLockKey(lockAgent, sessions.KindSession)); err != nil {
		t.Fatal(err)
	}
	if n := advisoryLocks(t, d, lockAgent); n != 1 {
		t.Fatalf("a held queue lock counts %d, want 1", n)
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", pgxstore.QueueLockKey(lockAgent, sessions.KindSession)); err != nil {
		t.Fatal(err)
	}
	pgxstore.MarkContended(store, lockAgent, sessions.KindSession)
	if res, err := store.Insert(ctx, s, req); err != nil || !res.Inserted {
		t.Fatalf("queued insert: %+v %v", res, err)
	}
	if n := advisoryLocks(t, d, lockAgent); n != 0 {
		t.Fatalf("%d advisory locks held after a queued insert", n)
	}
	s2 := s
	s2.ID, s2.TokenDigest = "q-2", digest("q-2")
	if res, err := store.Insert(ctx, s2, req); err != nil || res.Inserted {
		t.Fatalf("queued insert at the limit: %+v %v; want refused", res, err)
	}
	if _, err := store.Insert(ctx, s, sessions.InsertRequest{Limit: 5, Now: now}); !errors.Is(err, sessions.ErrDuplicateSessionID) {
		t.Fatalf("queued insert of a duplicate ID: %v, want ErrDuplicateSessionID", err)
	}
	if n := advisoryLocks(t, d, lockAgent); n != 0 {
		t.Fatalf("%d advisory locks held after a refused and a failed queued insert", n)
	}
	// And the store's connections can all take the lock again at once.
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s3 := s2
	s3.ID, s3.TokenDigest = "q-3", digest("q-3")
	if res, err := store.Insert(lctx, s3, sessions.InsertRequest{Limit: 5, Now: now}); err != nil || !res.Inserted {
		t.Fatalf("queued insert after the failures: %+v %v", res, err)
	}
}

// A storm on one agent from four instances: once an instance has seen a
// conflict, its issues queue. The limit is exact, no lock is left, and
// the retries are logged beside the total.
func TestInvariantQueuedStormFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	insts := newInstances(t, d, 4, 5, clock)
	for _, in := range insts { // as after an earlier conflict
		pgxstore.MarkContended(in.store, stormAgent, sessions.KindSession)
	}
	tl := issueAtOnce(insts, []string{stormAgent}, 64)
	checkNoRawErrors(t, tl)
	if tl.ok[stormAgent] != 5 || tl.limited[stormAgent] != 59 {
		t.Fatalf("%d issued, %d refused; want 5 and 59", tl.ok[stormAgent], tl.limited[stormAgent])
	}
	if n := rowsPerAgent(t, d.Pool(t))[stormAgent]; n != 5 {
		t.Fatalf("%d rows, want 5", n)
	}
	if n := advisoryLocks(t, d, stormAgent); n != 0 {
		t.Fatalf("%d advisory locks left", n)
	}
	checkCounts(t, d.Pool(t))
	tx, retried, _ := retries(insts)
	t.Logf("queued storm, 4 instances, 64 issues: %d transactions, %d retries", tx, retried)
}
