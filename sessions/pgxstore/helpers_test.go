package pgxstore_test

import (
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

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
