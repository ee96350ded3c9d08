package mcpsessions

import (
	"context"
	"net/http"
	"time"

	"github.com/mark3labs/mcp-go/mcp"

	"github.com/agentsessions/agentsessions/mcpsessions/internal/bearer"
	"github.com/agentsessions/agentsessions/sessions"
)

// BearerOptions configures [RequireBearerToken]. The zero value is usable.
type BearerOptions struct {
	// ResourceMetadataURL, when set, is sent in every WWW-Authenticate
	// challenge as the resource_metadata parameter (RFC 9728), for clients
	// that discover their authorization server that way. Default: none.
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

	// LegacyPassThrough lets requests of the session-oriented protocol
	// versions (an Mcp-Protocol-Version header absent or before
	// 2026-07-28) through unchecked, for an endpoint that serves old
	// clients through the Mcp-Session-Id bridge ([Adapter.Middleware] and
	// the resolver) behind this middleware. Only requests with a modern
	// header are checked; mcp-go refuses any request that declares
	// 2026-07-28 in its _meta without that header, so none is served in the
	// modern era unchecked. A 2026-07-28 client without a token is
	// refused (401 to its server/discover), after which the SDK clients
	// fall back to initialize, that is to the bridge: on such an endpoint
	// the bridge's agent rules ([Options.AgentID],
	// [Options.AgentIDFromRequest]) are the gate for clients without a
	// token. Leave it false (the default: every request needs a bearer
	// token) unless the bridge is behind.
	LegacyPassThrough bool
}

// RequireBearerToken returns net/http middleware for an mcp-go
// StreamableHTTPServer serving MCP protocol 2026-07-28, which has no
// protocol-level sessions: every request carries the client's
// agentsessions token as "Authorization: Bearer <token>", checked with
// [sessions.Manager.Verify] (signature first, so a forged or malformed
// token costs no store call; then the session in the shared store, so a
// Revoke on any instance refuses the token on all of them).
//
// A request that passes reaches next with the verified session in its
// context, and mcp-go hands that context to tool handlers: read it there
// with [sessions.SessionFromContext] (the session's AgentID is the
// caller). A request that does not pass never reaches next:
//
//   - 401 with "WWW-Authenticate: Bearer" when there is no bearer token;
//   - 401 with `WWW-Authenticate: Bearer error="invalid_token"` for a
//     malformed, forged, expired, unknown or revoked token;
//   - 503 with Retry-After when the store failed or timed out (the token
//     may be fine: the client should retry, not discard it), and 500 for a
//     server fault; both go to OnError;
//
// with a plain-text "code: message" body from [sessions.HTTPError] (never
// the token, never database detail).
//
// Any agent's session is accepted: the agent is whoever the token was
// issued to. Share the secret only with services meant to accept each
// other's tokens.
//
// It fails when m is nil, Timeout is negative, or ResourceMetadataURL
// holds a quote, backslash or line break.
func RequireBearerToken(m *sessions.Manager, opts BearerOptions) (func(http.Handler) http.Handler, error) {
	c, err := bearer.New(m, bearer.Config{
		ResourceMetadataURL: opts.ResourceMetadataURL,
		Timeout:             opts.Timeout,
		OnError:             opts.OnError,
	})
	if err != nil {
		return nil, wrapInvalid(err)
	}
	legacy := opts.LegacyPassThrough
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if legacy && !mcp.IsModernProtocol(r.Header.Get(mcp.HeaderProtocolVersion)) {
				next.ServeHTTP(w, r)
				return
			}
			s, _, ok := c.Check(w, r)
			if !ok {
				return
			}
			next.ServeHTTP(w, r.WithContext(sessions.ContextWithSession(r.Context(), s)))
		})
	}, nil
}

// wrapInvalid puts ErrInvalidOptions in the chain of a bearer.New error.
func wrapInvalid(err error) error {
	return &optionsError{err}
}

type optionsError struct{ err error }

func (e *optionsError) Error() string { return "mcpsessions: " + e.err.Error() }
func (e *optionsError) Unwrap() []error {
	return []error{ErrInvalidOptions, e.err}
}
