package sessions_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// Every sentinel of the package, bare, wrapped as the package wraps it and
// as callers wrap it, goes through the one table to the status and code the
// API documents.
func TestHTTPErrorTable(t *testing.T) {
	t.Parallel()
	denied := func(r sessions.DenyReason) error { return &sessions.AccessDeniedError{Reason: r} }
	store := func(cause error) error { return &sessions.StoreError{Op: "get", Err: cause} }
	hostErr := errors.New("dial tcp 10.1.2.3:5432: connection refused")
	cases := []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"invalid config", sessions.ErrInvalidConfig, 500, "internal_error"},
		{"config error", &sessions.ConfigError{Field: "TTL", Reason: "is zero"}, 500, "internal_error"},
		{"invalid agent id", sessions.ErrInvalidAgentID, 400, "invalid_agent_id"},
		{"invalid agent id, validated", sessions.ValidateAgentID("a\x00b"), 400, "invalid_agent_id"},
		{"invalid session id", sessions.ErrInvalidSessionID, 400, "invalid_session_id"},
		{"limit exceeded", sessions.ErrLimitExceeded, 409, "limit_exceeded"},
		{"limit error", &sessions.LimitError{AgentID: "a", Limit: 2}, 409, "limit_exceeded"},
		{"handle limit error", &sessions.LimitError{AgentID: "a", Kind: "basket", Limit: 2}, 409, "limit_exceeded"},
		{"unknown handle", sessions.ErrUnknownHandle, 404, "unknown_handle"},
		{"unknown handle, wrapped", fmt.Errorf("tool: %w", sessions.ErrUnknownHandle), 404, "unknown_handle"},
		{"invalid token format", sessions.ErrInvalidTokenFormat, 401, "invalid_token"},
		{"invalid signature", sessions.ErrInvalidSignature, 401, "invalid_token"},
		{"access denied, bare", sessions.ErrAccessDenied, 401, "unauthorized"},
		{"agent mismatch", denied(sessions.ReasonAgentMismatch), 403, "forbidden"},
		{"unknown session", denied(sessions.ReasonUnknownSession), 401, "unauthorized"},
		{"metadata mismatch", denied(sessions.ReasonMetadataMismatch), 401, "unauthorized"},
		{"digest mismatch", denied(sessions.ReasonDigestMismatch), 401, "unauthorized"},
		{"clock before epoch", denied(sessions.ReasonClockBeforeEpoch), 500, "internal_error"},
		{"session expired", sessions.ErrSessionExpired, 401, "expired"},
		{"store, bare", sessions.ErrStore, 503, "store_unavailable"},
		{"store error", store(hostErr), 503, "store_unavailable"},
		{"store retries exhausted", store(errors.New("serialization retries exhausted")), 503, "store_unavailable"},
		{"store deadline", store(context.DeadlineExceeded), 503, "store_unavailable"},
		{"store canceled", store(context.Canceled), 499, "canceled"},
		{"invalid metadata", sessions.ErrInvalidMetadata, 400, "invalid_metadata"},
		{"invalid limit", sessions.ErrInvalidLimit, 400, "invalid_limit"},
		{"lifetime exceeded", sessions.ErrLifetimeExceeded, 401, "lifetime_exceeded"},
		{"missing token", sessions.ErrMissingToken, 400, "missing_token"},
		{"missing agent id", sessions.ErrMissingAgentID, 400, "missing_agent_id"},
		{"deadline", context.DeadlineExceeded, 503, "store_unavailable"},
		{"canceled", context.Canceled, 499, "canceled"},
		{"bad request", &sessions.RequestError{Code: "bad_request", Message: "m"}, 400, "bad_request"},
		{"request too large", &sessions.RequestError{Code: "request_too_large", Message: "m"}, 413, "request_too_large"},
		{"unsupported media type", &sessions.RequestError{Code: "unsupported_media_type", Message: "m"}, 415, "unsupported_media_type"},
		{"request error, unknown code", &sessions.RequestError{Code: "forbidden", Message: "m"}, 400, "bad_request"},
		{"unknown error", errors.New("boom"), 500, "internal_error"},
		{"nil", nil, 500, "internal_error"},
	}
	codes := map[string]int{}
	for _, c := range sessions.HTTPErrorCodes() {
		if _, dup := codes[c.Code]; dup || c.When == "" {
			t.Fatalf("HTTPErrorCodes: %q listed twice or without When", c.Code)
		}
		codes[c.Code] = c.Status
	}
	seen := map[string]bool{}
	for _, c := range cases {
		for _, err := range []error{c.err, fmt.Errorf("caller context: %w", c.err)} {
			if c.err == nil && err != nil {
				continue
			}
			got := sessions.HTTPError(err)
			if got.Status != c.status || got.Code != c.code {
				t.Errorf("%s (%v): got %d %s, want %d %s", c.name, err, got.Status, got.Code, c.status, c.code)
			}
			if codes[got.Code] != got.Status {
				t.Errorf("%s: code %s with status %d, HTTPErrorCodes says %d", c.name, got.Code, got.Status, codes[got.Code])
			}
			if got.Message == "" || strings.Contains(got.Message, "sessions: ") || strings.Contains(got.Message, "10.1.2.3") {
				t.Errorf("%s: message %q is empty, has the package prefix or the store's cause", c.name, got.Message)
			}
			if want := map[bool]string{true: "1", false: ""}[c.status == 503]; got.RetryAfter() != want {
				t.Errorf("%s: RetryAfter %q, want %q", c.name, got.RetryAfter(), want)
			}
			seen[got.Code] = true
		}
	}
	for code := range codes {
		if !seen[code] {
			t.Errorf("code %s is in HTTPErrorCodes but no case reaches it", code)
		}
	}

	// One message per group: which check failed helps only an attacker.
	same := func(what string, errs ...error) {
		t.Helper()
		first := sessions.HTTPError(errs[0]).Message
		for _, err := range errs[1:] {
			if m := sessions.HTTPError(err).Message; m != first {
				t.Errorf("%s: %q vs %q", what, m, first)
			}
		}
	}
	same("token", sessions.ErrInvalidTokenFormat, sessions.ErrInvalidSignature)
	same("session", denied(sessions.ReasonUnknownSession), denied(sessions.ReasonMetadataMismatch),
		denied(sessions.ReasonDigestMismatch))
	same("store", store(hostErr), sessions.ErrStore, context.DeadlineExceeded)

	// The caller's mistakes keep their detail.
	if m := sessions.HTTPError(&sessions.LimitError{AgentID: "a", Limit: 2}).Message; !strings.Contains(m, "limit of 2") {
		t.Errorf("limit message %q lost the limit", m)
	}
	if m := sessions.HTTPError(sessions.ValidateAgentID("")).Message; !strings.Contains(m, "empty") {
		t.Errorf("agent ID message %q does not say what is wrong", m)
	}
}

