package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// A full predicate lock table (SQLSTATE 53200, "out of shared memory")
// is rerun after a backoff like a serialization failure: once the
// transactions holding the locks end there is room again. On a private
// server with a small table, one SERIALIZABLE transaction takes relation
// locks on tables until the server refuses one more; an issue started
// then fails with 53200, and succeeds on a rerun once that transaction
// ends. Before 53200 was rerun the issue failed with it.
func TestOutOfSharedMemoryIsRetried(t *testing.T) {
	t.Parallel()
	n := newNode(t, "predlocks")
	n.initdb()
	f, err := os.OpenFile(filepath.Join(n.pgdata, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("max_pred_locks_per_transaction = 10\nmax_connections = 20\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	n.start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, n.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		t.Fatal(err)
	}
	const tables = 600 // more relation locks than the table holds (10 per backend slot)
	if _, err := pool.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..%d LOOP
		EXECUTE format('CREATE TABLE hog_%%s (x int)', i); END LOOP; END $$`, tables)); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO agent_session_counts (agent_id) VALUES ($1)", agent); err != nil {
		t.Fatal(err)
	}

	// The hog: each read in a savepoint of its own, so that the read the
	// server refuses aborts only that savepoint; SIREAD locks outlive it.
	hog, err := pgx.Connect(ctx, n.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer hog.Close(ctx)
	tx, err := hog.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	if err != nil {
		t.Fatal(err)
	}
	full := false
	for i := 1; i <= tables && !full; i++ {
		if _, err := tx.Exec(ctx, "SAVEPOINT s"); err != nil {
			t.Fatal(err)
		}
		_, err := tx.Exec(ctx, fmt.Sprintf("SELECT * FROM hog_%d", i))
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			_, err = tx.Exec(ctx, "RELEASE SAVEPOINT s")
		case errors.As(err, &pgErr) && pgErr.Code == "53200":
			full = true
			_, err = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT s")
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !full {
		t.Fatalf("%d relation locks did not fill the predicate lock table", tables)
	}

	obs := &storeRecorder{}
	store, err := pgxstore.New(pool, &pgxstore.Config{Observer: obs, MinBackoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sawRefusal := make(chan struct{})
	var once sync.Once
	hogDone := make(chan struct{})
	defer func() { <-hogDone }() // before the deferred close of its connection
	go func() {
		defer close(hogDone)
		// End the hog once the issue has been refused for lack of room.
		for {
			if evs, _, _, _ := obs.snapshot(); len(evs) > 0 {
				once.Do(func() { close(sawRefusal) })
				_ = tx.Rollback(ctx)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	now := time.Now().UTC().Truncate(time.Second)
	res, err := store.Insert(ctx, sessions.Session{ID: "after-53200", AgentID: agent, Kind: sessions.KindSession,
		IssuedAt: now, ExpiresAt: now.Add(time.Hour), TokenDigest: digest("after-53200")}, sessions.InsertRequest{Limit: 5, Now: now})
	if err != nil || !res.Inserted {
		t.Fatalf("issue with the lock table full, then freed: %+v %v; want inserted after a rerun", res, err)
	}
	select {
	case <-sawRefusal:
	default:
		t.Fatal("the issue was never refused for lack of room: the test did not fill the lock table")
	}
	evs, _, _, _ := obs.snapshot()
	ev := evs[0]
	if ev.SQLState != "53200" || ev.Reason != pgxstore.RetrySharedMemory || ev.GaveUp {
		t.Errorf("first rerun %+v; want SQLSTATE 53200, reason %q", ev, pgxstore.RetrySharedMemory)
	}
	if st := store.Stats(); st.Retries < 1 || st.Exhausted != 0 {
		t.Errorf("stats %+v; want a retry and nothing exhausted", st)
	}
}
