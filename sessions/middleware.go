package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
)

// DefaultAgentHeader is the request header [Middleware] reads the agent ID
// from unless [MiddlewareConfig.AgentHeader] names another.
const DefaultAgentHeader = "X-Agent-ID"

// MiddlewareConfig configures [Middleware]. The zero value is usable.
type MiddlewareConfig struct {
	// AgentHeader is the request header that carries the agent ID the
	// token must belong to. Default: [DefaultAgentHeader] ("X-Agent-ID").
	AgentHeader string

	// ErrorHandler writes the response for a refused request. status is
	// [HTTPError](err).Status, except 401 for a request without a bearer
	// token (RFC 6750): 400 for a missing or invalid agent ID, 401 for a
	// malformed, forged, expired, unknown or revoked token, 403 for a
	// valid token of another agent, 503 when the store failed (the token
	// may be fine, so the client should retry), 500 otherwise. err is the
	// cause, errors.Is-able against this package's sentinels; its text
	// names the agent header where that is what to fix, and may hold
	// details meant for logs, never the token. Default: a JSON body
	// {"error":{"code":"...","message":"..."}} from [HTTPError], with
	// "WWW-Authenticate: Bearer" when no token was sent, `Bearer
	// error="invalid_token"` on any other 401 (never when the token was
	// fine), and Retry-After on 503.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, status int, err error)
}

// Errors of [Middleware] for requests that carry no usable credentials.
var (
	// ErrMissingToken: no "Authorization: Bearer <token>" header.
	ErrMissingToken = errors.New("sessions: missing bearer token")
	// ErrMissingAgentID: no agent ID header.
	ErrMissingAgentID = errors.New("sessions: missing agent id header")
)

type sessionKey struct{}

// SessionFromContext returns the session [Middleware] (or other
// authentication in front of the handler that used [ContextWithSession])
// authenticated for the request whose context is ctx.
func SessionFromContext(ctx context.Context) (Session, bool) {
	s, ok := ctx.Value(sessionKey{}).(Session)
	return s, ok
}

// ContextWithSession returns a copy of ctx carrying s, which
// [SessionFromContext] then returns. It is for authentication layers other
// than [Middleware] that have verified a token with the [Manager] (such as
// the bearer-token middleware of the mcpsessions module), so that handlers
// read the session the same way behind either. Put only a session the
// Manager returned in it: handlers trust what they find.
func ContextWithSession(ctx context.Context, s Session) context.Context {
	return context.WithValue(ctx, sessionKey{}, s)
}

// Middleware returns net/http middleware that authenticates every request
// with m before passing it on: the token comes from the Authorization
// header ("Bearer <token>") and the agent ID from cfg.AgentHeader. The
// authenticated [Session] is in the request context; read it with
// [SessionFromContext]. Refused requests never reach next.
//
// Security: the token is checked exactly as [Manager.Authenticate] does
// (signature first, in constant time, so forged tokens cost no store
// work) and is never logged or echoed in a response. Serve it over TLS:
// the bearer token is the agent's credential.
func Middleware(m *Manager, cfg MiddlewareConfig) func(http.Handler) http.Handler {
	header := cfg.AgentHeader
	if header == "" {
		header = DefaultAgentHeader
	}
	onError := cfg.ErrorHandler
	if onError == nil {
		onError = writeMiddlewareError
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s, status, err := authenticateRequest(m, r, header)
			if err != nil {
				onError(w, r, status, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(ContextWithSession(r.Context(), s)))
		})
	}
}

func authenticateRequest(m *Manager, r *http.Request, header string) (Session, int, error) {
	token, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		// RFC 6750, section 3.1: a request without credentials gets 401
		// (with a bare Bearer challenge), not the table's 400.
		return Session{}, http.StatusUnauthorized, &headerError{ErrMissingToken,
			"send the session token as Authorization: Bearer <token>"}
	}
	agentID := r.Header.Get(header)
	if agentID == "" {
		err := &headerError{ErrMissingAgentID, "send the agent ID in the " + header + " header"}
		return Session{}, HTTPError(err).Status, err
	}
	s, err := m.Authenticate(r.Context(), token, agentID)
	if err == nil {
		return s, http.StatusOK, nil
	}
	switch {
	case errors.Is(err, ErrInvalidAgentID):
		err = &headerError{err, "the " + header + " header: " + userMessage(err)}
	case HTTPError(err).Code == CodeForbidden:
		err = &headerError{err, "the token belongs to another agent than the one in the " + header + " header"}
	}
	return s, HTTPError(err).Status, err
}

// headerError gives a middleware refusal a message naming the header to
// fix; it matches what it wraps, so [HTTPError] classifies it as that.
type headerError struct {
	err error
	msg string
}

func (e *headerError) Error() string { return "sessions: " + e.msg }
func (e *headerError) Unwrap() error { return e.err }

// bearerToken extracts the credential of an "Authorization: Bearer x"
// header; the scheme is case-insensitive (RFC 9110, section 11.1).
func bearerToken(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// writeMiddlewareError is the default ErrorHandler: the code and message of
// [HTTPError], with the challenge RFC 6750 asks for on 401 and
// Retry-After on 503.
func writeMiddlewareError(w http.ResponseWriter, _ *http.Request, status int, err error) {
	info := HTTPError(err)
	var he *headerError
	if errors.As(err, &he) {
		info.Message = he.msg // the table's classification, naming the header
	}
	if status == http.StatusUnauthorized {
		if errors.Is(err, ErrMissingToken) {
			// RFC 6750, section 3.1: no error code when no token was sent.
			w.Header().Set("WWW-Authenticate", "Bearer")
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
	}
	if ra := info.RetryAfter(); ra != "" {
		w.Header().Set("Retry-After", ra)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	type detail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // "<token>" stays readable
	_ = enc.Encode(struct {
		Error detail `json:"error"`
	}{detail{info.Code, info.Message}})
}
