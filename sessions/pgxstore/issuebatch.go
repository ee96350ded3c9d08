package pgxstore

import (
	"cmp"
	"context"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// Issues that arrive together share one transaction.
//
// Most of an issue's cost on the server is per transaction, not per
// session: the round trip, BEGIN and COMMIT, registering a SERIALIZABLE
// transaction and its predicate locks, and the commit's WAL flush. So
// issues are coalesced (coalesce.go) like lookups: while Config.IssueBatches
// limit transactions are in flight, later issues queue, and the next free
// slot sends up to maxIssueBatch (16) of them as one SERIALIZABLE statement
// (queries/sessions.sql, IssueSessionBatch) with one commit. That
// statement is IssueSession's fast path for many agents at once: each
// issue whose agent is below its limit with nothing expired bumps its
// count row and inserts. It decides nothing else: an issue it leaves out
// (at the limit, rows that may have expired, no count row yet, an agent
// twice in the batch) runs IssueSession on its own, on its caller's
// goroutine, as it would have without batching. So the limit rests on the
// same count row and the same SERIALIZABLE check either way, and refusal,
// pruning and eviction have one implementation.
//
// A batch that fails with a server error (a serialization failure, a
// deadlock, one issue's constraint violation) committed nothing: each of
// its issues runs alone, where an error lands on the issue that caused
// it. A batch whose outcome is unknown (the connection broke after COMMIT
// was sent) reports that to each of its issues, as a lone issue would.
// docs/performance.md has the numbers.

// maxIssueBatch bounds the issues of one batch transaction, and so how
// long it holds a connection and how many predicate locks it takes: one
// index page of agent_session_counts per issue at most. PostgreSQL turns
// a transaction's page locks on one relation into a lock on the whole
// relation beyond max_pred_locks_per_relation (by default half of
// max_pred_locks_per_transaction, 32 with the default 64), which would
// make the batch conflict with every concurrent issue; 16 stays well
// below that.
const maxIssueBatch = 16

type issueCall struct {
	s   sessions.Session
	md  []byte
	req sessions.InsertRequest
}

type issueResult struct {
	res  sessions.InsertResult
	err  error
	done bool // res and err are the outcome; false: not decided, run IssueSession
	// conflict is the batch's serialization failure (or 53200), if that
	// is why the issue was not decided: the caller's attempt failed with
	// it, and the retry loop reruns it alone.
	conflict error
}

func newIssues(p *Store, slots int) *coalescer[issueCall, issueResult] {
	return &coalescer[issueCall, issueResult]{
		slots: max(slots, 1),
		max:   maxIssueBatch,
		alone: func(ctx context.Context, c issueCall) issueResult {
			res, err := p.insertStmt(ctx, c.s, c.md, c.req, false)
			return issueResult{res: res, err: err, done: true}
		},
		batch: p.insertBatch,
	}
}

// insertBatch sends the fast paths of cs (two or more) as one transaction.
func (p *Store) insertBatch(ctx context.Context, cs []issueCall) []issueResult {
	out := make([]issueResult, len(cs))
	// Sorted by (agent, kind): batches that share agents bump their count
	// rows in the same order.
	order := make([]int, len(cs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		return cmp.Or(cmp.Compare(cs[a].s.AgentID, cs[b].s.AgentID), cmp.Compare(cs[a].s.Kind, cs[b].s.Kind))
	})
	n := len(cs)
	args := db.IssueSessionBatchParams{
		AgentIds: make([]string, n), Kinds: make([]string, n), Ids: make([]string, n),
		IssuedAts: make([]time.Time, n), ExpiresAts: make([]time.Time, n), TokenDigests: make([]string, n),
		Metadata: make([]string, n), DefaultLimits: make([]int32, n),
		Now: cs[0].req.Now,
	}
	for k, i := range order {
		c := cs[i]
		args.AgentIds[k], args.Kinds[k], args.Ids[k] = c.s.AgentID, c.s.Kind, c.s.ID
		args.IssuedAts[k], args.ExpiresAts[k], args.TokenDigests[k] = c.s.IssuedAt, c.s.ExpiresAt, c.s.TokenDigest
		args.Metadata[k] = string(c.md) // "" is SQL NULL
		args.DefaultLimits[k] = int32(min(c.req.Limit, math.MaxInt32))
		if c.req.Now.After(args.Now) {
			args.Now = c.req.Now // the latest clock: "nothing expired" then holds for every issue's own
		}
	}
	p.stats.issueBatches.Add(1)
	row, err := p.batchOne.IssueSessionBatch(ctx, args)
	if err != nil {
		var ce *commitError
		if err = mayHaveCommitted(err); errors.As(err, &ce) {
			for i := range out {
				out[i] = issueResult{err: err, done: true}
			}
			return out
		}
		if needsBackoff(err) {
			for i := range out {
				out[i].conflict = err // a rerun each, counted by its caller
			}
		}
		return out // nothing was committed: each issue runs alone
	}
	if !row.Serializable || len(row.Done) != len(row.Limits) {
		return out // IssueSession says what is wrong
	}
	for k, ord := range row.Done {
		i := order[ord-1] // ord counts the sorted inputs from 1
		out[i] = issueResult{res: sessions.InsertResult{Inserted: true, Limit: int(row.Limits[k])}, done: true}
	}
	p.stats.issueBatched.Add(uint64(len(row.Done)))
	return out
}
