package sessions

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"time"
	"unicode/utf8"
)

// Bounds on identifiers, enforced before any store access. The PostgreSQL
// schema enforces the same bounds with CHECK constraints.
const (
	// MaxAgentIDLength is the longest agent ID accepted, in bytes.
	MaxAgentIDLength = 512
	// MaxSessionIDLength is the longest session ID accepted, in bytes,
	// including IDs returned by a custom [Config.NewID].
	MaxSessionIDLength = 128
)

// KindSession is the [Session.Kind] of agent sessions, the ones a
// [Manager] issues; state handles ([Handles]) have kinds of their own.
const KindSession = "session"

// DefaultMaxLifetime is [Config.MaxLifetime]'s default when TTL is shorter.
const DefaultMaxLifetime = 24 * time.Hour

// LimitPolicy says what Issue does for an agent already at its limit.
type LimitPolicy int

const (
	// PolicyReject refuses the new session with a [LimitError], as the
	// reference does. Existing sessions are never disturbed.
	PolicyReject LimitPolicy = iota
	// PolicyEvictOldest revokes the agent's oldest live session(s) to make
	// room, in the same atomic step as the insert, so the limit still holds
	// across instances. Issue reports the revoked IDs in [Issued.Evicted].
	// Issue times are whole seconds (as in the token), so among sessions
	// issued in the same second the one with the smallest ID goes first.
	PolicyEvictOldest
	// PolicyEvictLeastRecentlyUsed is PolicyEvictOldest ordered by last
	// use instead of issue time: it revokes the session(s) unused for the
	// longest (Keycloak's "terminate oldest" by last access). Last use is
	// known to within [Config.LastUseInterval]; ties go to the earlier
	// issued, then the smaller ID. It needs a [TouchStore].
	PolicyEvictLeastRecentlyUsed
)

// String returns the policy's name as [ParseLimitPolicy] accepts it.
func (p LimitPolicy) String() string {
	switch p {
	case PolicyReject:
		return "reject"
	case PolicyEvictOldest:
		return "evict-oldest"
	case PolicyEvictLeastRecentlyUsed:
		return "evict-least-recently-used"
	}
	return fmt.Sprintf("LimitPolicy(%d)", int(p))
}

// ParseLimitPolicy returns the policy named "reject", "evict-oldest" or
// "evict-least-recently-used".
func ParseLimitPolicy(name string) (LimitPolicy, error) {
	for _, p := range []LimitPolicy{PolicyReject, PolicyEvictOldest, PolicyEvictLeastRecentlyUsed} {
		if name == p.String() {
			return p, nil
		}
	}
	return 0, &ConfigError{Field: "Policy", Reason: fmt.Sprintf("%q is not one of reject, evict-oldest, evict-least-recently-used", name)}
}

// valid reports whether p is one of the policies above.
func (p LimitPolicy) valid() bool { return p >= PolicyReject && p <= PolicyEvictLeastRecentlyUsed }

// evicts reports whether p makes room by revoking sessions.
func (p LimitPolicy) evicts() bool {
	return p == PolicyEvictOldest || p == PolicyEvictLeastRecentlyUsed
}

// MinLastUseInterval is the shortest [Config.LastUseInterval].
const MinLastUseInterval = 100 * time.Millisecond

// DefaultLastUseInterval is [Config.LastUseInterval]'s default for an
// idle timeout (0 for none): a tenth of it, at least one second and below
// it, or 10 seconds without one.
func DefaultLastUseInterval(idleTimeout time.Duration) time.Duration {
	idleTimeout = idleTimeout.Truncate(time.Second)
	switch {
	case idleTimeout <= 0:
		return 10 * time.Second
	case idleTimeout < 2*time.Second:
		return idleTimeout / 2
	}
	return max(idleTimeout/10, time.Second)
}

// IdleDeleteCutoff is the cutoff a store deletes idle sessions by (and
// stops counting them against the limit): those last used, as stored, at
// or before now - idleTimeout - 2*lastUseInterval (0: the default for
// idleTimeout). The margin covers the uses instances have seen but not
// yet written: a session an instance has just seen used is not deleted
// behind its back. Manager.Issue passes it in [InsertRequest.IdleCutoff];
// pgxstore's pruner and [MemoryStore.PruneIdle] take the same.
func IdleDeleteCutoff(now time.Time, idleTimeout, lastUseInterval time.Duration) time.Time {
	if lastUseInterval <= 0 {
		lastUseInterval = DefaultLastUseInterval(idleTimeout)
	}
	return now.Add(-idleTimeout.Truncate(time.Second) - 2*lastUseInterval)
}

// maxExpiry is the latest expiry a session may have: 9999-12-31T23:59:59Z.
// Both stores can represent it, and a clock or TTL that goes beyond it is a
// configuration error rather than a store failure at issue time.
const maxExpiry = 253402300799

