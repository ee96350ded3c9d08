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

	// Logger receives debug records about denials and warnings about store
	// failures. It never receives tokens or the secret. Default: discards.
	Logger *slog.Logger
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
	}
	return nil
}

func (c Config) withDefaults() Config {
	c.Secret = append([]byte(nil), c.Secret...)
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.NewID == nil {
		c.NewID = randomID
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
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
