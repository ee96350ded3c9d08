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
	// 401 (no, malformed, invalid, expired or unknown token; no agent ID),
	// 403 (a valid token of another agent) or 503 (the store failed; the
	// token may be fine, so the client should retry), and err is the
	// cause, errors.Is-able against this package's sentinels. err may hold
	// details meant for logs, never the token. Default: a JSON body
	// {"error":{"code":"...","message":"..."}} with a WWW-Authenticate
	// header on 401 and Retry-After on 503.
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

// SessionFromContext returns the session [Middleware] authenticated for
// the request whose context is ctx.
func SessionFromContext(ctx context.Context) (Session, bool) {
	s, ok := ctx.Value(sessionKey{}).(Session)
	return s, ok
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
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
		})
	}
}

func authenticateRequest(m *Manager, r *http.Request, header string) (Session, int, error) {
	token, ok := bearerToken(r.Header.Get("Authorization"))
	if !ok {
		return Session{}, http.StatusUnauthorized, ErrMissingToken
	}
	agentID := r.Header.Get(header)
	if agentID == "" {
		return Session{}, http.StatusUnauthorized, ErrMissingAgentID
	}
	s, err := m.Authenticate(r.Context(), token, agentID)
	return s, authStatus(err), err
}

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

func authStatus(err error) int {
	var denied *AccessDeniedError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &denied) && denied.Reason == ReasonAgentMismatch:
		return http.StatusForbidden
	case errors.Is(err, ErrStore), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	default:
		return http.StatusUnauthorized
	}
}

// middlewareErrorCode names the cause of a refusal for clients.
func middlewareErrorCode(status int, err error) (code, msg string) {
	switch {
	case status == http.StatusServiceUnavailable:
		return "unavailable", "the session store is unavailable; retry shortly"
	case status == http.StatusForbidden:
		return "forbidden", "the token belongs to another agent"
	case errors.Is(err, ErrMissingToken):
		return "missing_token", "send the session token as Authorization: Bearer <token>"
	case errors.Is(err, ErrMissingAgentID):
		return "missing_agent_id", "send the agent ID in the agent header"
	case errors.Is(err, ErrSessionExpired):
		return "expired", "the session has expired; issue a new one"
	case errors.Is(err, ErrInvalidTokenFormat), errors.Is(err, ErrInvalidSignature):
		return "invalid_token", "the token is malformed or its signature is invalid"
	case errors.Is(err, ErrInvalidAgentID):
		return "invalid_agent_id", "the agent ID is not valid"
	default:
		return "unauthorized", "the session is unknown or has been revoked"
	}
}

func writeMiddlewareError(w http.ResponseWriter, _ *http.Request, status int, err error) {
	code, msg := middlewareErrorCode(status, err)
	switch status {
	case http.StatusUnauthorized:
		// RFC 6750, section 3.1: no error code when no token was sent.
		if errors.Is(err, ErrMissingToken) {
			w.Header().Set("WWW-Authenticate", "Bearer")
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	type detail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	_ = json.NewEncoder(w).Encode(struct {
		Error detail `json:"error"`
	}{detail{code, msg}})
}