// Config configures a [Manager]. Secret, TTL and Limit are required; every
// other field has a default.
type Config struct {
	// Secret is the HMAC-SHA256 key tokens are signed with. Required; the
	// manager keeps its own copy. Use at least 32 random bytes: anyone who
	// holds the secret can mint tokens for any session ID in the store.
	// A shorter secret works but [New] logs a warning. Load it from a file
	// with [LoadSecretFile] to read it exactly as the agentsessions CLI
	// does.
	Secret []byte

	// TTL is how long an issued session lives. Required, at least one
	// second. Tokens carry whole seconds, so it is truncated to a whole
	// number of seconds.
	TTL time.Duration

	// Limit is the most live sessions one agent may hold at once, across
	// every manager sharing the store. Required, at least 1.
	Limit int

	// Clock returns the current time. Expiry, pruning and the limit check
	// all use this clock (the caller's, as in the reference), not the
	// database's. Default: time.Now.
	Clock func() time.Time

	// NewID returns a fresh session ID: non-empty, at most
	// MaxSessionIDLength bytes, valid UTF-8 without control characters, and
	// unique. Default: 128 bits from crypto/rand as 32 lowercase hex digits.
	NewID func() (string, error)

	// VerifySecrets are secrets accepted when checking a token and never
	// used to sign one: Authenticate, Verify and Refresh accept a token
	// signed with Secret or with any of these; Issue and Refresh sign with
	// Secret only. Default: none.
	//
	// They carry a rotation across a fleet of instances without any
	// instance ever rejecting another's token. With old the current secret
	// and next the new one, roll out each phase to every instance before
	// starting the next:
	//
	//  1. Secret: old, VerifySecrets: [next]. Every instance still signs
	//     with old and now also accepts next.
	//  2. Secret: next, VerifySecrets: [old]. Instances sign with next;
	//     not-yet-updated ones (phase 1) already accept it, and every
	//     instance still accepts tokens signed with old.
	//  3. Secret: next, no VerifySecrets, once every token signed with old
	//     has expired: MaxLifetime after the last phase-1 instance stopped
	//     (a refresh re-signs a token with Secret).
	//
	// Putting the new Secret and the old one here in a single step (the
	// rotation this field's old name, PreviousSecrets, suggested) breaks a
	// rolling deploy: instances not yet updated reject every token the
	// updated ones sign. A leaked secret stays usable to an attacker for as
	// long as it is listed here.
	VerifySecrets [][]byte

	// PreviousSecrets is the former name of VerifySecrets and works
	// exactly like it: the manager accepts the secrets of both lists.
	//
	// Deprecated: Use VerifySecrets. The name suggested that only past
	// secrets belong here, whereas the next secret must be listed here
	// first (phase 1 above) for a rotation without rejected tokens.
	PreviousSecrets [][]byte

	// Policy is what Issue does when the agent is at its limit. Default:
	// PolicyReject, the reference's behaviour.
	Policy LimitPolicy

	// IdleTimeout, when set, expires a session that was not used
	// (Authenticate, Verify, Refresh, RevokeOtherSessions) for that long,
	// however far its token's expiry is: Authenticate refuses it with
	// [ErrSessionIdle], which matches [ErrSessionExpired], and the limit
	// check counts it as gone. Whole seconds, at least one. It needs a
	// [TouchStore]. Default: 0, no idle timeout (the reference's
	// behaviour).
	//
	// Uses are not written one by one: each manager collects them and
	// writes them every LastUseInterval, so a use is known to its own
	// instance at once and to every other within LastUseInterval (while
	// the store takes the writes). A session used at least every
	// IdleTimeout - LastUseInterval, through any instances, is never
	// refused; one unused for IdleTimeout is refused by all of them; in
	// between, an instance that has not yet seen the last use may refuse
	// it. Clock skew between instances, whose clocks time the uses, adds
	// to that window. Stores delete an idle session (the limit check, the
	// pruner) only 2*LastUseInterval after it went idle
	// ([IdleDeleteCutoff]), so no use an instance has yet to write is
	// lost; after that its token is refused as unknown, like a revoked
	// one's. Use the same values on every instance, and give pgxstore's
	// pruner the same.
	IdleTimeout time.Duration

	// LastUseInterval is how often the manager writes the uses it has
	// collected, when IdleTimeout or PolicyEvictLeastRecentlyUsed needs
	// them; at least [MinLastUseInterval]. Default:
	// [DefaultLastUseInterval]: IdleTimeout/10 (at least one second), or
	// 10 seconds without an idle timeout. Call [Manager.Close] on
	// shutdown so the last uses are written.
	LastUseInterval time.Duration

	// MaxLifetime bounds how long a session can live from issue, however
	// often it is refreshed: Refresh never sets an expiry past IssuedAt +
	// MaxLifetime. Must not be below TTL. Default: 24 hours, or TTL if
	// that is longer (so refreshing extends nothing).
	MaxLifetime time.Duration

	// Logger receives debug records about denials and warnings about store
	// failures. It never receives tokens or the secret. Default: discards.
	Logger *slog.Logger

	// Observer, if set, is told when Issue, Authenticate, Verify, Refresh,
	// Revoke and RevokeAgent, and the Create, Resolve, List, Destroy and
	// Refresh of [Handles] on this manager, start and end: see [Observer].
	// Default: none, at no cost.
	Observer Observer
}

