package sessions

import (
	"context"
	"errors"
	"net/http"
	"strings"
)

// The error codes of [HTTPError], as they appear in JSON error bodies
// {"error":{"code":"...","message":"..."}}. They are part of the public
// HTTP API: the service (api/openapi.yaml), [Middleware] and the MCP
// adapter answer with them, and a code never changes meaning.
const (
	// CodeBadRequest (400): a malformed request body ([RequestError]).
	CodeBadRequest = "bad_request"
	// CodeInvalidAgentID (400): [ErrInvalidAgentID].
	CodeInvalidAgentID = "invalid_agent_id"
	// CodeInvalidSessionID (400): [ErrInvalidSessionID].
	CodeInvalidSessionID = "invalid_session_id"
	// CodeInvalidMetadata (400): [ErrInvalidMetadata].
	CodeInvalidMetadata = "invalid_metadata"
	// CodeInvalidLimit (400): [ErrInvalidLimit].
	CodeInvalidLimit = "invalid_limit"
	// CodeMissingToken (400): [ErrMissingToken]. [Middleware] answers a
	// request without any bearer token with 401 instead (RFC 6750).
	CodeMissingToken = "missing_token"
	// CodeMissingAgentID (400): [ErrMissingAgentID].
	CodeMissingAgentID = "missing_agent_id"
	// CodeInvalidToken (401): [ErrInvalidTokenFormat] or
	// [ErrInvalidSignature], deliberately not told apart.
	CodeInvalidToken = "invalid_token"
	// CodeExpired (401): [ErrSessionExpired], [ErrSessionIdle] included
	// (its message says idle).
	CodeExpired = "expired"
	// CodeLifetimeExceeded (401): [ErrLifetimeExceeded] (refresh only).
	CodeLifetimeExceeded = "lifetime_exceeded"
	// CodeUnauthorized (401): [ErrAccessDenied] for an unknown, revoked or
	// superseded session, deliberately not told apart.
	CodeUnauthorized = "unauthorized"
	// CodeForbidden (403): [ErrAccessDenied] with [ReasonAgentMismatch]: a
	// genuine token of another agent.
	CodeForbidden = "forbidden"
	// CodeUnknownHandle (404): [ErrUnknownHandle].
	CodeUnknownHandle = "unknown_handle"
	// CodeLimitExceeded (409): [ErrLimitExceeded].
	CodeLimitExceeded = "limit_exceeded"
	// CodeRequestTooLarge (413): a body over the server's cap ([RequestError]).
	CodeRequestTooLarge = "request_too_large"
	// CodeUnsupportedMediaType (415): a body that is not application/json
	// ([RequestError]).
	CodeUnsupportedMediaType = "unsupported_media_type"
	// CodeCanceled (499, the de facto "client closed request"): the
	// caller's context was canceled, so nobody is waiting for the answer.
	CodeCanceled = "canceled"
	// CodeInternal (500): anything else, e.g. [ErrInvalidConfig], the
	// clock reading before 1970, or an error this package does not know.
	CodeInternal = "internal_error"
	// CodeStoreUnavailable (503, with Retry-After): [ErrStore] or a
	// context deadline: the store failed or was too slow; the request may
	// succeed if retried.
	CodeStoreUnavailable = "store_unavailable"
)

// StatusClientClosedRequest is the status of [CodeCanceled]. It is not in
// RFC 9110; nginx introduced it for a request whose client went away, and
// it mostly shows up in logs and metrics, as the client has gone.
const StatusClientClosedRequest = 499

// HTTPErrorInfo is how an error is answered over HTTP.
type HTTPErrorInfo struct {
	// Status is the HTTP status code.
	Status int
	// Code is one of the Code* constants.
	Code string
	// Message is a sentence for the client. It never holds a token or a
	// store's error text (which may name hosts or SQL).
	Message string
}

// RetryAfter is the value of the Retry-After header to send with the
// answer, in seconds, or "" for none: "1" for 503 (the store may be back
// shortly), "" otherwise.
func (i HTTPErrorInfo) RetryAfter() string {
	if i.Status == http.StatusServiceUnavailable {
		return "1"
	}
	return ""
}

// HTTPErrorCode is one row of the table of codes: see [HTTPErrorCodes].
type HTTPErrorCode struct {
	Code   string
	Status int
	// When says, in a few words, which errors get the code.
	When string
}