// The errors a real manager returns classify as the table says.
func TestHTTPErrorFromManager(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := 0
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte(secret), TTL: time.Minute, Limit: 1,
		NewID: func() (string, error) { // the second ID repeats the first: a broken NewID
			n++
			return fmt.Sprint(max(n, 2)), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	iss := mustIssue(t, m, agent)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, errCanceled := m.Authenticate(canceled, iss.Token, agent)
	_, errDup := m.Issue(ctx, other) // the same ID again: a broken NewID
	_, errLimit := m.Issue(ctx, agent)
	_, errAgent := m.Issue(ctx, "")
	_, errMeta := m.Issue(ctx, other, sessions.WithMetadata(map[string]string{"": "v"}))
	_, errSID := m.Revoke(ctx, "")
	_, errFormat := m.Authenticate(ctx, "garbage", agent)
	_, errOther := m.Authenticate(ctx, iss.Token, other)
	_, errBadCfg := sessions.New(sessions.NewMemoryStore(), sessions.Config{})
	for _, c := range []struct {
		name string
		err  error
		want int
		code string
	}{
		{"canceled", errCanceled, 499, "canceled"},
		{"duplicate id", errDup, http.StatusInternalServerError, "internal_error"},
		{"limit", errLimit, http.StatusConflict, "limit_exceeded"},
		{"agent id", errAgent, http.StatusBadRequest, "invalid_agent_id"},
		{"metadata", errMeta, http.StatusBadRequest, "invalid_metadata"},
		{"session id", errSID, http.StatusBadRequest, "invalid_session_id"},
		{"format", errFormat, http.StatusUnauthorized, "invalid_token"},
		{"another agent", errOther, http.StatusForbidden, "forbidden"},
		{"config", errBadCfg, http.StatusInternalServerError, "internal_error"},
	} {
		if c.err == nil {
			t.Fatalf("%s: no error", c.name)
		}
		if got := sessions.HTTPError(c.err); got.Status != c.want || got.Code != c.code {
			t.Errorf("%s (%v): got %d %s, want %d %s", c.name, c.err, got.Status, got.Code, c.want, c.code)
		}
	}
}

// FailureReason keeps the reasons clients are not told apart distinct for
// metrics, and maps everything else onto a small fixed set.
func TestFailureReason(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&sessions.AccessDeniedError{Reason: sessions.ReasonDigestMismatch}, "digest_mismatch"},
		{&sessions.AccessDeniedError{Reason: sessions.ReasonUnknownSession}, "unknown_session"},
		{&sessions.AccessDeniedError{Reason: sessions.ReasonAgentMismatch}, "agent_mismatch"},
		{&sessions.AccessDeniedError{Reason: "something new"}, "access_denied"},
		{sessions.ErrInvalidSignature, "invalid_signature"},
		{sessions.ErrInvalidTokenFormat, "invalid_token"},
		{sessions.ErrSessionExpired, "expired"},
		{sessions.ErrSessionIdle, "idle_timeout"},
		{sessions.ErrLifetimeExceeded, "lifetime_exceeded"},
		{sessions.ErrInvalidAgentID, "invalid_agent_id"},
		{&sessions.StoreError{Op: "get", Err: errors.New("down")}, "store_error"},
		{sessions.ErrMissingToken, "other"},
		{errors.New("anything else"), "other"},
	} {
		if got := sessions.FailureReason(c.err); got != c.want {
			t.Errorf("FailureReason(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
