package pgxstore_test

import (
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/sessionstest"
)

// The contract suite's helpers, under the short names these tests use.
type fakeClock = sessionstest.Clock

var (
	newClock   = sessionstest.NewClock
	mustIssue  = sessionstest.MustIssue
	wantDenied = sessionstest.WantDenied
	seqIDs     = sessionstest.SeqIDs
	digest     = sessionstest.Digest
	seed       = sessionstest.Seed
)

const (
	agent  = "did:agentmesh:planner"
	other  = "did:agentmesh:executor"
	secret = "contract-secret-0123456789abcdef"
)

type testEnv struct {
	store sessions.Store
	clock *fakeClock
	mgr   *sessions.Manager
}

// newEnv is a manager on store with a fake clock, a one-minute TTL, the
// given limit and session IDs s-1, s-2, ...
func newEnv(t *testing.T, store sessions.Store, limit int) *testEnv {
	t.Helper()
	clock := newClock(1_700_000_000)
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte(secret), TTL: time.Minute, Limit: limit, Clock: clock.Now, NewID: seqIDs("s"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{store: store, clock: clock, mgr: m}
}

func newManager(t *testing.T, store sessions.Store, clock *fakeClock, mutate func(*sessions.Config)) *sessions.Manager {
	t.Helper()
	cfg := sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 3, Clock: clock.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := sessions.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
