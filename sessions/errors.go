package sessions

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package matches exactly one
// of the first group with [errors.Is]; typed errors carry the details.
var (
	// ErrInvalidConfig: a [Config] or store config was rejected. See [ConfigError].
	ErrInvalidConfig = errors.New("sessions: invalid config")
	// ErrInvalidAgentID: an agent ID is empty, too long ([MaxAgentIDLength]),
	// not valid UTF-8, or contains a control character. Checked before any
	// store access.
	ErrInvalidAgentID = errors.New("sessions: invalid agent id")
	// ErrInvalidSessionID: a session ID passed to Revoke is empty, too long
	// ([MaxSessionIDLength]) or not valid UTF-8 without control characters.
	ErrInvalidSessionID = errors.New("sessions: invalid session id")
	// ErrLimitExceeded: the agent already holds its limit of live sessions.
	// See [LimitError].
	ErrLimitExceeded = errors.New("sessions: concurrent session limit exceeded")
	// ErrInvalidTokenFormat: the token is too long, has no '.', or its
	// payload (once the signature checks out) is not base64url JSON of the
	// expected shape.
	ErrInvalidTokenFormat = errors.New("sessions: invalid token format")
	// ErrInvalidSignature: the signature part is not unpadded base64url or
	// does not match the payload under the secret.
	ErrInvalidSignature = errors.New("sessions: invalid token signature")
	// ErrAccessDenied: the token is well formed and signed but may not be
	// used: see [AccessDeniedError] for the reason.
	ErrAccessDenied = errors.New("sessions: access denied")
	// ErrSessionExpired: the token's expiry has passed. The session is
	// deleted from the store when this is detected (if that delete fails,
	// the error is still ErrSessionExpired and the pruner deletes the row
	// later).
	ErrSessionExpired = errors.New("sessions: session expired")
	// ErrStore: the store failed (database unreachable, deadline exceeded,
	// ...). See [StoreError]; the cause is in its chain too, so
	// errors.Is(err, context.DeadlineExceeded) works.
	ErrStore = errors.New("sessions: store failure")
	// ErrInvalidMetadata: metadata given to [WithMetadata] has an empty
	// key, invalid UTF-8, a NUL character, or is over [MaxMetadataBytes]
	// encoded.
	ErrInvalidMetadata = errors.New("sessions: invalid session metadata")
	// ErrInvalidLimit: a per-agent limit is below 1 or above 2^31-1.
	ErrInvalidLimit = errors.New("sessions: invalid limit")
	// ErrLifetimeExceeded: Refresh was asked to extend a session that
	// already expires at the end of its absolute lifetime
	// ([Config.MaxLifetime]). The agent needs a new session.
	ErrLifetimeExceeded = errors.New("sessions: session lifetime exceeded")
)

// ErrSessionIdle: the session was not used for [Config.IdleTimeout]. It
// matches [ErrSessionExpired] (the agent needs a new session, as after
// any expiry) and says why in its text.
var ErrSessionIdle = fmt.Errorf("%w: not used for its idle timeout", ErrSessionExpired)

// ConfigError describes a rejected configuration field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("sessions: invalid config: %s %s", e.Field, e.Reason)
}

// Is reports whether target is [ErrInvalidConfig].
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// LimitError is returned by Issue when the agent is at its limit, and by
// [Handles.Create] when the principal is at the kind's limit.
// Kind is the handle kind for [Handles.Create], "" for a session.
type LimitError struct {
	AgentID string
	Kind    string
	Limit   int
}

func (e *LimitError) Error() string {
	if e.Kind != "" && e.Kind != KindSession {
		return fmt.Sprintf("sessions: %q already holds its limit of %d live %s handles", e.AgentID, e.Limit, e.Kind)
	}
	return fmt.Sprintf("sessions: agent %q already holds its limit of %d live sessions", e.AgentID, e.Limit)
}

// Is reports whether target is [ErrLimitExceeded].
func (e *LimitError) Is(target error) bool { return target == ErrLimitExceeded }

// DenyReason says why an otherwise valid token was refused.
type DenyReason string

// The reasons Authenticate (or Issue, for the clock) denies access.
const (
	// ReasonAgentMismatch: the token was issued to another agent.
	ReasonAgentMismatch DenyReason = "session token does not match requested agent"
	// ReasonUnknownSession: no such session in the store (revoked, pruned,
	// or never issued by this store).
	ReasonUnknownSession DenyReason = "unknown session"
	// ReasonMetadataMismatch: the stored session's agent or expiry differ
	// from the token's.
	ReasonMetadataMismatch DenyReason = "session metadata mismatch"
	// ReasonDigestMismatch: the stored digest is not the SHA-256 of this
	// token, e.g. the session was re-issued under another secret.
	ReasonDigestMismatch DenyReason = "session token digest mismatch"
	// ReasonClockBeforeEpoch: the configured clock reads before 1970, as in
	// the reference implementation.
	ReasonClockBeforeEpoch DenyReason = "system clock before unix epoch"
)

// AccessDeniedError carries the reason a token was refused.
type AccessDeniedError struct {
	Reason DenyReason
}

func (e *AccessDeniedError) Error() string { return "sessions: access denied: " + string(e.Reason) }

// Is reports whether target is [ErrAccessDenied].
func (e *AccessDeniedError) Is(target error) bool { return target == ErrAccessDenied }

// StoreError wraps a failure of the underlying store.
type StoreError struct {
	Op  string // the store operation: "get", "delete", "insert", "list", "extend", ...
	Err error  // the cause
}

func (e *StoreError) Error() string { return fmt.Sprintf("sessions: store %s: %v", e.Op, e.Err) }

// Is reports whether target is [ErrStore].
func (e *StoreError) Is(target error) bool { return target == ErrStore }

// Unwrap returns the cause.
func (e *StoreError) Unwrap() error { return e.Err }

// storeErr wraps err in a *StoreError unless it already is one.
func storeErr(op string, err error) error {
	var se *StoreError
	if errors.As(err, &se) {
		return err
	}
	return &StoreError{Op: op, Err: err}
}

// ErrDuplicateSessionID is the cause inside a [StoreError] when a store
// already holds a session with the new session's ID: [Store.Insert] must
// refuse it, and only a broken [Config.NewID] can cause it.
var ErrDuplicateSessionID = errors.New("sessions: a session with this id already exists")