// httpCodes is the table: every code HTTPError can return, its status, and
// when. HTTPError picks the row; nothing else maps errors to statuses.
var httpCodes = []HTTPErrorCode{
	{CodeBadRequest, http.StatusBadRequest, "malformed request body: not JSON, not one object, an unknown or duplicate field, invalid UTF-8"},
	{CodeInvalidAgentID, http.StatusBadRequest, "agent ID empty, too long, not UTF-8 or with a control character"},
	{CodeInvalidSessionID, http.StatusBadRequest, "session ID empty, too long, not UTF-8 or with a control character"},
	{CodeInvalidMetadata, http.StatusBadRequest, "metadata with an empty key, not UTF-8, or over 1 KiB as JSON"},
	{CodeInvalidLimit, http.StatusBadRequest, "a per-agent limit below 1 or above 2^31-1"},
	{CodeMissingToken, http.StatusBadRequest, "no token in the request (the middleware: 401 with WWW-Authenticate: Bearer)"},
	{CodeMissingAgentID, http.StatusBadRequest, "no agent ID in the request"},
	{CodeInvalidToken, http.StatusUnauthorized, "token malformed, or not signed with the secret (or a previous one)"},
	{CodeExpired, http.StatusUnauthorized, "the session has expired"},
	{CodeLifetimeExceeded, http.StatusUnauthorized, "refresh of a session at its maximum lifetime"},
	{CodeUnauthorized, http.StatusUnauthorized, "session unknown or revoked, or a token superseded by a refresh"},
	{CodeForbidden, http.StatusForbidden, "a genuine token of another agent"},
	{CodeUnknownHandle, http.StatusNotFound, "a state handle that is not the caller's, forged, destroyed or never created"},
	{CodeLimitExceeded, http.StatusConflict, "the agent holds its limit of live sessions (policy reject)"},
	{CodeRequestTooLarge, http.StatusRequestEntityTooLarge, "request body over the cap"},
	{CodeUnsupportedMediaType, http.StatusUnsupportedMediaType, "request body without Content-Type: application/json"},
	{CodeCanceled, StatusClientClosedRequest, "the caller canceled the request"},
	{CodeInternal, http.StatusInternalServerError, "anything else (e.g. invalid config, clock before 1970)"},
	{CodeStoreUnavailable, http.StatusServiceUnavailable, "the store failed or timed out; retry (Retry-After: 1)"},
}

// HTTPErrorCodes returns the table of codes [HTTPError] answers with, in
// order of status. The slice is a copy.
func HTTPErrorCodes() []HTTPErrorCode {
	return append([]HTTPErrorCode(nil), httpCodes...)
}

func statusOf(code string) int {
	for _, c := range httpCodes {
		if c.Code == code {
			return c.Status
		}
	}
	return http.StatusInternalServerError
}

// RequestError is a request refused before any session logic ran, such as
// a malformed body: HTTPError answers it with Code's status and Message as
// is. Code is CodeBadRequest, CodeRequestTooLarge or
// CodeUnsupportedMediaType; any other code is answered as CodeBadRequest.
type RequestError struct {
	Code    string
	Message string
}

func (e *RequestError) Error() string { return e.Message }

// The fixed messages: for these errors the detail helps only an attacker,
// or may name hosts or SQL.
const (
	msgInvalidToken     = "the token is malformed or its signature is invalid"
	msgExpired          = "the session has expired; issue a new one"
	msgIdle             = "the session expired after its idle timeout without use; issue a new one"
	msgLifetimeExceeded = "the session has reached its maximum lifetime and cannot be refreshed; issue a new one"
	msgUnauthorized     = "the session is unknown, revoked, or the token was superseded by a refresh"
	msgUnknownHandle    = "no such handle: create one first, or use a handle this caller created"
	msgForbidden        = "the token belongs to another agent"
	msgStore            = "the session store is unavailable; retry shortly"
	msgCanceled         = "the request was canceled"
	msgInternal         = "internal error; see the server log"
)

// HTTPError classifies err, an error of this package (possibly wrapped),
// for an HTTP answer. The rules:
//
//   - the caller's mistakes are 4xx, and their message is err's text
//     without the "sessions: " prefixes, so it says what to fix (the
//     detail is the caller's own input: an agent ID, a limit, ...);
//   - invalid token format and invalid signature share one message, and
//     an unknown, revoked or superseded session shares another: which
//     check failed helps only an attacker;
//   - [ErrStore] and context.DeadlineExceeded are 503
//     [CodeStoreUnavailable] with a generic message (the cause may name
//     hosts or SQL; log err instead), except a store failure caused by the
//     caller's canceled context (499 [CodeCanceled]) or by a duplicate
//     session ID from a broken Config.NewID (500);
//   - anything unknown, nil included, is 500 [CodeInternal], generic.
//
// An error matching several sentinels gets the first match in this order:
// [RequestError], cancellation, store and deadline, [ErrInvalidConfig],
// the caller's input errors, token errors, denials, the limit.
func HTTPError(err error) HTTPErrorInfo {
	code, msg := classify(err)
	return HTTPErrorInfo{Status: statusOf(code), Code: code, Message: msg}
}

