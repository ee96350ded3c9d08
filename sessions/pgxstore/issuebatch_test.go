package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

var batchNow = time.Unix(1_700_000_000, 0).UTC()

func batchSession(id, agentID string) sessions.Session {
	return sessions.Session{ID: id, AgentID: agentID, Kind: sessions.KindSession, IssuedAt: batchNow,
		ExpiresAt: batchNow.Add(time.Hour), TokenDigest: digest(id)}
}

// ensureCounts gives agents their count rows, as agents issued to before have.
func ensureCounts(t *testing.T, d *testdb.DB, agents ...string) {
	t.Helper()
	if _, err := d.Conn(t).Exec(context.Background(),
		"INSERT INTO agent_session_counts (agent_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", agents); err != nil {
		t.Fatal(err)
	}
}

type batchOutcome struct {
	res sessions.InsertResult
	err error
}

// oneSlotStore is a store with one issue slot: issues that arrive while
// one is in flight wait for it and then go out as a batch.
func oneSlotStore(t *testing.T, d *testdb.DB) *pgxstore.Store {
	t.Helper()
	store, err := pgxstore.New(d.Pool(t), &pgxstore.Config{IssueBatches: 1})
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// inBatch holds a store's only issue slot (IssueBatches 1) with an
// issue blocked on its agent's count row, which another transaction has
// locked; starts one Insert per session, waits until all of them queue
// behind it, then lets the blocker finish, so that the queued issues go
// out together as one batch. ctxs, if not nil, are the Inserts' contexts
// (nil for none); beforeRelease, if not nil, runs once they all queue. It
// returns the blocker's outcome and theirs.
func inBatch(t *testing.T, d *testdb.DB, store *pgxstore.Store, limit int, ctxs []context.Context, beforeRelease func(), ss ...sessions.Session) (batchOutcome, []batchOutcome) {
	t.Helper()
	ctx := context.Background()
	blocker := batchSession("blocker", "did:agentmesh:blocker")
	ensureCounts(t, d, blocker.AgentID)
	locker := d.Conn(t)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := tx.QueryRow(ctx, "SELECT 1 FROM agent_session_counts WHERE agent_id = $1 FOR UPDATE", blocker.AgentID).Scan(&one); err != nil {
		t.Fatal(err)
	}
	req := sessions.InsertRequest{Limit: limit, Now: batchNow}
	var first batchOutcome
	var wg sync.WaitGroup
	wg.Go(func() { first.res, first.err = store.Insert(ctx, blocker, req) })
	waitForBlocked(t, d, locker.PgConn().PID())
	out := make([]batchOutcome, len(ss))
	for i, s := range ss {
		c := ctx
		if ctxs != nil && ctxs[i] != nil {
			c = ctxs[i]
		}
		wg.Go(func() { out[i].res, out[i].err = store.Insert(c, s, req) })
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("%d issues to queue", len(ss)), func() bool { return pgxstore.IssuesQueued(store) == len(ss) })
	if beforeRelease != nil {
		beforeRelease()
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	return first, out
}

// Issues that queue while the store's issue slot is busy go out as one
// transaction, which inserts those on the fast path (below the limit, a
// count row, nothing expired) and leaves the rest to IssueSession: an
// agent at its limit is refused, an agent with no count row yet gets one,
// an agent twice in the batch gets both, and every count stays in step.
func TestIssueBatchDecidesTheFastPathsTogether(t *testing.T) {
	d := testdb.New(t)
	ctx := context.Background()
	store := oneSlotStore(t, d)
	fast := []string{"did:agentmesh:b1", "did:agentmesh:b2", "did:agentmesh:b3"}
	ensureCounts(t, d, fast...)
	full := "did:agentmesh:full"
	ensureCounts(t, d, full)
	for i := range 2 {
		if res, err := store.Insert(ctx, batchSession(fmt.Sprintf("full-%d", i), full), sessions.InsertRequest{Limit: 2, Now: batchNow}); err != nil || !res.Inserted {
			t.Fatalf("prefill: %+v %v", res, err)
		}
	}
	before := store.Stats()
	ss := []sessions.Session{
		batchSession("s-b1", fast[0]), batchSession("s-b2", fast[1]), batchSession("s-b3", fast[2]),
		batchSession("s-b1-again", fast[0]),             // the same agent twice
		batchSession("s-full", full),                    // at its limit
		batchSession("s-new", "did:agentmesh:newcomer"), // no count row yet
	}
	blocked, out := inBatch(t, d, store, 2, nil, nil, ss...)
	if blocked.err != nil || !blocked.res.Inserted {
		t.Fatalf("blocker: %+v %v", blocked.res, blocked.err)
	}
	for i, o := range out {
		want := ss[i].ID != "s-full"
		if o.err != nil || o.res.Inserted != want || o.res.Limit != 2 {
			t.Errorf("%s: %+v %v; want inserted=%v, limit 2", ss[i].ID, o.res, o.err, want)
		}
	}
	st := store.Stats()
	if n := st.IssueBatches - before.IssueBatches; n != 1 {
		t.Errorf("%d batch transactions, want 1", n)
	}
	if n := st.IssueBatched - before.IssueBatched; n != 3 {
		t.Errorf("the batch inserted %d issues, want 3 (b1, b2, b3)", n)
	}
	rows := rowsPerAgent(t, d.Pool(t))
	for a, want := range map[string]int{fast[0]: 2, fast[1]: 1, fast[2]: 1, full: 2, "did:agentmesh:newcomer": 1} {
		if rows[a] != want {
			t.Errorf("%s holds %d rows, want %d", a, rows[a], want)
		}
	}
	checkCounts(t, d.Pool(t))
}

// A batch that fails in the server committed nothing: its issues run
// alone, where the failure lands on the issue that caused it (a
// duplicate session ID) and the others are inserted.
func TestIssueBatchFailureFallsBackToEachAlone(t *testing.T) {
	d := testdb.New(t)
	ctx := context.Background()
	store := oneSlotStore(t, d)
	agents := []string{"did:agentmesh:c1", "did:agentmesh:c2", "did:agentmesh:c3"}
	ensureCounts(t, d, agents...)
	if res, err := store.Insert(ctx, batchSession("taken", agents[2]), sessions.InsertRequest{Limit: 5, Now: batchNow}); err != nil || !res.Inserted {
		t.Fatalf("prefill: %+v %v", res, err)
	}
	before := store.Stats()
	ss := []sessions.Session{batchSession("s-c1", agents[0]), batchSession("s-c2", agents[1]), batchSession("taken", agents[2])}
	_, out := inBatch(t, d, store, 5, nil, nil, ss...)
	for i, o := range out[:2] {
		if o.err != nil || !o.res.Inserted {
			t.Errorf("%s: %+v %v; want inserted", ss[i].ID, o.res, o.err)
		}
	}
	if !errors.Is(out[2].err, sessions.ErrDuplicateSessionID) {
		t.Errorf("duplicate ID: %+v %v; want ErrDuplicateSessionID", out[2].res, out[2].err)
	}
	st := store.Stats()
	if st.IssueBatches-before.IssueBatches != 1 || st.IssueBatched != before.IssueBatched {
		t.Errorf("batches %d, batched %d; want one batch that inserted nothing",
			st.IssueBatches-before.IssueBatches, st.IssueBatched-before.IssueBatched)
	}
	rows := rowsPerAgent(t, d.Pool(t))
	if rows[agents[0]] != 1 || rows[agents[1]] != 1 || rows[agents[2]] != 1 {
		t.Errorf("rows %v; want one each", rows)
	}
	checkCounts(t, d.Pool(t))
}

// An issue whose caller gives up while it waits for a slot was never
// sent: the caller gets its context's error, nothing of it is written,
// and the issues queued with it go out without it.
func TestIssueBatchCallerGivesUpWhileQueued(t *testing.T) {
	d := testdb.New(t)
	store := oneSlotStore(t, d)
	agents := []string{"did:agentmesh:d1", "did:agentmesh:d2", "did:agentmesh:d3"}
	ensureCounts(t, d, agents...)
	gone, cancel := context.WithCancel(context.Background())
	ss := []sessions.Session{batchSession("s-d1", agents[0]), batchSession("s-d2", agents[1]), batchSession("s-d3", agents[2])}
	// Cancelled once all three queue, before the slot frees: the batch
	// then takes the other two only.
	_, out := inBatch(t, d, store, 5, []context.Context{nil, gone, nil}, cancel, ss...)
	if !errors.Is(out[1].err, context.Canceled) {
		t.Errorf("cancelled issue: %+v %v; want context.Canceled", out[1].res, out[1].err)
	}
	var se *sessions.StoreError
	if !errors.As(out[1].err, &se) {
		t.Errorf("cancelled issue: %v is not a *sessions.StoreError", out[1].err)
	}
	for _, i := range []int{0, 2} {
		if out[i].err != nil || !out[i].res.Inserted {
			t.Errorf("%s: %+v %v; want inserted", ss[i].ID, out[i].res, out[i].err)
		}
	}
	if n := rowsPerAgent(t, d.Pool(t))[agents[1]]; n != 0 {
		t.Errorf("the cancelled issue wrote %d rows", n)
	}
	checkCounts(t, d.Pool(t))
}

// Four instances, each with one issue slot, so that nearly every issue
// shares a transaction: 16 agents, 12 issues each at once, limit 5. Every
// agent ends with exactly 5 rows (asked of the database), the counts are
// in step, and batches did decide issues.
func TestInvariantIssueBatchesFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	insts := newInstancesWith(t, d, 4, 5, newClock(1_700_000_000), &pgxstore.Config{IssueBatches: 1})
	agents := make([]string, 16)
	for i := range agents {
		agents[i] = fmt.Sprintf("did:agentmesh:batched-%02d", i)
	}
	ensureCounts(t, d, agents...) // known agents: the fast path applies
	issueTwelveEachToLimitFive(t, d, insts, "did:agentmesh:batched-%02d", 16)
	var batches, batched uint64
	for _, in := range insts {
		st := in.store.Stats()
		batches += st.IssueBatches
		batched += st.IssueBatched
	}
	tx, retried, _ := retries(insts)
	t.Logf("16 agents x 12 issues on 4 instances: %d issues, %d batch transactions inserted %d, %d retries", tx, batches, batched, retried)
	if batched == 0 {
		t.Errorf("no issue was decided in a batch (%d batch transactions): the test no longer exercises batching", batches)
	}
}

// The batch statement joins its inputs to agent_session_counts. Planned
// freely, on a small analyzed table, that join is a sequential scan, whose
// predicate lock covers the whole table and makes every concurrent issue
// conflict (TestInvariantDistinctAgentsFourInstances saw 220 retries in
// 512 issues); planned as the store sends it, it locks index pages only.
func TestIssueBatchLocksIndexPagesOnly(t *testing.T) {
	ctx := context.Background()
	d := testdb.New(t)
	agents := make([]string, 300)
	for i := range agents {
		agents[i] = fmt.Sprintf("did:agentmesh:lock-%03d", i)
	}
	ensureCounts(t, d, agents...)
	if _, err := d.Conn(t).Exec(ctx, "ANALYZE agent_session_counts"); err != nil {
		t.Fatal(err)
	}
	tableLocks := func(before string) int {
		tx, err := d.Conn(t).BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if before != "" {
			if _, err := tx.Exec(ctx, before); err != nil {
				t.Fatal(err)
			}
		}
		n := 2
		args := db.IssueSessionBatchParams{Now: batchNow}
		for i := range n {
			s := batchSession(fmt.Sprintf("lock-s-%d", i), agents[i*100])
			args.AgentIds = append(args.AgentIds, s.AgentID)
			args.Kinds = append(args.Kinds, s.Kind)
			args.Ids = append(args.Ids, s.ID)
			args.IssuedAts = append(args.IssuedAts, s.IssuedAt)
			args.ExpiresAts = append(args.ExpiresAts, s.ExpiresAt)
			args.TokenDigests = append(args.TokenDigests, s.TokenDigest)
			args.Metadata = append(args.Metadata, "")
			args.DefaultLimits = append(args.DefaultLimits, 5)
		}
		row, err := db.New(tx).IssueSessionBatch(ctx, args)
		if err != nil || int(row.Inserted) != n {
			t.Fatalf("batch: %+v %v", row, err)
		}
		var locks int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND mode = 'SIReadLock'
			AND locktype = 'relation' AND relation = 'agent_session_counts'::regclass`).Scan(&locks); err != nil {
			t.Fatal(err)
		}
		return locks
	}
	if n := tableLocks(pgxstore.PlanForLookups); n != 0 {
		t.Errorf("as the store sends it, the batch holds %d predicate locks on the whole count table, want 0", n)
	}
	t.Logf("planned freely, the batch holds %d table-wide predicate locks", tableLocks(""))
}
