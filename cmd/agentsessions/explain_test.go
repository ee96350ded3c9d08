package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/agentsessions/agentsessions/sessions"
)

// explain classifies as the library's table does: every 4xx input error
// is a usage error, every token refusal says "token rejected", store
// failures point at the database, and nothing else claims to be either.
func TestExplainFollowsTable(t *testing.T) {
	t.Parallel()
	denied := func(r sessions.DenyReason) error { return &sessions.AccessDeniedError{Reason: r} }
	for _, err := range []error{
		sessions.ErrInvalidConfig, sessions.ErrInvalidAgentID, sessions.ErrInvalidSessionID,
		&sessions.LimitError{AgentID: "a", Limit: 1}, sessions.ErrInvalidTokenFormat, sessions.ErrInvalidSignature,
		denied(sessions.ReasonAgentMismatch), denied(sessions.ReasonUnknownSession), denied(sessions.ReasonMetadataMismatch),
		denied(sessions.ReasonDigestMismatch), denied(sessions.ReasonClockBeforeEpoch), sessions.ErrSessionExpired,
		&sessions.StoreError{Op: "get", Err: errors.New("refused")}, sessions.ErrInvalidMetadata, sessions.ErrInvalidLimit,
		sessions.ErrLifetimeExceeded, sessions.ErrMissingToken, sessions.ErrMissingAgentID,
		&sessions.StoreError{Op: "get", Err: context.Canceled}, errors.New("boom"),
	} {
		info := sessions.HTTPError(err)
		got := explain(err)
		var usage usageError
		isUsage := errors.As(got, &usage)
		rejected := strings.HasPrefix(got.Error(), "token rejected")
		switch {
		case info.Status == 400 && !isUsage:
			t.Errorf("%v (%s): %q is not a usage error", err, info.Code, got)
		case info.Status != 400 && isUsage:
			t.Errorf("%v (%s): %q is a usage error", err, info.Code, got)
		case (info.Status == 401 || info.Status == 403) != rejected:
			t.Errorf("%v (%d %s): %q", err, info.Status, info.Code, got)
		case (info.Code == sessions.CodeStoreUnavailable) != strings.Contains(got.Error(), "store failed"):
			t.Errorf("%v (%s): %q", err, info.Code, got)
		}
	}
}
