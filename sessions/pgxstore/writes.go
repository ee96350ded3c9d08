package pgxstore

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// Every statement of this package that changes a table goes through
// write, so two rules hold by construction instead of by each method
// remembering them:
//
//   - an attempt whose statement may have reached the server is not rerun
//     (write classifies its error with mayHaveCommitted), unless the write
//     is idempotent;
//   - the sessions a write touched leave this instance's cache when it
//     returns, whatever its outcome (the trigger of migration 00003 tells
//     every other instance).
//
// And every statement that writes agent_sessions also keeps the agent's
// row in agent_session_counts in step, in the same statement:
// TestQueriesKeepCountsInStep fails for a query in queries/ that does not.

// rerun says whether a write may be rerun once it may have reached the
// server.
type rerun bool

const (
	onceSent   rerun = false // never: its outcome must not be reported twice
	idempotent rerun = true  // yes: doing it twice leaves the same rows
)

// touched is what a write changed, for the cache: sessions by ID, or
// every session of one agent and kind.
type touched struct {
	ids         []string
	agent, kind string
}

func (p *Store) write(ctx context.Context, op string, mode rerun, attempt func() (touched, error)) error {
	var t touched
	defer func() {
		if c := p.cache.Load(); c != nil {
			for _, id := range t.ids {
				c.invalidate(id)
			}
			if t.agent != "" {
				c.invalidateAgent(t.agent, t.kind)
			}
		}
	}()
	return p.retry(ctx, op, func() error {
		var err error
		t, err = attempt()
		if mode == onceSent {
			err = mayHaveCommitted(err)
		}
		return err
	})
}

// outcomeKnown marks the error of a write attempt that certainly wrote
// nothing it did not report: a step before the write was sent, or a
// check of its result. mayHaveCommitted leaves it as it is.
type outcomeKnown struct{ error }

func (e outcomeKnown) Unwrap() error { return e.error }

// Delete implements [sessions.Store]. It is idempotent, so it is rerun
// after a broken connection even if it may have committed; found may then
// be false for a session this call did delete.
func (p *Store) Delete(ctx context.Context, id string) (found bool, err error) {
	err = p.write(ctx, "delete", idempotent, func() (touched, error) {
		n, err := p.q.DeleteSession(ctx, id)
		found = n > 0
		return touched{ids: []string{id}}, err
	})
	return found, err
}

// DeleteExpired implements [sessions.Store]. It is idempotent, like Delete.
func (p *Store) DeleteExpired(ctx context.Context, id, digest string, now time.Time) error {
	return p.write(ctx, "delete", idempotent, func() (touched, error) {
		_, err := p.q.DeleteExpiredSession(ctx, db.DeleteExpiredSessionParams{ID: id, Now: now, TokenDigest: digest})
		return touched{ids: []string{id}}, err
	})
}

// Insert implements [Store] with one SERIALIZABLE transaction. Below the
// limit, with nothing of the agent's expired, it reads and bumps the
// agent's count row and inserts; otherwise it deletes the agent's expired
// rows, counts the rest and reads its override, evicts or gives up at the
// limit, inserts, and rewrites the count (see insertStmt). Serialization failures and deadlocks are
// retried with jittered exponential backoff up to MaxAttempts; the caller
// sees them only as [ErrRetriesExhausted].
func (p *Store) Insert(ctx context.Context, s sessions.Session, req sessions.InsertRequest) (res sessions.InsertResult, err error) {
	md, err := encodeMetadata(s.Metadata)
	if err != nil {
		return sessions.InsertResult{}, err
	}
	if s.Kind == "" {
		s.Kind = sessions.KindSession
	}
	p.stats.transactions.Add(1)
	key := limitKey{s.AgentID, s.Kind}
	first := true
	err = p.write(ctx, "insert", onceSent, func() (touched, error) {
		var err error
		queued := !p.noQueue.Load() && p.contended.is(key)
		if first && !queued {
			// The first attempt may share a transaction with issues that
			// arrive with it (issuebatch.go); reruns go alone.
			first = false
			var r issueResult
			var sent bool
			r, sent, err = p.issues.do(ctx, issueCall{s: s, md: md, req: req})
			switch {
			case err != nil && !sent:
				return touched{}, outcomeKnown{err}
			case err != nil:
				return touched{}, &commitError{err} // its batch may still commit it
			case r.conflict != nil:
				// Its batch conflicted (with this issue's agent or another's)
				// or found the lock table full: a failed attempt like any
				// other, rerun alone after a backoff. The agent is marked
				// below, so that a hot agent's next issues queue (queue.go)
				// instead of failing batch after batch.
				err = r.conflict
			case r.done:
				res, err = r.res, r.err
			default:
				res, err = p.insertStmt(ctx, s, md, req, false)
			}
		} else {
			res, err = p.insertStmt(ctx, s, md, req, queued)
		}
		if isSerializationFailure(err) {
			p.contended.mark(key) // queue this agent's next issues (queue.go)
		}
		return touched{ids: res.Evicted}, err
	})
	if err != nil {
		return sessions.InsertResult{}, err
	}
	return res, nil
}

