// Package bearer is the bearer-token check shared by the MCP SDK
// integrations of the mcpsessions module: the token of a request's
// Authorization header verified with [sessions.Manager.Verify], and the
// HTTP answer when it does not pass (401 with an RFC 6750 challenge for a
// bad token, 503 with Retry-After when the store failed).
package bearer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// DefaultTimeout bounds the store call of a check when Config.Timeout is 0.
const DefaultTimeout = 5 * time.Second

// ErrInvalidOptions is in the chain of every error [New] returns.
var ErrInvalidOptions = errors.New("invalid options")

// Config configures a [Checker]; see the public Options types that embed
// its fields.
type Config struct {
	ResourceMetadataURL string
	Timeout             time.Duration
	OnError             func(ctx context.Context, err error)
}

// Checker verifies bearer tokens with a Manager.
type Checker struct {
	m                *sessions.Manager
	resourceMetadata string
	timeout          time.Duration
	onError          func(context.Context, error)
}

// New returns a Checker on m. It fails when m is nil or the timeout is
// negative.
func New(m *sessions.Manager, cfg Config) (*Checker, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: nil *sessions.Manager", ErrInvalidOptions)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: Timeout must not be negative", ErrInvalidOptions)
	}
	if strings.ContainsAny(cfg.ResourceMetadataURL, "\"\\\r\n") {
		return nil, fmt.Errorf("%w: ResourceMetadataURL must not contain quotes, backslashes or line breaks", ErrInvalidOptions)
	}
	c := &Checker{m: m, resourceMetadata: cfg.ResourceMetadataURL, timeout: cfg.Timeout, onError: cfg.OnError}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.onError == nil {
		c.onError = func(ctx context.Context, err error) {
			slog.Default().WarnContext(ctx, "mcpsessions: bearer token check failed", slog.Any("error", err))
		}
	}
	return c, nil
}

// Verify checks token with Manager.Verify under the timeout. It is what
// Check does once the token is out of the header.
func (c *Checker) Verify(ctx context.Context, token string) (sessions.Session, error) {
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return c.m.Verify(cctx, token)
}

// Check authenticates r by its "Authorization: Bearer <token>" header. It
// returns the session and the token when the token is valid. Otherwise it
// has answered the request (see [Checker.WriteError]) and returns ok false.
func (c *Checker) Check(w http.ResponseWriter, r *http.Request) (s sessions.Session, token string, ok bool) {
	token, found := Token(r.Header.Get("Authorization"))
	if !found {
		c.writeChallenge(w, "")
		http.Error(w, sessions.CodeMissingToken+": send the session token as Authorization: Bearer <token>", http.StatusUnauthorized)
		return sessions.Session{}, "", false
	}
	s, err := c.Verify(r.Context(), token)
	if err != nil {
		c.WriteError(w, r, err)
		return sessions.Session{}, "", false
	}
	return s, token, true
}

// WriteError answers a request whose token did not pass, with the status,
// code and message of [sessions.HTTPError] as plain text "code: message"
// (an application/json body would be read as JSON-RPC by MCP clients):
//
//   - 401 with `WWW-Authenticate: Bearer error="invalid_token"` for a
//     malformed, forged, expired, unknown or revoked token;
//   - 503 with Retry-After when the store failed or timed out: the token
//     may be fine, so the client should retry, not drop it;
//   - the table's status otherwise (500 for a server fault, 499 when the
//     client went away).
//
// Store and server failures go to OnError.
func (c *Checker) WriteError(w http.ResponseWriter, r *http.Request, err error) {
	info := sessions.HTTPError(err)
	switch {
	case info.Status == http.StatusUnauthorized:
		c.writeChallenge(w, `error="invalid_token", error_description="`+quotable(info.Message)+`"`)
	case info.Status >= 500:
		c.onError(r.Context(), fmt.Errorf("mcpsessions: verify bearer token: %w", err))
	}
	if ra := info.RetryAfter(); ra != "" {
		w.Header().Set("Retry-After", ra)
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, info.Code+": "+info.Message, info.Status)
}

// writeChallenge sets the RFC 6750 challenge with params (may be ""), and
// the RFC 9728 resource_metadata parameter when configured.
func (c *Checker) writeChallenge(w http.ResponseWriter, params string) {
	var ps []string
	if c.resourceMetadata != "" {
		ps = append(ps, `resource_metadata="`+c.resourceMetadata+`"`)
	}
	if params != "" {
		ps = append(ps, params)
	}
	v := "Bearer"
	if len(ps) > 0 {
		v += " " + strings.Join(ps, ", ")
	}
	w.Header().Set("WWW-Authenticate", v)
}

// quotable makes s safe inside an RFC 9110 quoted-string (the table's
// messages are plain sentences; this is belt and braces).
func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '"' || r == '\\':
			return '\''
		case r < 0x20 || r == 0x7f:
			return ' '
		}
		return r
	}, s)
}

// Token extracts the credential of an "Authorization: Bearer x" header;
// the scheme is case-insensitive (RFC 9110, section 11.1).
func Token(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
