package sessions_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

// The older five-round-trip limit transaction, kept for comparison, holds
// the limit under the same contention as the default single statement.
func TestInvariantMultiStatementFourInstances(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	insts := newInstances(t, d, 4, 5, newClock(1_700_000_000))
	for _, in := range insts {
		sessions.UseMultiStatementInsert(in.store)
	}
	agents := make([]string, 8)
	for i := range agents {
		agents[i] = fmt.Sprintf("did:agentmesh:multi-%d", i)
	}
	tl := issueAtOnce(insts, agents, 12)
	checkNoRawErrors(t, tl)
	rows := rowsPerAgent(t, d.Pool(t))
	for _, a := range agents {
		if tl.ok[a] != 5 || tl.limited[a] != 7 || rows[a] != 5 {
			t.Errorf("%s: %d issued, %d limited, %d rows; want 5, 7, 5", a, tl.ok[a], tl.limited[a], rows[a])
		}
	}
}

// Issue on PostgreSQL through the default single statement and through
// the five-round-trip transaction, over 10,000 agents (little contention),
// from parallel goroutines sharing one pool.
//
//	go test -run '^$' -bench IssuePostgres -benchtime 5s ./sessions
func BenchmarkIssuePostgres(b *testing.B) {
	for _, path := range []string{"single-statement", "multi-statement"} {
		b.Run(path, func(b *testing.B) {
			store, err := sessions.NewPostgresStore(testdb.New(b).Pool(b), nil)
			if err != nil {
				b.Fatal(err)
			}
			if path == "multi-statement" {
				sessions.UseMultiStatementInsert(store)
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
