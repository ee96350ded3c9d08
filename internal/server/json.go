package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// Session is a session as the API (and the CLI's --json) shows it. The
// token digest is never shown.
type Session struct {
	ID        string            `json:"id"`
	AgentID   string            `json:"agent_id"`
	IssuedAt  string            `json:"issued_at"`  // RFC 3339, UTC
	ExpiresAt string            `json:"expires_at"` // RFC 3339, UTC
	Metadata  map[string]string `json:"metadata,omitempty"`
}

// NewSession converts a library session to its JSON form.
func NewSession(s sessions.Session) Session {
	return Session{
		ID:        s.ID,
		AgentID:   s.AgentID,
		IssuedAt:  s.IssuedAt.UTC().Format(time.RFC3339),
		ExpiresAt: s.ExpiresAt.UTC().Format(time.RFC3339),
		Metadata:  s.Metadata,
	}
}

// IssuedResponse is the body of a successful issue or refresh.
type IssuedResponse struct {
	Token   string  `json:"token"`
	Session Session `json:"session"`
	// Evicted lists the sessions revoked to make room under the
	// evict-oldest policy; omitted when none were.
	Evicted []string `json:"evicted,omitempty"`
}

// SessionResponse is the body of a successful authenticate.
type SessionResponse struct {
	Session Session `json:"session"`
}

// SessionsResponse lists sessions; Sessions is never null.
type SessionsResponse struct {
	Sessions []Session `json:"sessions"`
}

// RevokedResponse says how many sessions an agent-wide revoke deleted.
type RevokedResponse struct {
	Revoked int `json:"revoked"`
}

// LimitResponse is an agent's effective limit; Override is false when the
// configured default applies.
type LimitResponse struct {
	AgentID  string `json:"agent_id"`
	Limit    int    `json:"limit"`
	Override bool   `json:"override"`
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is a machine-readable code and a human message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Request bodies.
type (
	issueRequest struct {
		AgentID  string            `json:"agent_id"`
		Metadata map[string]string `json:"metadata"`
	}
	tokenRequest struct {
		AgentID string `json:"agent_id"`
		Token   string `json:"token"`
	}
	limitRequest struct {
		Limit *int `json:"limit"`
	}
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store") // responses may carry tokens
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // an error means the client went away: nothing to do
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}

// httpError is a client error found while reading a request.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, code: "bad_request", msg: fmt.Sprintf(format, args...)}
}

// decode reads exactly one JSON object of at most max bytes into dst,
// refusing unknown fields, so a typo in a field name is a 400 rather than
// a silently ignored field.
func decode(w http.ResponseWriter, r *http.Request, max int64, dst any, example string) *httpError {
	r.Body = http.MaxBytesReader(w, r.Body, max)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		// Anything after the object but white space is an error.
		var extra json.RawMessage
		if err = dec.Decode(&extra); err == io.EOF {
			return nil
		}
		if err == nil {
			return badRequest("request body has more than one JSON value; send one object like %s", example)
		}
	}
	var (
		tooBig *http.MaxBytesError
		syn    *json.SyntaxError
		typ    *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooBig):
		return &httpError{status: http.StatusRequestEntityTooLarge, code: "request_too_large",
			msg: fmt.Sprintf("request body is over %d bytes", tooBig.Limit)}
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty; send a JSON object like %s", example)
	case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is not valid JSON; send an object like %s", example)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return badRequest("request body must be a JSON object like %s", example)
		}
		return badRequest("field %q must be a JSON %s", typ.Field, jsonKind(typ.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badRequest("unknown field %s; send an object like %s", strings.TrimPrefix(err.Error(), "json: unknown field "), example)
	default:
		return badRequest("cannot read request body: %v", err)
	}
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "map", "struct":
		return "object of strings"
	case "int", "int64":
		return "integer"
	}
	return goKind
}

// userMessage strips the library's "sessions: " prefixes from an error
// message meant for a client.
func userMessage(err error) string {
	return strings.ReplaceAll(err.Error(), "sessions: ", "")
}