// validate checks the fields the reference checks, plus what Go's types
// allow that Rust's do not (negative durations and limits).
func (c *Config) validate() error {
	switch {
	case len(c.Secret) == 0:
		return &ConfigError{Field: "Secret", Reason: "must not be empty"}
	case c.TTL <= 0:
		return &ConfigError{Field: "TTL", Reason: "must be > 0"}
	case c.TTL < time.Second:
		return &ConfigError{Field: "TTL", Reason: "must be at least 1s (tokens carry whole seconds)"}
	case c.Limit <= 0:
		return &ConfigError{Field: "Limit", Reason: "must be > 0"}
	case c.MaxLifetime != 0 && c.MaxLifetime < c.TTL:
		return &ConfigError{Field: "MaxLifetime", Reason: "must not be below TTL"}
	case !c.Policy.valid():
		return &ConfigError{Field: "Policy", Reason: fmt.Sprintf("unknown policy %d", c.Policy)}
	case c.IdleTimeout < 0:
		return &ConfigError{Field: "IdleTimeout", Reason: "must not be negative (0: no idle timeout)"}
	case c.IdleTimeout > 0 && c.IdleTimeout < time.Second:
		return &ConfigError{Field: "IdleTimeout", Reason: "must be at least 1s (uses are timed in whole seconds)"}
	case c.LastUseInterval < 0:
		return &ConfigError{Field: "LastUseInterval", Reason: "must not be negative"}
	case c.LastUseInterval != 0 && c.LastUseInterval < MinLastUseInterval:
		return &ConfigError{Field: "LastUseInterval", Reason: fmt.Sprintf("must be at least %s: uses are written in batches, not one by one", MinLastUseInterval)}
	case c.IdleTimeout > 0 && c.LastUseInterval >= c.IdleTimeout.Truncate(time.Second):
		return &ConfigError{Field: "LastUseInterval", Reason: "must be below IdleTimeout (whole seconds), or other instances would see sessions in use as idle"}
	}
	for i, v := range c.VerifySecrets {
		if len(v) == 0 {
			return &ConfigError{Field: fmt.Sprintf("VerifySecrets[%d]", i), Reason: "must not be empty"}
		}
	}
	for i, prev := range c.PreviousSecrets {
		if len(prev) == 0 {
			return &ConfigError{Field: fmt.Sprintf("PreviousSecrets[%d]", i), Reason: "must not be empty"}
		}
	}
	return nil
}

func (c Config) withDefaults() Config {
	c.Secret = append([]byte(nil), c.Secret...)
	c.VerifySecrets = copySecrets(c.VerifySecrets)
	c.PreviousSecrets = copySecrets(c.PreviousSecrets)
	if c.MaxLifetime == 0 {
		c.MaxLifetime = max(DefaultMaxLifetime, c.TTL)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	c.IdleTimeout = c.IdleTimeout.Truncate(time.Second)
	if c.LastUseInterval == 0 {
		c.LastUseInterval = DefaultLastUseInterval(c.IdleTimeout)
	}
	if c.NewID == nil {
		c.NewID = randomID
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func copySecrets(in [][]byte) [][]byte {
	out := make([][]byte, len(in))
	for i, s := range in {
		out[i] = append([]byte(nil), s...)
	}
	return out
}

// verifySecrets is every verify-only secret: VerifySecrets, then the
// deprecated PreviousSecrets.
func (c *Config) verifySecrets() [][]byte {
	return append(append([][]byte(nil), c.VerifySecrets...), c.PreviousSecrets...)
}

func randomID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// idProblem says what is wrong with an identifier, or "" if nothing is: it
// must be non-empty, at most max bytes, valid UTF-8 and free of control
// characters (PostgreSQL text cannot hold NUL, and control characters in
// identifiers only serve to confuse logs).
func idProblem(s string, max int) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > max:
		return fmt.Sprintf("is %d bytes long (max %d)", len(s), max)
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Sprintf("contains control character %U", r)
		}
	}
	return ""
}

// ValidateAgentID returns an error matching [ErrInvalidAgentID] that says
// what is wrong if id would be refused by Issue and Authenticate, and nil
// otherwise.
func ValidateAgentID(id string) error {
	if p := idProblem(id, MaxAgentIDLength); p != "" {
		return fmt.Errorf("%w: agent id %s", ErrInvalidAgentID, p)
	}
	return nil
}

func validateSessionID(id string) error {
	if p := idProblem(id, MaxSessionIDLength); p != "" {
		return fmt.Errorf("%w: session id %s", ErrInvalidSessionID, p)
	}
	return nil
}
