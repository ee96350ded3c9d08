package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// serializablePool opens a pool whose connections default to SERIALIZABLE,
// so the store sends its limit statement without BEGIN and COMMIT.
func serializablePool(t testing.TB, d *testdb.DB, afterConnect func(context.Context, *pgx.Conn) error) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "serializable"
	cfg.AfterConnect = afterConnect
	return d.PoolWith(t, cfg)
}

// On pools that default to SERIALIZABLE the statement goes out alone; the
// limit holds the same under contention.
func TestInvariantDefaultIsolationFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	clock := newClock(1_700_000_000)
	var insts []instance
	for range 4 {
		store, err := pgxstore.New(serializablePool(t, d, nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, instance{store: store, mgr: newManager(t, store, clock, func(c *sessions.Config) { c.Limit = 5 })})
	}
	issueTwelveEachToLimitFive(t, d, insts, "did:agentmesh:serializable-%d", 8)
	tx, retried, exhausted := retries(insts)
	t.Logf("default isolation, 8 agents x 12: %d transactions, %d retries, %d exhausted", tx, retried, exhausted)
}

// A pool that claims SERIALIZABLE but whose connections were switched to
// READ COMMITTED after connecting: the statement notices and inserts
// nothing, and Issue fails with ErrInvalidConfig instead of risking the
// limit.
func TestInsertRefusedBelowSerializable(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	pool := serializablePool(t, d, func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET default_transaction_isolation = 'read committed'")
		return err
	})
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := newManager(t, store, newClock(1_700_000_000), nil)
	if _, err := m.Issue(context.Background(), agent); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Fatalf("issue below SERIALIZABLE: %v, want ErrInvalidConfig", err)
	}
	if n := rowsPerAgent(t, d.Pool(t))[agent]; n != 0 {
		t.Fatalf("%d rows inserted below SERIALIZABLE", n)
	}
}

// Issue on PostgreSQL through the limit statement, pipelined with BEGIN
// and COMMIT or alone on a SERIALIZABLE pool, over 10,000 agents (little
// contention), from parallel goroutines sharing one pool.
//
//	go test -run '^$' -bench IssuePostgres -benchtime 5s ./sessions
func BenchmarkIssuePostgres(b *testing.B) {
	for _, path := range []string{"single-statement", "serializable-pool"} {
		b.Run(path, func(b *testing.B) {
			d := testdb.New(b)
			pool := d.Pool(b)
			if path == "serializable-pool" {
				pool = serializablePool(b, d, nil)
			}
			store, err := pgxstore.New(pool, nil)
			if err != nil {
				b.Fatal(err)
			}
			m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1 << 20})
			if err != nil {
				b.Fatal(err)
			}
			var seed atomic.Uint64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := rand.New(rand.NewPCG(seed.Add(1), 0))
				for pb.Next() {
					if _, err := m.Issue(context.Background(), fmt.Sprintf("did:agentmesh:b%d", r.IntN(10_000))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			st := store.Stats()
			b.ReportMetric(float64(st.Retries)*1000/float64(max(st.Transactions, 1)), "retries/1000")
		})
	}
}
