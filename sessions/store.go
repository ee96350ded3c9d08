package sessions

import (
	"context"
	"time"
)

// Session is a stored session. The token is never stored; TokenDigest is
// its lowercase hex SHA-256.
type Session struct {
	ID          string
	AgentID     string
	IssuedAt    time.Time // whole seconds, UTC
	ExpiresAt   time.Time // whole seconds, UTC; the token's exp
	TokenDigest string
}

// Store persists sessions. Implementations must be safe for concurrent use,
// and InsertIfBelowLimit must be atomic with respect to every other caller
// of the same store, including those in other processes: that is what makes
// the per-agent limit hold across instances.
//
// Errors returned by a Store are wrapped in a [StoreError] by the [Manager].
type Store interface {
	// Get returns the session with this ID; found is false when there is
	// none (expired sessions may still be found until pruned).
	Get(ctx context.Context, id string) (s Session, found bool, err error)

	// Delete removes the session with this ID. Deleting a session that does
	// not exist is not an error.
	Delete(ctx context.Context, id string) error

	// InsertIfBelowLimit deletes s.AgentID's sessions that expired at or
	// before now, counts the agent's remaining sessions and inserts s if
	// there are fewer than limit, as one atomic step. It reports whether s
	// was inserted.
	InsertIfBelowLimit(ctx context.Context, s Session, limit int, now time.Time) (inserted bool, err error)
}
