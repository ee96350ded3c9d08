package pgxstore

import (
	"context"
	"time"
)

// Observer is told about the store's own happenings, for tracing and
// metrics (package github.com/agentsessions/agentsessions/otelsessions
// has one for OpenTelemetry). Set it as [Config.Observer]. Its methods are
// called synchronously and must be quick and safe for concurrent use. They
// are never given a token, a digest, a metadata value or a query
// argument.
type Observer interface {
	// Retry is called when a store call reruns an attempt, before the
	// rerun (and before its backoff), and once more, with GaveUp set,
	// when it gives up after MaxAttempts serialization failures. ctx is
	// the call's: the caller's, carrying its span, except for session
	// lookups batched together, which run under a context of their own.
	Retry(ctx context.Context, ev RetryEvent)

	// Prune is called when a prune pass ([Store.Prune], or one of
	// [Store.RunPruner]'s) begins; the pass runs under the context it
	// returns and calls end once with its result.
	Prune(ctx context.Context) (context.Context, func(PruneResult, error))

	// CacheResync is called each time the verified-session cache
	// ([Store.RunCache]) is emptied, with why: "connected" (its listener
	// connection (re)connected), "flush" (a TRUNCATE) or
	// "triggers_changed" (the invalidation triggers were changed while it
	// listened).
	CacheResync(ctx context.Context, reason string)
}

// Why a store call reruns an attempt ([RetryEvent.Reason]).
const (
	// RetrySerialization: PostgreSQL aborted the attempt with a
	// serialization failure or deadlock (SQLSTATE 40001, 40P01).
	RetrySerialization = "serialization_failure"
	// RetrySharedMemory: PostgreSQL's lock table was full (SQLSTATE
	// 53200, "out of shared memory"); see max_pred_locks_per_transaction
	// in docs/operations.md.
	RetrySharedMemory = "out_of_shared_memory"
	// RetryReconnect: the attempt's connection broke before it could
	// have committed; it is rerun at once on another one.
	RetryReconnect = "reconnect"
)

// RetryEvent is one rerun of a store call, or its giving up.
type RetryEvent struct {
	Op       string        // the store call: "insert", "get", "delete", "extend", "list", ...
	Reason   string        // RetrySerialization, RetrySharedMemory or RetryReconnect
	Attempt  int           // the failed attempts of this Reason so far, from 1
	Backoff  time.Duration // the wait before the rerun; 0 for reconnects and when GaveUp
	SQLState string        // the error's SQLSTATE, "" if it had none
	GaveUp   bool          // no rerun follows: the call fails with ErrRetriesExhausted
}
