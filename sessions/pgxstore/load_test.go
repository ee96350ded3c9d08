package pgxstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// loadStats counts what a load run did. Violations are outcomes that must
// never happen; everything else is an expected class.
type loadStats struct {
	issued, limited, authOK, expired, revoked, storeErrs atomic.Int64
	exhausted, checks                                    atomic.Int64
	overLimit, lost, unexpected                          atomic.Int64

	mu            sync.Mutex
	examples      []string // first few violations, for the failure message
	storeExamples []string // first few store errors
}

func (s *loadStats) violation(counter *atomic.Int64, format string, args ...any) {
	counter.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.examples) < 5 {
		s.examples = append(s.examples, fmt.Sprintf(format, args...))
	}
}

func (s *loadStats) ops() int64 {
	return s.issued.Load() + s.limited.Load() + s.authOK.Load() + s.expired.Load() + s.revoked.Load() + s.storeErrs.Load()
}

func (s *loadStats) String() string {
	return fmt.Sprintf("ops=%d issued=%d limited=%d auth_ok=%d expired=%d revoked=%d store_errors=%d (retries_exhausted=%d) "+
		"invariant_checks=%d over_limit=%d lost_sessions=%d unexpected_errors=%d",
		s.ops(), s.issued.Load(), s.limited.Load(), s.authOK.Load(), s.expired.Load(), s.revoked.Load(),
		s.storeErrs.Load(), s.exhausted.Load(), s.checks.Load(), s.overLimit.Load(), s.lost.Load(), s.unexpected.Load())
}

// check fails t if any violation was seen.
func (s *loadStats) check(t *testing.T) {
	t.Helper()
	if s.overLimit.Load()+s.lost.Load()+s.unexpected.Load() > 0 {
		t.Fatalf("violations: %s\nfirst: %q", s, s.examples)
	}
}

type load struct {
	mgrs    []*sessions.Manager
	agents  []string
	limit   int
	workers int
	stats   *loadStats
}

// run drives a mix of issue (40%), authenticate (45%) and revoke (15%) from
// workers spread over the managers until ctx ends. Each worker remembers
// the sessions it was told were issued and has not tried to revoke: those
// must authenticate, expire, or fail with a store error, never be unknown.
func (l *load) run(ctx context.Context) {
	var wg sync.WaitGroup
	for w := range l.workers {
		m := l.mgrs[w%len(l.mgrs)]
		wg.Go(func() { l.worker(ctx, m) })
	}
	wg.Wait()
}

func (l *load) worker(ctx context.Context, m *sessions.Manager) {
	var mine []sessions.Issued
	for ctx.Err() == nil {
		opCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		switch p := rand.IntN(100); {
		case p < 40 || len(mine) == 0:
			a := l.agents[rand.IntN(len(l.agents))]
			iss, err := m.Issue(opCtx, a)
			if err == nil {
				l.stats.issued.Add(1)
				mine = append(mine, iss)
			} else {
				l.classify(ctx, err, sessions.ErrLimitExceeded, &l.stats.limited)
			}
		case p < 85:
			i := rand.IntN(len(mine))
			_, err := m.Authenticate(opCtx, mine[i].Token, mine[i].Session.AgentID)
			switch {
			case err == nil:
				l.stats.authOK.Add(1)
			case errors.Is(err, sessions.ErrAccessDenied) && !time.Now().Before(mine[i].Session.ExpiresAt):
				// Expired while the call ran, and pruned by another caller
				// between this call's clock read and its lookup.
				l.stats.expired.Add(1)
			case errors.Is(err, sessions.ErrAccessDenied):
				l.stats.violation(&l.stats.lost, "issued session %s vanished: %v", mine[i].Session.ID, err)
			default:
				l.classify(ctx, err, sessions.ErrSessionExpired, &l.stats.expired)
			}
			if err != nil {
				mine = append(mine[:i], mine[i+1:]...)
			}
		default:
			i := rand.IntN(len(mine))
			_, err := m.Revoke(opCtx, mine[i].Session.ID)
			if err == nil {
				l.stats.revoked.Add(1)
			} else {
				l.classify(ctx, err, nil, nil)
			}
			// A failed revoke may still have committed (a deadline or a
			// broken connection after the DELETE went out), so the session
			// is no longer one this worker can vouch for either way.
			mine = append(mine[:i], mine[i+1:]...)
		}
		cancel()
	}
}

// classify counts err as the expected class, a store error, or a
// violation. Store errors must never carry a raw serialization failure
// unless it is wrapped as ErrRetriesExhausted.
func (l *load) classify(ctx context.Context, err, expected error, counter *atomic.Int64) {
	switch {
	case expected != nil && errors.Is(err, expected):
		counter.Add(1)
	case ctx.Err() != nil:
		// The run is over; the call was cut short.
	case errors.Is(err, sessions.ErrStore):
		if l.stats.storeErrs.Add(1) <= 3 {
			l.stats.mu.Lock()
			l.stats.storeExamples = append(l.stats.storeExamples, err.Error())
			l.stats.mu.Unlock()
		}
		var pgErr *pgconn.PgError
		if errors.Is(err, pgxstore.ErrRetriesExhausted) {
			l.stats.exhausted.Add(1)
		} else if errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01") {
			l.stats.violation(&l.stats.unexpected, "serialization failure escaped: %v", err)
		}
	default:
		l.stats.violation(&l.stats.unexpected, "%v", err)
	}
}

// checkInvariant asks the database, every interval until ctx ends, whether
// any agent holds more rows (live or not) than the limit.
func checkInvariant(ctx context.Context, pool *pgxpool.Pool, limit int, interval time.Duration, stats *loadStats) {
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		rows, err := pool.Query(qctx,
			`SELECT agent_id, count(*) FROM agent_sessions GROUP BY agent_id HAVING count(*) > $1`, limit)
		if err == nil {
			stats.checks.Add(1)
			for rows.Next() {
				var a string
				var n int
				if rows.Scan(&a, &n) == nil {
					stats.violation(&stats.overLimit, "agent %s holds %d sessions, limit %d", a, n, limit)
				}
			}
			rows.Close()
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}

func isDeadline(err error) bool {
	return errors.Is(err, sessions.ErrStore) && errors.Is(err, context.DeadlineExceeded)
}

// totalStats adds up the counters of several instances' stores.
func totalStats(stores []*pgxstore.Store) pgxstore.Stats {
	var sum pgxstore.Stats
	for _, s := range stores {
		st := s.Stats()
		sum.Transactions += st.Transactions
		sum.Retries += st.Retries
		sum.Exhausted += st.Exhausted
		sum.Reconnects += st.Reconnects
	}
	return sum
}
