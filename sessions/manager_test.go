package sessions_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

func epoch() time.Time { return time.Unix(0, 0) }

func fromValues(ids ...string) func() (string, error) {
	return func() (string, error) {
		if len(ids) == 0 {
			return "", errors.New("no more ids")
		}
		id := ids[0]
		ids = ids[1:]
		return id, nil
	}
}

// Ported from the reference's issues_and_authenticates_sessions.
func TestReferenceIssuesAndAuthenticatesSessions(t *testing.T) {
	auth, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("session-secret"), Clock: epoch, NewID: fromValues("session-1"), TTL: 60 * time.Second, Limit: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	issued, err := auth.Issue(context.Background(), "did:agentmesh:test")
	if err != nil {
		t.Fatal(err)
	}
	session, err := auth.Authenticate(context.Background(), issued.Token, "did:agentmesh:test")
	if err != nil {
		t.Fatal(err)
	}
	if session.ID != "session-1" {
		t.Fatalf("session id %q", session.ID)
	}
}

// Ported from the reference's enforces_concurrent_limit.
func TestReferenceEnforcesConcurrentLimit(t *testing.T) {
	auth, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("session-secret"), Clock: epoch, NewID: fromValues("s1", "s2"), TTL: 60 * time.Second, Limit: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Issue(context.Background(), "did:agentmesh:test"); err != nil {
		t.Fatal(err)
	}
	var le *sessions.LimitError
	if _, err := auth.Issue(context.Background(), "did:agentmesh:test"); !errors.As(err, &le) {
		t.Fatalf("got %v, want *LimitError", err)
	}
}

func TestConfigRejected(t *testing.T) {
	ok := sessions.Config{Secret: []byte("s"), TTL: time.Minute, Limit: 1}
	cases := map[string]func(*sessions.Config){
		"empty secret": func(c *sessions.Config) { c.Secret = nil },
		"zero ttl":     func(c *sessions.Config) { c.TTL = 0 },
		"negative ttl": func(c *sessions.Config) { c.TTL = -time.Second },
		"sub-second":   func(c *sessions.Config) { c.TTL = 999 * time.Millisecond },
		"zero limit":   func(c *sessions.Config) { c.Limit = 0 },
		"negative lim": func(c *sessions.Config) { c.Limit = -1 },
	}
	for name, mutate := range cases {
		c := ok
		mutate(&c)
		_, err := sessions.New(sessions.NewMemoryStore(), c)
		var ce *sessions.ConfigError
		if !errors.Is(err, sessions.ErrInvalidConfig) || !errors.As(err, &ce) {
			t.Errorf("%s: got %v, want a *ConfigError", name, err)
		}
	}
	if _, err := sessions.New(nil, ok); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Errorf("nil store: %v", err)
	}
	if _, err := sessions.New(sessions.NewMemoryStore(), ok); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

// A clock so late that now+TTL passes the latest storable expiry is the
// reference's "ttl overflow" config error, caught before the store.
func TestTTLOverflowAtIssue(t *testing.T) {
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("s"), TTL: time.Hour, Limit: 1,
		Clock: func() time.Time { return time.Date(9999, 12, 31, 23, 30, 0, 0, time.UTC) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Issue(context.Background(), agent); !errors.Is(err, sessions.ErrInvalidConfig) {
		t.Fatalf("got %v, want ErrInvalidConfig", err)
	}
}

func TestClockBeforeEpoch(t *testing.T) {
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("s"), TTL: time.Hour, Limit: 1, Clock: func() time.Time { return time.Unix(-5, 0) },
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Issue(context.Background(), agent)
	wantDenied(t, err, sessions.ReasonClockBeforeEpoch)
}

func TestBadIDGenerator(t *testing.T) {
	for name, gen := range map[string]func() (string, error){
		"error":    func() (string, error) { return "", errors.New("entropy gone") },
		"empty":    func() (string, error) { return "", nil },
		"too long": func() (string, error) { return string(make([]byte, sessions.MaxSessionIDLength+1)), nil },
		"nul":      func() (string, error) { return "a\x00b", nil },
	} {
		m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: []byte("s"), TTL: time.Hour, Limit: 1, NewID: gen})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Issue(context.Background(), agent); !errors.Is(err, sessions.ErrInvalidConfig) {
			t.Errorf("%s: got %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestDefaultIDs(t *testing.T) {
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: []byte("s"), TTL: time.Hour, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 50 {
		iss := mustIssue(t, m, agent)
		if len(iss.Session.ID) != 32 || seen[iss.Session.ID] {
			t.Fatalf("id %q: want 32 hex digits, unique", iss.Session.ID)
		}
		seen[iss.Session.ID] = true
	}
}

// The manager keeps its own copy of the secret.
func TestSecretCopied(t *testing.T) {
	secret := []byte("session-secret")
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: secret, TTL: time.Hour, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	iss := mustIssue(t, m, agent)
	secret[0] = 'X'
	if _, err := m.Authenticate(context.Background(), iss.Token, agent); err != nil {
		t.Fatalf("after caller changed its slice: %v", err)
	}
}
