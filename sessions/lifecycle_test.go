package sessions_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// A store without the optional capabilities makes the manager say so.
func TestLifecycleUnsupported(t *testing.T) {
	t.Parallel()
	m := newManager(t, plainStore{sessions.NewMemoryStore()}, newClock(1_700_000_000), nil)
	ctx := context.Background()
	_, e1 := m.List(ctx, agent)
	_, e2 := m.RevokeAgent(ctx, agent)
	_, e3 := m.Refresh(ctx, "x.y", agent)
	e4 := m.SetAgentLimit(ctx, agent, 2)
	for i, err := range []error{e1, e2, e3, e4} {
		if !errors.Is(err, errors.ErrUnsupported) || !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("call %d: %v, want ErrUnsupported and ErrInvalidConfig", i+1, err)
		}
	}
}

func TestConfigLifecycleRejected(t *testing.T) {
	t.Parallel()
	base := sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 1}
	for name, mutate := range map[string]func(*sessions.Config){
		"lifetime below ttl": func(c *sessions.Config) { c.MaxLifetime = time.Minute },
		"unknown policy":     func(c *sessions.Config) { c.Policy = 7 },
		"empty previous":     func(c *sessions.Config) { c.PreviousSecrets = [][]byte{nil} },
	} {
		cfg := base
		mutate(&cfg)
		if _, err := sessions.New(sessions.NewMemoryStore(), cfg); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"reject", "evict-oldest"} {
		p, err := sessions.ParseLimitPolicy(name)
		if err != nil || p.String() != name {
			t.Errorf("ParseLimitPolicy(%q) = %v, %v", name, p, err)
		}
	}
	if _, err := sessions.ParseLimitPolicy("oldest"); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Errorf("unknown policy name: %v", err)
	}
}

// Evict-oldest across four instances: 64 concurrent issues for one agent
// with limit 5 all succeed, exactly 5 sessions remain, and every session is
// either live or was reported evicted by exactly one issue.
