package bench

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
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// The invariant check must see an agent that holds more rows than the
// limit, however the rows got there.
func TestCheckTableDetectsOverLimitAgent(t *testing.T) {
	d := testdb.New(t)
	pool := d.Pool(t)
	ctx := context.Background()
	cfg := Config{TTL: time.Hour, Limit: 3, Sessions: 7, Agents: 7}
	rows, _, err := mintSessions([]byte("0123456789abcdef0123456789abcdef"), cfg, 7, func(i int) string { return agentName(i + 1) }, prefillBase, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := copySessions(ctx, pool, rows, cfg.Agents); err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := checkTable(ctx, pool, 3, &res); err != nil {
		t.Fatal(err)
	}
	if res.OverLimitAgents != 0 || res.Rows != 7 {
		t.Fatalf("7 agents with one session each: over-limit %d, rows %d", res.OverLimitAgents, res.Rows)
	}
	// Bypass the library, as a broken store would: agent 1 gets 4 rows, agent
	// 2 exactly the limit (3), which is fine.
	for i, agent := range []string{"1", "1", "1", "2", "2"} {
		if _, err := pool.Exec(ctx, `INSERT INTO agent_sessions (id, agent_id, issued_at, expires_at, token_digest)
			VALUES ($1, $2, now(), now() + interval '1 hour', repeat('ab', 32))`, fmt.Sprint("extra-", i), agent); err != nil {
			t.Fatal(err)
		}
	}
	if err := checkTable(ctx, pool, 3, &res); err != nil {
		t.Fatal(err)
	}
	if res.OverLimitAgents != 1 || res.Rows != 12 {
		t.Fatalf("agent 1 at 4 of 3: over-limit %d (want 1), rows %d (want 12)", res.OverLimitAgents, res.Rows)
	}
}

// Minted sessions are the library's own: a Manager on the table with the
// same secret authenticates them.
func TestMintedSessionsAuthenticate(t *testing.T) {
	d := testdb.New(t)
	pool := d.Pool(t)
	ctx := context.Background()
	secret := []byte("0123456789abcdef0123456789abcdef")
	cfg := Config{TTL: time.Hour, Limit: 2, HotAgents: 3, Sessions: 10, Agents: 10}
	n, agentOf := prefillPlan(cfg, WorkloadIssueHot)
	if n != 3 {
		t.Fatalf("issue-hot prefill: %d sessions, want hot agents x (limit-1) = 3", n)
	}
	rows, pre, err := mintSessions(secret, cfg, n, agentOf, prefillBase, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := copySessions(ctx, pool, rows, cfg.Agents); err != nil {
		t.Fatal(err)
	}
	st, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(st, sessions.Config{Secret: secret, TTL: time.Hour, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range pre {
		if p.id != fmt.Sprint(prefillBase+i) || p.agent != agentName(i%3+1) {
			t.Errorf("session %d: id %s agent %s", i, p.id, p.agent)
		}
		if _, err := m.Authenticate(ctx, p.token, p.agent); err != nil {
			t.Errorf("session %d: %v", i, err)
		}
	}
	// Each hot agent is one below its limit of 2: one more issue fits, the
	// next does not.
	if _, err := m.Issue(ctx, "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Issue(ctx, "1"); !errors.Is(err, sessions.ErrLimitExceeded) {
		t.Fatalf("third session for agent 1 at limit 2: %v", err)
	}
}

// The variants must hold the limit as the library does: instances racing
// to issue for one agent end with exactly the limit stored, and the
// library's accounting (limit errors) agrees.
func TestVariantsHoldTheLimit(t *testing.T) {
	for _, name := range []string{VariantLibrary, VariantCTE} {
		t.Run(name, func(t *testing.T) {
			d := testdb.New(t)
			v := variants[name]
			ctx := context.Background()
			const instances, workers, limit, attempts = 3, 4, 3, 8
			var mgrs []*sessions.Manager
			var stores []benchStore
			for range instances {
				cfg, err := pgxpool.ParseConfig(d.URL)
				if err != nil {
					t.Fatal(err)
				}
				pool := d.PoolWith(t, v.poolConfig(cfg))
				st, err := v.newStore(pool, 50)
				if err != nil {
					t.Fatal(err)
				}
				m, err := sessions.New(st, sessions.Config{Secret: []byte("0123456789abcdef0123456789abcdef"), TTL: time.Hour, Limit: limit})
				if err != nil {
					t.Fatal(err)
				}
				mgrs, stores = append(mgrs, m), append(stores, st)
			}
			var mu sync.Mutex
			outcomes := map[string]int{}
			var wg sync.WaitGroup
			for i := range instances * workers {
				m := mgrs[i%instances]
				wg.Go(func() {
					for range attempts {
						_, err := m.Issue(ctx, "contended-agent")
						mu.Lock()
						outcomes[Classify(err)]++
						if Classify(err) == ClassOther || Classify(err) == ClassStore {
							t.Errorf("issue: %v", err)
						}
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			var res Result
			if err := checkTable(ctx, d.Pool(t), limit, &res); err != nil {
				t.Fatal(err)
			}
			if res.OverLimitAgents != 0 || res.Rows != limit || outcomes[ClassOK] != limit {
				t.Fatalf("rows %d, over-limit agents %d, outcomes %v: want exactly %d issued", res.Rows, res.OverLimitAgents, outcomes, limit)
			}
			var retries int64
			for _, s := range stores {
				retries += s.retries()
			}
			t.Logf("%s: outcomes %v, retries %d", name, outcomes, retries)

			// An override in agent_limits applies as in the library.
			if _, err := d.Pool(t).Exec(ctx, `INSERT INTO agent_limits (agent_id, max_sessions) VALUES ('contended-agent', 4)`); err != nil {
				t.Fatal(err)
			}
			iss, err := mgrs[0].Issue(ctx, "contended-agent")
			if err != nil {
				t.Fatalf("issue under the override of 4: %v", err)
			}
			if _, err := mgrs[1].Issue(ctx, "contended-agent"); !errors.Is(err, sessions.ErrLimitExceeded) {
				t.Fatalf("fifth session under an override of 4: %v", err)
			}
			// Expired sessions are pruned and make room.
			if _, err := d.Pool(t).Exec(ctx, `UPDATE agent_sessions SET issued_at = now() - interval '2 hours', expires_at = now() - interval '1 hour' WHERE id = $1`, iss.Session.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := mgrs[2].Issue(ctx, "contended-agent"); err != nil {
				t.Fatalf("issue after one session expired: %v", err)
			}
			var n int
			if err := d.Pool(t).QueryRow(ctx, `SELECT count(*) FROM agent_sessions WHERE id = $1`, iss.Session.ID).Scan(&n); err != nil || n != 0 {
				t.Fatalf("expired session still stored (%d, %v)", n, err)
			}
		})
	}
}

// A prefill after issue traffic restores the table instead of loading it
// again: the sessions issued meanwhile are gone and off their agents'
// counts, the prefilled ones are all there and still authenticate, and
// after a workload that revoked prefilled sessions (mixed) the table is
// loaded again in full.
func TestPrefillRestoresAfterIssue(t *testing.T) {
	d := testdb.New(t)
	ctx := context.Background()
	cfg, err := Config{DatabaseURL: d.URL, Instances: 1, Workers: 1, Agents: 20, Sessions: 30, Limit: 4}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	o, err := newOurs(ctx, cfg, variantLibrary, pc, "public", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	counts := func() (rows, stored int64) {
		t.Helper()
		if err := d.Pool(t).QueryRow(ctx, "SELECT (SELECT count(*) FROM agent_sessions), (SELECT coalesce(sum(stored), 0) FROM agent_session_counts)").Scan(&rows, &stored); err != nil {
			t.Fatal(err)
		}
		return rows, stored
	}
	pre, err := o.prefill(ctx, WorkloadIssue)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := o.mgrs[0].Issue(ctx, agentName(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if rows, stored := counts(); rows != 40 || stored != 40 {
		t.Fatalf("after 10 issues: %d rows, counts say %d; want 40", rows, stored)
	}
	var marker string // a prefilled row's xmin (inserting transaction) changes if the table is loaded again
	if err := d.Pool(t).QueryRow(ctx, "SELECT xmin::text FROM agent_sessions WHERE id = $1", pre[0].id).Scan(&marker); err != nil {
		t.Fatal(err)
	}
	again, err := o.prefill(ctx, WorkloadAuthenticate)
	if err != nil {
		t.Fatal(err)
	}
	if rows, stored := counts(); rows != 30 || stored != 30 || len(again) != 30 {
		t.Fatalf("restored: %d rows, counts say %d, %d prefilled; want 30", rows, stored, len(again))
	}
	var xmin string
	if err := d.Pool(t).QueryRow(ctx, "SELECT xmin::text FROM agent_sessions WHERE id = $1", pre[0].id).Scan(&xmin); err != nil || xmin != marker {
		t.Errorf("prefilled row written by transaction %s, now %s (%v): the table was loaded again, not restored", marker, xmin, err)
	}
	for _, p := range again {
		if _, err := o.mgrs[0].Authenticate(ctx, p.token, p.agent); err != nil {
			t.Fatalf("restored session %s: %v", p.id, err)
		}
	}
	// mixed revokes prefilled sessions: the next prefill loads in full.
	if _, err := o.prefill(ctx, WorkloadMixed); err != nil {
		t.Fatal(err)
	}
	if _, err := o.mgrs[0].Revoke(ctx, pre[0].id); err != nil {
		t.Fatal(err)
	}
	if _, err := o.prefill(ctx, WorkloadIssue); err != nil {
		t.Fatal(err)
	}
	if rows, stored := counts(); rows != 30 || stored != 30 {
		t.Fatalf("after mixed: %d rows, counts say %d; want the full 30", rows, stored)
	}
	if _, err := o.mgrs[0].Authenticate(ctx, pre[0].token, pre[0].agent); err != nil {
		t.Fatalf("the revoked prefilled session is back after a full load: %v", err)
	}
}