// DeleteAgent implements [sessions.AgentStore].
func (p *Store) DeleteAgent(ctx context.Context, agentID, kind, exceptID string) (n int, err error) {
	err = p.write(ctx, "delete agent", onceSent, func() (touched, error) {
		rows, err := p.q.DeleteAgentSessions(ctx, db.DeleteAgentSessionsParams{AgentID: agentID, Kind: kind, ExceptID: exceptID})
		n = int(rows)
		return touched{agent: agentID, kind: kind}, err
	})
	return n, err
}

// Extend implements [sessions.RefreshStore] with one UPDATE.
func (p *Store) Extend(ctx context.Context, id, oldDigest string, expiresAt time.Time, newDigest string, now time.Time) (ok bool, err error) {
	err = p.write(ctx, "extend", onceSent, func() (touched, error) {
		rows, err := p.q.ExtendSession(ctx, db.ExtendSessionParams{
			ID: id, OldDigest: oldDigest, ExpiresAt: expiresAt, NewDigest: newDigest, Now: now,
		})
		ok = rows == 1
		return touched{ids: []string{id}}, err
	})
	return ok, err
}

// SetAgentLimit implements [sessions.LimitStore].
func (p *Store) SetAgentLimit(ctx context.Context, agentID, kind string, limit int) error {
	if limit < 1 || limit > math.MaxInt32 {
		return fmt.Errorf("limit %d out of range [1, %d]", limit, math.MaxInt32)
	}
	return p.write(ctx, "set limit", onceSent, func() (touched, error) {
		return touched{}, p.q.SetAgentLimit(ctx, db.SetAgentLimitParams{AgentID: agentID, Kind: kind, MaxSessions: int32(limit)})
	})
}

// DeleteAgentLimit implements [sessions.LimitStore].
func (p *Store) DeleteAgentLimit(ctx context.Context, agentID, kind string) (found bool, err error) {
	err = p.write(ctx, "delete limit", onceSent, func() (touched, error) {
		n, err := p.q.DeleteAgentLimit(ctx, db.DeleteAgentLimitParams{AgentID: agentID, Kind: kind})
		found = n > 0
		return touched{}, err
	})
	return found, err
}

// insertStmt is the limit check as one statement (queries/sessions.sql,
// IssueSession) in one round trip: pipelined with BEGIN and COMMIT, or
// alone on a pool whose connections default to SERIALIZABLE (less client
// work: no batch, two fewer statements). It replaced a transaction of five
// round trips (BEGIN, prune, count, insert, COMMIT), which was slower and
// retried more (docs/performance.md).
//
// The statement works from the agent's count row (migration 00004), so
// agents do not make each other retry; an agent without one gets it from
// EnsureAgentCount, in its own short transaction, and the statement runs
// again. The statement refuses to insert below SERIALIZABLE (a connection
// whose default was changed after connecting), so a misconfigured pool
// fails loudly instead of breaking the limit.
func (p *Store) insertStmt(ctx context.Context, s sessions.Session, md []byte, req sessions.InsertRequest, queued bool) (res sessions.InsertResult, err error) {
	one := p.one
	if queued {
		one = db.New(queuedRow{pool: p.pool, key: queueLockKey(limitKey{s.AgentID, s.Kind}), noQueue: &p.noQueue})
	}
	args := db.IssueSessionParams{
		AgentID:      s.AgentID,
		Kind:         s.Kind,
		Now:          req.Now,
		DefaultLimit: int32(min(req.Limit, math.MaxInt32)),
		Evict:        req.Policy == sessions.PolicyEvictOldest || req.Policy == sessions.PolicyEvictLeastRecentlyUsed,
		Lru:          req.Policy == sessions.PolicyEvictLeastRecentlyUsed,
		IdleCutoff:   req.IdleCutoff, // zero (year 1): nothing is idle
		RecentIds:    make([]string, len(req.RecentUses)),
		RecentAts:    make([]time.Time, len(req.RecentUses)),
		ID:           s.ID,
		IssuedAt:     s.IssuedAt,
		ExpiresAt:    s.ExpiresAt,
		TokenDigest:  s.TokenDigest,
		Metadata:     md,
	}
	for i, u := range req.RecentUses {
		args.RecentIds[i], args.RecentAts[i] = u.ID, u.At
	}
	row, err := one.IssueSession(ctx, args)
	if err == nil && !row.Known && row.Serializable {
		if err = p.q.EnsureAgentCount(ctx, db.EnsureAgentCountParams{AgentID: s.AgentID, Kind: s.Kind}); err != nil {
			return res, outcomeKnown{err} // nothing of this issue was written yet
		}
		row, err = one.IssueSession(ctx, args)
	}
	if err != nil {
		return res, err
	}
	if !row.Serializable {
		return res, outcomeKnown{&sessions.ConfigError{Field: "pool", Reason: "the limit statement ran below SERIALIZABLE isolation; " +
			"do not change default_transaction_isolation on the store's connections except to serializable"}}
	}
	if !row.Known {
		// Only a concurrent TRUNCATE or DELETE of agent_session_counts
		// between the two statements gets here.
		return res, outcomeKnown{fmt.Errorf("count row of agent %q vanished before the limit check", s.AgentID)}
	}
	res = sessions.InsertResult{Inserted: row.Inserted == 1, Limit: int(row.EffectiveLimit)}
	if len(row.Evicted) > 0 {
		res.Evicted = row.Evicted
	}
	return res, nil
}
