package sessions

import (
	"context"
	"time"
)

// Session is a stored session. The token is never stored; TokenDigest is
// its lowercase hex SHA-256.
type Session struct {
	ID      string
	AgentID string // the agent, or a handle's principal

	// Kind is "session" ([KindSession]) for an agent session, and the
	// handle kind for a state handle ([Handles]). The limit applies per
	// (AgentID, Kind). Stores treat "" as KindSession.
	Kind string

	IssuedAt    time.Time // whole seconds, UTC
	ExpiresAt   time.Time // whole seconds, UTC; the token's exp
	TokenDigest string

	// LastUsedAt is when the session was last used, as far as the store
	// knows: IssuedAt until a use is recorded ([TouchStore]). Uses are
	// recorded only while an idle timeout ([Config.IdleTimeout]) or
	// least-recently-used eviction needs them, and in batches, so it may
	// lag the latest use by up to [Config.LastUseInterval]. Whole
	// seconds, UTC.
	LastUsedAt time.Time

	// Metadata is what the issuer attached with [WithMetadata]; nil when
	// nothing was. It is descriptive only: nothing here is checked.
	Metadata map[string]string
}

// Store persists sessions. Implementations must be safe for concurrent use,
// and Insert must be atomic with respect to every other caller of the same
// store, including those in other processes: that is what makes the
// per-agent limit hold across instances.
//
// Store is all Issue, Authenticate, Verify and Revoke need. The [Manager]'s
// other features need the optional [AgentStore], [RefreshStore] and
// [LimitStore]; [MemoryStore] and pgxstore.Store implement all three, and
// a manager on a store without one returns an error matching
// [errors.ErrUnsupported] from the methods that need it.
//
// Errors returned by a Store are wrapped in a [StoreError] by the [Manager].
type Store interface {
	// Get returns the session with this ID; found is false when there is
	// none (expired sessions may still be found until pruned).
	Get(ctx context.Context, id string) (s Session, found bool, err error)

	// Delete removes the session with this ID and reports whether there
	// was one. Deleting a session that does not exist is not an error.
	Delete(ctx context.Context, id string) (found bool, err error)

	// DeleteExpired removes the session with this ID only if it expired
	// at or before now, or its token digest is digest, as one atomic
	// step ("delete on sight" of an expired token). A session refreshed
	// since the presented token was issued has a later expiry and another
	// digest, so a stale copy of an old token cannot delete it.
	DeleteExpired(ctx context.Context, id, digest string, now time.Time) error

	// Insert, as one atomic step (a session whose ID is already stored is
	// refused with an error matching [ErrDuplicateSessionID]): deletes the
	// sessions of s.AgentID and s.Kind that expired at or before req.Now,
	// or went idle (last used at or before req.IdleCutoff); finds the
	// limit of that (agent, kind) (its override in a LimitStore, else
	// req.Limit); if the agent holds that many sessions of the kind or
	// more, either gives up (PolicyReject) or deletes the oldest (by
	// IssuedAt, then ID; PolicyEvictOldest) or the least recently used
	// (by LastUsedAt, then IssuedAt, then ID;
	// PolicyEvictLeastRecentlyUsed) until one slot is free; then inserts
	// s. Sessions of other kinds are neither counted nor touched. A store
	// that does not know a policy must treat it as PolicyReject, which
	// never breaks the limit.
	Insert(ctx context.Context, s Session, req InsertRequest) (InsertResult, error)
}

// InsertRequest says how [Store.Insert] enforces the limit.
type InsertRequest struct {
	Limit  int         // the default limit, used when the agent has no override
	Policy LimitPolicy // what to do at the limit
	Now    time.Time   // the caller's clock: sessions expiring at or before it are dead

	// IdleCutoff, when not zero, is [IdleDeleteCutoff] at Now: sessions
	// last used at or before it are dead too.
	IdleCutoff time.Time

	// RecentUses, under PolicyEvictLeastRecentlyUsed, are the uses of the
	// agent's sessions of the kind that the caller has seen but perhaps
	// not yet written (see [TouchStore]): eviction orders by the later of
	// these and LastUsedAt.
	RecentUses []Use
}

// InsertResult reports what [Store.Insert] did.
type InsertResult struct {
	Inserted bool     // false only under PolicyReject, at the limit
	Limit    int      // the limit that was applied
	Evicted  []string // IDs of the sessions deleted to make room
}

// AgentStore is a [Store] that can list and delete one agent's sessions
// of one kind.
type AgentStore interface {
	// ListAgent returns the agent's sessions of kind that expire after
	// now, oldest (by IssuedAt, then ID) first.
	ListAgent(ctx context.Context, agentID, kind string, now time.Time) ([]Session, error)

	// DeleteAgent deletes all of the agent's sessions of kind, live or
	// not, except the one whose ID is exceptID ("" for none), and returns
	// how many it deleted.
	DeleteAgent(ctx context.Context, agentID, kind, exceptID string) (int, error)
}

// RefreshStore is a [Store] that can extend a session.
type RefreshStore interface {
	// Extend sets the session's expiry and token digest, if it expires
	// after now and its digest is still oldDigest, as one atomic step. It
	// reports whether it did: false means the session is gone, expired, or
	// was refreshed (or re-issued) by someone else first.
	Extend(ctx context.Context, id, oldDigest string, expiresAt time.Time, newDigest string, now time.Time) (bool, error)
}

// LimitStore is a [Store] that keeps per-(agent, kind) limit overrides,
// which its Insert applies instead of [InsertRequest.Limit].
type LimitStore interface {
	// AgentLimit returns the override of the agent's sessions of kind;
	// found is false when there is none.
	AgentLimit(ctx context.Context, agentID, kind string) (limit int, found bool, err error)

	// SetAgentLimit creates or replaces that override (limit >= 1).
	SetAgentLimit(ctx context.Context, agentID, kind string, limit int) error

	// DeleteAgentLimit removes that override and reports whether there
	// was one.
	DeleteAgentLimit(ctx context.Context, agentID, kind string) (bool, error)

	// AgentLimits returns every override of kind, ordered by agent ID.
	AgentLimits(ctx context.Context, kind string) ([]AgentLimitOverride, error)
}

// AgentLimitOverride is one agent's limit override.
type AgentLimitOverride struct {
	AgentID string
	Limit   int
}

// TouchStore is a [Store] that records when sessions were last used, which
// [Config.IdleTimeout] and [PolicyEvictLeastRecentlyUsed] need. The manager
// collects uses in memory and hands them over in batches, so a store
// writes once per batch, not once per Authenticate.
type TouchStore interface {
	// Touch raises each session's LastUsedAt to its use's time; a use
	// older than what is stored changes nothing (batches of several
	// instances may arrive in any order), and IDs not stored are skipped.
	// It must be safe to repeat.
	Touch(ctx context.Context, uses []Use) error

	// GetLatest is Get without any cache in between, so the session's
	// LastUsedAt includes every use written so far, by any instance. The
	// manager calls it only for a session that looks idle by what it knows
	// itself.
	GetLatest(ctx context.Context, id string) (s Session, found bool, err error)
}

// Use is one recorded use of a session, for [TouchStore.Touch].
type Use struct {
	ID string
	At time.Time // whole seconds, UTC
}
