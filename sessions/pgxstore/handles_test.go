package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

// Three kinds with different limits.
var invariantKinds = []sessions.HandleKind{
	{Name: "basket", TTL: time.Hour, Limit: 2},
	{Name: "browser", TTL: time.Hour, Limit: 3},
	{Name: "sandbox", TTL: time.Hour, Limit: 5},
}

// rowsPerKey counts stored rows per (agent, kind).
func rowsPerKey(t *testing.T, pool *pgxpool.Pool) map[[2]string]int {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT agent_id, kind, count(*) FROM agent_sessions GROUP BY agent_id, kind")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[[2]string]int{}
	for rows.Next() {
		var a, k string
		var n int
		if err := rows.Scan(&a, &k, &n); err != nil {
			t.Fatal(err)
		}
		out[[2]string{a, k}] = n
	}
	return out
}

// 4 instances × 64 goroutines create handles of three kinds at the same
// instant, for one principal and then for 16. Each (principal, kind)
// ends with exactly min(attempts, limit) handles, the database says so,
// every refusal is a LimitError (no raw serialization failure), and the
// count rows match the table.
func TestInvariantHandleKindsFourInstances(t *testing.T) {
	t.Parallel()
	for _, principals := range []int{1, 16} {
		t.Run(fmt.Sprintf("%d principals", principals), func(t *testing.T) {
			d := testdb.New(t)
			in := handleInstances(t, d, 4, invariantKinds...)
			const perInstance = 64
			attempts := map[[2]string]int{}
			type job struct{ principal, kind string }
			var jobs []job
			for i := range 4 * perInstance {
				j := job{fmt.Sprintf("did:agentmesh:p-%02d", i%principals), invariantKinds[(i/principals)%3].Name}
				jobs = append(jobs, j)
				attempts[[2]string{j.principal, j.kind}]++
			}
			var (
				mu      sync.Mutex
				created = map[[2]string]int{}
				others  []error
				wg      sync.WaitGroup
			)
			start := make(chan struct{})
			for i, j := range jobs {
				wg.Go(func() {
					<-start
					_, err := in[i%4].handles.Create(context.Background(), j.principal, j.kind)
					mu.Lock()
					defer mu.Unlock()
					var le *sessions.LimitError
					switch {
					case err == nil:
						created[[2]string{j.principal, j.kind}]++
					case errors.As(err, &le):
					default:
						others = append(others, err)
					}
				})
			}
			close(start)
			wg.Wait()
			if len(others) > 0 {
				t.Fatalf("%d creates failed other than at the limit, e.g. %v", len(others), others[0])
			}
			limits := map[string]int{}
			for _, k := range invariantKinds {
				limits[k.Name] = k.Limit
			}
			stored := rowsPerKey(t, d.Pool(t))
			for key, n := range attempts {
				want := min(n, limits[key[1]])
				if created[key] != want || stored[key] != want {
					t.Errorf("%s %s: %d attempts, %d created, %d stored; want %d", key[0], key[1], n, created[key], stored[key], want)
				}
			}
			var tx, retried uint64
			for _, x := range in {
				tx, retried = tx+x.store.Stats().Transactions, retried+x.store.Stats().Retries
			}
			t.Logf("%d limit transactions, %d serialization retries", tx, retried)
			checkCounts(t, d.Pool(t))
		})
	}
}