func classify(err error) (code, msg string) {
	var (
		req    *RequestError
		denied *AccessDeniedError
	)
	switch {
	case err == nil:
		return CodeInternal, msgInternal
	case errors.As(err, &req):
		switch req.Code {
		case CodeRequestTooLarge, CodeUnsupportedMediaType:
			return req.Code, req.Message
		}
		return CodeBadRequest, req.Message
	case errors.Is(err, context.Canceled):
		return CodeCanceled, msgCanceled
	case errors.Is(err, ErrDuplicateSessionID):
		return CodeInternal, msgInternal
	case errors.Is(err, ErrStore), errors.Is(err, context.DeadlineExceeded):
		return CodeStoreUnavailable, msgStore
	case errors.Is(err, ErrInvalidConfig):
		return CodeInternal, msgInternal
	case errors.Is(err, ErrInvalidAgentID):
		return CodeInvalidAgentID, userMessage(err)
	case errors.Is(err, ErrInvalidSessionID):
		return CodeInvalidSessionID, userMessage(err)
	case errors.Is(err, ErrInvalidMetadata):
		return CodeInvalidMetadata, userMessage(err)
	case errors.Is(err, ErrInvalidLimit):
		return CodeInvalidLimit, userMessage(err)
	case errors.Is(err, ErrMissingToken):
		return CodeMissingToken, userMessage(err)
	case errors.Is(err, ErrMissingAgentID):
		return CodeMissingAgentID, userMessage(err)
	case errors.Is(err, ErrInvalidTokenFormat), errors.Is(err, ErrInvalidSignature):
		return CodeInvalidToken, msgInvalidToken
	case errors.Is(err, ErrSessionIdle):
		return CodeExpired, msgIdle
	case errors.Is(err, ErrSessionExpired):
		return CodeExpired, msgExpired
	case errors.Is(err, ErrLifetimeExceeded):
		return CodeLifetimeExceeded, msgLifetimeExceeded
	case errors.As(err, &denied):
		switch denied.Reason {
		case ReasonAgentMismatch:
			return CodeForbidden, msgForbidden
		case ReasonClockBeforeEpoch:
			// The server's clock is broken, not the caller's token.
			return CodeInternal, msgInternal
		}
		// Unknown, revoked, superseded (and any other denial): one answer.
		return CodeUnauthorized, msgUnauthorized
	case errors.Is(err, ErrAccessDenied):
		return CodeUnauthorized, msgUnauthorized
	case errors.Is(err, ErrLimitExceeded):
		return CodeLimitExceeded, userMessage(err)
	case errors.Is(err, ErrUnknownHandle):
		return CodeUnknownHandle, msgUnknownHandle
	}
	return CodeInternal, msgInternal
}

// userMessage is err's text without this package's "sessions: " prefixes.
func userMessage(err error) string {
	return strings.ReplaceAll(err.Error(), "sessions: ", "")
}

// FailureReason is the label metrics give a failed authentication (the
// service's agentsessions_authentication_failures_total, otelsessions'
// authentication_failures): finer than [HTTPError]'s code where operators
// need what clients are deliberately not told (which check failed), and
// from a small fixed set, so a metric never grows a label per message:
// agent_mismatch, unknown_session, metadata_mismatch, digest_mismatch,
// clock_before_epoch, access_denied, invalid_signature, invalid_token,
// expired, idle_timeout, lifetime_exceeded, invalid_agent_id, store_error,
// other.
func FailureReason(err error) string {
	var denied *AccessDeniedError
	switch {
	case errors.As(err, &denied):
		switch denied.Reason {
		case ReasonAgentMismatch:
			return "agent_mismatch"
		case ReasonUnknownSession:
			return "unknown_session"
		case ReasonMetadataMismatch:
			return "metadata_mismatch"
		case ReasonDigestMismatch:
			return "digest_mismatch"
		case ReasonClockBeforeEpoch:
			return "clock_before_epoch"
		}
		return "access_denied"
	case errors.Is(err, ErrInvalidSignature):
		return "invalid_signature"
	case errors.Is(err, ErrSessionIdle):
		return "idle_timeout"
	}
	switch code := HTTPError(err).Code; code {
	case CodeInvalidToken, CodeExpired, CodeLifetimeExceeded, CodeInvalidAgentID:
		return code
	case CodeStoreUnavailable:
		return "store_error"
	}
	return "other"
}
