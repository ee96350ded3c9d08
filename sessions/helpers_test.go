package sessions_test

import (
	"testing"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/sessionstest"
)

// The contract suite's fixtures and helpers, under the short names these
// tests use.
type fakeClock = sessionstest.Clock

var (
	newClock   = sessionstest.NewClock
	newEnv     = sessionstest.NewEnv
	newManager = sessionstest.NewManager
	mustIssue  = sessionstest.MustIssue
	wantDenied = sessionstest.WantDenied
	seqIDs     = sessionstest.SeqIDs
	digest     = sessionstest.Digest
	seed       = sessionstest.Seed
)

const (
	agent  = sessionstest.Agent
	other  = sessionstest.OtherAgent
	secret = sessionstest.Secret
)

// plainStore hides every optional capability of the store it wraps.
type plainStore struct{ sessions.Store }

func TestMemoryStoreContract(t *testing.T) {
	t.Parallel()
	sessionstest.Run(t, func(*testing.T) sessions.Store { return sessions.NewMemoryStore() })
}
