// Package gosdkauth authenticates the requests of MCP servers built on the
// official Go SDK, github.com/modelcontextprotocol/go-sdk, with
// agentsessions tokens: the bearer-token side of MCP protocol 2026-07-28,
// which has no protocol-level sessions (no Mcp-Session-Id, no initialize),
// so that every request carries its credential.
//
// It is written against go-sdk v1.8.0 (the version in the mcpsessions
// module's go.mod); what it says of go-sdk is that version's behaviour.
//
// # Which piece
//
// [RequireBearerToken] is the middleware to put in front of
// mcp.NewStreamableHTTPHandler (Stateless: true). It is go-sdk's own
// auth.RequireBearerToken with [TokenVerifier], plus the answers that
// middleware cannot give: auth.RequireBearerToken turns every verifier
// error that is not auth.ErrInvalidToken into 500, and sends a challenge
// only when given a resource metadata URL or scopes. Here:
//
//   - a forged, malformed, expired, unknown or revoked token is 401 with
//     `WWW-Authenticate: Bearer error="invalid_token"` (a request without a
//     token: 401 with "WWW-Authenticate: Bearer");
//   - a store outage is 503 with Retry-After, never 401: the client keeps
//     its token and retries (go-sdk's client treats 503 as transient);
//
// with a plain-text "code: message" body from sessions.HTTPError. A token
// that passes goes on to auth.RequireBearerToken, which puts the
// auth.TokenInfo in the request's context exactly as it does for any
// verifier (go-sdk exports no other way to put it there), so tool handlers
// find it in req.Extra.TokenInfo.
//
// [TokenVerifier] alone is an auth.TokenVerifier for code that must use
// auth.RequireBearerToken directly; a store outage then answers 500.
//
// # Token info
//
// For a valid token the TokenInfo has UserID = the session's agent ID,
// Expiration = the session's expiry, the sessions.Session in Extra under
// [ExtraSessionKey] (read it with [SessionFromTokenInfo]), and no Scopes:
// agentsessions tokens carry none, so do not set
// auth.RequireBearerTokenOptions.Scopes (every request would be 403).
//
// Tokens are checked with sessions.Manager.Verify: the signature first,
// so forged or malformed tokens cost no store call, then the session in
// the shared store, so a Revoke on any instance refuses the token on every
// instance at once (or, on an instance running pgxstore.Store.RunCache,
// within CacheConfig.MaxStaleness, default 1s). Any agent's token is
// accepted: share the secret only with services meant to accept each
// other's tokens.
//
// # State handles
//
// [RegisterHandleTools] adds list_<kind>s and destroy_<kind> tools for
// the caller's sessions.Handles of a kind; [PrincipalFromRequest] gives
// other tools the caller to pass to sessions.Handles as the principal.
//
// # Defaults
//
// Each check's store call is bounded by [Options.Timeout], default
// [DefaultTimeout] (5s); store failures are logged as warnings on
// slog.Default() unless [Options.OnError] is set; no resource_metadata is
// advertised unless [Options.ResourceMetadataURL] is set.
package gosdkauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"

	"github.com/agentsessions/agentsessions/mcpsessions/internal/bearer"
	"github.com/agentsessions/agentsessions/sessions"
)

// DefaultTimeout bounds the store call of each check when
// [Options.Timeout] is zero.
const DefaultTimeout = bearer.DefaultTimeout

// ExtraSessionKey is the key of auth.TokenInfo.Extra under which the
// verified sessions.Session is stored (as a sessions.Session value).
const ExtraSessionKey = "agentsessions.session"

// ErrInvalidOptions is in the chain of every error [RequireBearerToken]
// returns.
var ErrInvalidOptions = errors.New("gosdkauth: invalid options")

// Options configures [RequireBearerToken]. The zero value is usable.
type Options struct {
	// ResourceMetadataURL, when set, is sent in every WWW-Authenticate
	// challenge as the resource_metadata parameter (RFC 9728). Default:
	// none.
	ResourceMetadataURL string

	// Timeout bounds the store call of each check. Default
	// [DefaultTimeout]; negative is an error.
	Timeout time.Duration

	// OnError is called, synchronously, when a check fails for a reason
	// other than the token (the store failed or timed out, the server's
	// clock is broken); the client gets 503 or 500. The error carries the
	// cause in full and never the token. Default: a warning on
	// slog.Default().
	OnError func(ctx context.Context, err error)
}

// TokenVerifier returns an auth.TokenVerifier that checks agentsessions
// tokens with m.Verify (see the package documentation for the TokenInfo).
// A token that does not pass is an error matching auth.ErrInvalidToken,
// unless the check itself failed (store outage, server fault): that error
// does not match auth.ErrInvalidToken, so auth.RequireBearerToken answers
// it with 500, not 401 (use [RequireBearerToken] for 503). Either way the
// error matches the sessions error underneath (errors.Is), and its text
// is the message of sessions.HTTPError, never the token or database
// detail. Each check's store call is bounded by [DefaultTimeout]. m must
// not be nil.
func TokenVerifier(m *sessions.Manager) auth.TokenVerifier {
	return func(ctx context.Context, token string, _ *http.Request) (*auth.TokenInfo, error) {
		cctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
		s, err := m.Verify(cctx, token)
		if err != nil {
			return nil, verifierError(err)
		}
		return tokenInfo(s), nil
	}
}

// verifierError is the error of a failed check as go-sdk wants it.
func verifierError(err error) error {
	info := sessions.HTTPError(err)
	if info.Status == http.StatusUnauthorized {
		return &checkError{msg: info.Message, errs: []error{auth.ErrInvalidToken, err}}
	}
	return &checkError{msg: info.Message, errs: []error{err}}
}

// checkError carries the client-safe message of sessions.HTTPError as its
// text (auth.RequireBearerToken writes the text into its response) and the
// cause in its chain.
type checkError struct {
	msg  string
	errs []error
}

func (e *checkError) Error() string   { return e.msg }
func (e *checkError) Unwrap() []error { return e.errs }

// SessionFromTokenInfo returns the session [TokenVerifier] (or
// [RequireBearerToken]) put in ti, such as a tool handler's
// req.Extra.TokenInfo. It is false for nil or for token info of another
// verifier.
func SessionFromTokenInfo(ti *auth.TokenInfo) (sessions.Session, bool) {
	if ti == nil {
		return sessions.Session{}, false
	}
	s, ok := ti.Extra[ExtraSessionKey].(sessions.Session)
	return s, ok
}

func tokenInfo(s sessions.Session) *auth.TokenInfo {
	return &auth.TokenInfo{
		UserID:     s.AgentID,
		Expiration: s.ExpiresAt,
		Extra:      map[string]any{ExtraSessionKey: s},
	}
}

// verifiedKey carries, from RequireBearerToken's check to the verifier it
// gives auth.RequireBearerToken, the session already verified for the
// request, so that each request costs one check.
type verifiedKey struct{}

type verified struct {
	token string
	s     sessions.Session
}

// RequireBearerToken returns net/http middleware that authenticates every
// request with its agentsessions bearer token, for a go-sdk
// mcp.StreamableHTTPHandler: 401 (with an RFC 6750 challenge) for a bad
// token, 503 with Retry-After when the store failed, and for a good token
// the auth.TokenInfo of [TokenVerifier] in the request's context, put there
// by go-sdk's auth.RequireBearerToken (so auth.TokenInfoFromContext and
// req.Extra.TokenInfo see it). The verified session is also in the
// context for sessions.SessionFromContext. Refused requests never reach
// next. See the package documentation.
//
// It fails when m is nil, Timeout is negative, or ResourceMetadataURL
// holds a quote, backslash or line break.
func RequireBearerToken(m *sessions.Manager, opts Options) (func(http.Handler) http.Handler, error) {
	c, err := bearer.New(m, bearer.Config{
		ResourceMetadataURL: opts.ResourceMetadataURL,
		Timeout:             opts.Timeout,
		OnError:             opts.OnError,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	// The verifier go-sdk's middleware calls: the result of the check
	// below, or (never, in this wiring) a check of its own.
	verify := func(ctx context.Context, token string, _ *http.Request) (*auth.TokenInfo, error) {
		if v, ok := ctx.Value(verifiedKey{}).(verified); ok && v.token == token {
			return tokenInfo(v.s), nil
		}
		s, err := c.Verify(ctx, token)
		if err != nil {
			return nil, verifierError(err)
		}
		return tokenInfo(s), nil
	}
	sdk := auth.RequireBearerToken(verify, &auth.RequireBearerTokenOptions{
		ResourceMetadataURL: opts.ResourceMetadataURL,
	})
	return func(next http.Handler) http.Handler {
		inner := sdk(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s, token, ok := c.Check(w, r)
			if !ok {
				return
			}
			ctx := context.WithValue(r.Context(), verifiedKey{}, verified{token: token, s: s})
			inner.ServeHTTP(w, r.WithContext(sessions.ContextWithSession(ctx, s)))
		})
	}, nil
}
