package sessions_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

// fakeClock is a settable clock shared by the managers of one test.
type fakeClock struct{ unix atomic.Int64 }

func newClock(unix int64) *fakeClock {
	c := &fakeClock{}
	c.unix.Store(unix)
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(c.unix.Load(), 0) }
func (c *fakeClock) Advance(d time.Duration) { c.unix.Add(int64(d / time.Second)) }

// seqIDs returns an ID generator yielding prefix-1, prefix-2, ...
func seqIDs(prefix string) func() (string, error) {
	var n atomic.Int64
	return func() (string, error) { return fmt.Sprintf("%s-%d", prefix, n.Add(1)), nil }
}

// countingStore counts calls, to show which checks need no store.
type countingStore struct {
	sessions.Store
	calls atomic.Int64
}

func (c *countingStore) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	c.calls.Add(1)
	return c.Store.Get(ctx, id)
}
func (c *countingStore) Delete(ctx context.Context, id string) (bool, error) {
	c.calls.Add(1)
	return c.Store.Delete(ctx, id)
}
func (c *countingStore) DeleteExpired(ctx context.Context, id, digest string, now time.Time) error {
	c.calls.Add(1)
	return c.Store.DeleteExpired(ctx, id, digest, now)
}
func (c *countingStore) Insert(ctx context.Context, s sessions.Session, req sessions.InsertRequest) (sessions.InsertResult, error) {
	c.calls.Add(1)
	return c.Store.Insert(ctx, s, req)
}

const (
	agent  = "did:agentmesh:planner"
	other  = "did:agentmesh:executor"
	secret = "contract-secret-0123456789abcdef"
)

func digest(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

type contractEnv struct {
	store sessions.Store
	clock *fakeClock
	mgr   *sessions.Manager
}

func newEnv(t *testing.T, store sessions.Store, limit int) *contractEnv {
	t.Helper()
	clock := newClock(1_700_000_000)
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte(secret), TTL: time.Minute, Limit: limit, Clock: clock.Now, NewID: seqIDs("s"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &contractEnv{store: store, clock: clock, mgr: m}
}

func mustIssue(t testing.TB, m *sessions.Manager, agentID string, opts ...sessions.IssueOption) sessions.Issued {
	t.Helper()
	iss, err := m.Issue(context.Background(), agentID, opts...)
	if err != nil {
		t.Fatalf("issue for %s: %v", agentID, err)
	}
	return iss
}

func wantDenied(t *testing.T, err error, reason sessions.DenyReason) {
	t.Helper()
	var ade *sessions.AccessDeniedError
	if !errors.As(err, &ade) || !errors.Is(err, sessions.ErrAccessDenied) || ade.Reason != reason {
		t.Fatalf("got %v, want access denied (%s)", err, reason)
	}
}

// runContract checks the behaviour every Store must have, through a Manager.
func runContract(t *testing.T, newStore func(t *testing.T) sessions.Store) {
	ctx := context.Background()

	t.Run("IssueAuthenticate", func(t *testing.T) {
		e := newEnv(t, newStore(t), 2)
		iss := mustIssue(t, e.mgr, agent)
		if iss.Session.AgentID != agent || iss.Session.ID != "s-1" || iss.Session.TokenDigest != digest(iss.Token) {
			t.Fatalf("issued session %+v", iss.Session)
		}
		if got := iss.Session.ExpiresAt.Sub(iss.Session.IssuedAt); got != time.Minute {
			t.Fatalf("lifetime %v, want 1m", got)
		}
		s, err := e.mgr.Authenticate(ctx, iss.Token, agent)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(s, iss.Session) {
			t.Fatalf("authenticated %+v, issued %+v", s, iss.Session)
		}
		stored, found, err := e.store.Get(ctx, iss.Session.ID)
		if err != nil || !found || !reflect.DeepEqual(stored, iss.Session) {
			t.Fatalf("store has %+v %v %v", stored, found, err)
		}
	})

	t.Run("Limit", func(t *testing.T) {
		e := newEnv(t, newStore(t), 3)
		for range 3 {
			mustIssue(t, e.mgr, agent)
		}
		_, err := e.mgr.Issue(ctx, agent)
		var le *sessions.LimitError
		if !errors.As(err, &le) || !errors.Is(err, sessions.ErrLimitExceeded) || le.AgentID != agent || le.Limit != 3 {
			t.Fatalf("4th issue: %v, want limit error for %s/3", err, agent)
		}
		// The limit is per agent.
		mustIssue(t, e.mgr, other)
		// The refused session was not stored.
		if _, found, _ := e.store.Get(ctx, "s-4"); found {
			t.Fatal("refused session s-4 is in the store")
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		e := newEnv(t, newStore(t), 1)
		iss := mustIssue(t, e.mgr, agent)
		e.clock.Advance(59 * time.Second)
		if _, err := e.mgr.Authenticate(ctx, iss.Token, agent); err != nil {
			t.Fatalf("1s before expiry: %v", err)
		}
		e.clock.Advance(time.Second) // exp <= now: expired, as in the reference
		if _, err := e.mgr.Authenticate(ctx, iss.Token, agent); !errors.Is(err, sessions.ErrSessionExpired) {
			t.Fatalf("at expiry: %v, want ErrSessionExpired", err)
		}
		if _, found, _ := e.store.Get(ctx, iss.Session.ID); found {
			t.Fatal("expired session was not deleted on sight")
		}
	})

	t.Run("ExpiredFreesLimit", func(t *testing.T) {
		e := newEnv(t, newStore(t), 1)
		first := mustIssue(t, e.mgr, agent)
		stale := mustIssue(t, e.mgr, other)
		if _, err := e.mgr.Issue(ctx, agent); !errors.Is(err, sessions.ErrLimitExceeded) {
			t.Fatalf("second issue: %v", err)
		}
		e.clock.Advance(time.Minute)
		second := mustIssue(t, e.mgr, agent) // prunes first
		if _, found, _ := e.store.Get(ctx, first.Session.ID); found {
			t.Fatal("agent's expired session not pruned by issue")
		}
		// Only the issuing agent's rows are pruned.
		if _, found, _ := e.store.Get(ctx, stale.Session.ID); !found {
			t.Fatal("another agent's expired session was pruned by issue")
		}
		if _, err := e.mgr.Authenticate(ctx, second.Token, agent); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Revoke", func(t *testing.T) {
		e := newEnv(t, newStore(t), 1)
		iss := mustIssue(t, e.mgr, agent)
		if revoked, err := e.mgr.Revoke(ctx, iss.Session.ID); err != nil || !revoked {
			t.Fatalf("revoke: revoked=%v, %v", revoked, err)
		}
		_, err := e.mgr.Authenticate(ctx, iss.Token, agent)
		wantDenied(t, err, sessions.ReasonUnknownSession)
		if revoked, err := e.mgr.Revoke(ctx, iss.Session.ID); err != nil || revoked {
			t.Fatalf("second revoke: revoked=%v, %v; want false, nil", revoked, err)
		}
		// Revoking freed the agent's slot.
		mustIssue(t, e.mgr, agent)
		if _, err := e.mgr.Revoke(ctx, ""); !errors.Is(err, sessions.ErrInvalidSessionID) {
			t.Fatalf("revoke empty id: %v", err)
		}
	})

	t.Run("AgentMismatch", func(t *testing.T) {
		cs := &countingStore{Store: newStore(t)}
		e := newEnv(t, cs, 1)
		iss := mustIssue(t, e.mgr, agent)
		before := cs.calls.Load()
		_, err := e.mgr.Authenticate(ctx, iss.Token, other)
		wantDenied(t, err, sessions.ReasonAgentMismatch)
		if cs.calls.Load() != before {
			t.Fatal("agent mismatch reached the store")
		}
	})

	// The store holds a row for the token's session ID whose agent or
	// expiry differ from what the (validly signed) token says.
	t.Run("MetadataMismatch", func(t *testing.T) {
		e := newEnv(t, newStore(t), 5)
		iss := mustIssue(t, e.mgr, agent)
		for name, mutate := range map[string]func(*sessions.Session){
			"expiry": func(s *sessions.Session) { s.ExpiresAt = s.ExpiresAt.Add(time.Hour) },
			"agent":  func(s *sessions.Session) { s.AgentID = other },
		} {
			replace(t, e.store, iss.Session, mutate)
			_, err := e.mgr.Authenticate(ctx, iss.Token, agent)
			if err == nil {
				t.Fatalf("%s mismatch accepted", name)
			}
			wantDenied(t, err, sessions.ReasonMetadataMismatch)
		}
	})

	t.Run("DigestMismatch", func(t *testing.T) {
		e := newEnv(t, newStore(t), 5)
		iss := mustIssue(t, e.mgr, agent)
		replace(t, e.store, iss.Session, func(s *sessions.Session) { s.TokenDigest = digest("another token") })
		_, err := e.mgr.Authenticate(ctx, iss.Token, agent)
		wantDenied(t, err, sessions.ReasonDigestMismatch)
	})

	t.Run("ForgedTokenNeverReachesStore", func(t *testing.T) {
		cs := &countingStore{Store: newStore(t)}
		e := newEnv(t, cs, 1)
		iss := mustIssue(t, e.mgr, agent)
		forger, _ := sessions.New(sessions.NewMemoryStore(), sessions.Config{
			Secret: []byte("not the secret"), TTL: time.Minute, Limit: 1, Clock: e.clock.Now,
			NewID: func() (string, error) { return iss.Session.ID, nil },
		})
		forged := mustIssue(t, forger, agent)
		before := cs.calls.Load()
		if _, err := e.mgr.Authenticate(ctx, forged.Token, agent); !errors.Is(err, sessions.ErrInvalidSignature) {
			t.Fatalf("forged token: %v", err)
		}
		if cs.calls.Load() != before {
			t.Fatal("forged token reached the store")
		}
	})

	t.Run("InvalidAgentIDs", func(t *testing.T) {
		cs := &countingStore{Store: newStore(t)}
		e := newEnv(t, cs, 1)
		iss := mustIssue(t, e.mgr, agent)
		before := cs.calls.Load()
		for name, id := range map[string]string{
			"empty": "", "too long": strings.Repeat("a", sessions.MaxAgentIDLength+1),
			"invalid utf-8": "did:\xff", "NUL": "did:a\x00b", "newline": "did:a\nb",
		} {
			if _, err := e.mgr.Issue(ctx, id); !errors.Is(err, sessions.ErrInvalidAgentID) {
				t.Errorf("issue %s: %v", name, err)
			}
			if _, err := e.mgr.Authenticate(ctx, iss.Token, id); !errors.Is(err, sessions.ErrInvalidAgentID) {
				t.Errorf("authenticate %s: %v", name, err)
			}
		}
		if cs.calls.Load() != before {
			t.Fatal("invalid agent ids reached the store")
		}
		maxID := fmt.Sprintf("%0*d", sessions.MaxAgentIDLength, 7)
		mustIssue(t, e.mgr, maxID) // the longest valid ID round-trips
	})

	t.Run("CanceledContext", func(t *testing.T) {
		e := newEnv(t, newStore(t), 1)
		iss := mustIssue(t, e.mgr, agent)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := e.mgr.Issue(cctx, other); !errors.Is(err, sessions.ErrStore) || !errors.Is(err, context.Canceled) {
			t.Fatalf("issue: %v, want store error wrapping context.Canceled", err)
		}
		if _, err := e.mgr.Authenticate(cctx, iss.Token, agent); !errors.Is(err, sessions.ErrStore) || !errors.Is(err, context.Canceled) {
			t.Fatalf("authenticate: %v, want store error wrapping context.Canceled (fail closed)", err)
		}
		if _, found, _ := e.store.Get(ctx, "s-2"); found {
			t.Fatal("issue with a canceled context stored a session")
		}
	})

	t.Run("ConcurrentIssueOneStore", func(t *testing.T) {
		e := newEnv(t, newStore(t), 4)
		var ok, limited atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				_, err := e.mgr.Issue(ctx, agent)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, sessions.ErrLimitExceeded):
					limited.Add(1)
				default:
					t.Errorf("unexpected error: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 4 || limited.Load() != 28 {
			t.Fatalf("%d issued, %d limited; want 4 and 28", ok.Load(), limited.Load())
		}
	})
}

// replace swaps the stored session s for a mutated copy.
func replace(t *testing.T, store sessions.Store, s sessions.Session, mutate func(*sessions.Session)) {
	t.Helper()
	ctx := context.Background()
	if found, err := store.Delete(ctx, s.ID); err != nil || !found {
		t.Fatalf("delete: found=%v, %v", found, err)
	}
	mutate(&s)
	if res, err := store.Insert(ctx, s, sessions.InsertRequest{Limit: 100, Now: s.IssuedAt}); err != nil || !res.Inserted {
		t.Fatalf("re-insert: %+v %v", res, err)
	}
}

func TestMemoryStoreContract(t *testing.T) {
	t.Parallel()
	runContract(t, func(*testing.T) sessions.Store { return sessions.NewMemoryStore() })
}

func TestPostgresStoreContract(t *testing.T) {
	t.Parallel()
	runContract(t, newPostgresStore)
}

// newPostgresStore is a PostgresStore with default settings on a fresh,
// migrated schema of its own.
func newPostgresStore(t *testing.T) sessions.Store {
	t.Helper()
	pool := testdb.New(t).Pool(t)
	store, err := sessions.NewPostgresStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Whatever the test did, every agent's count row must match its rows.
	t.Cleanup(func() { checkCounts(t, pool) })
	return store
}

// A store refuses a second session with an existing ID rather than
// overwrite it (the reference's HashMap would silently replace it).
func TestDuplicateIDRefused(t *testing.T) {
	t.Parallel()
	stores := map[string]sessions.Store{"memory": sessions.NewMemoryStore()}
	pg, err := sessions.NewPostgresStore(testdb.New(t).Pool(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	stores["postgres"] = pg
	for name, store := range stores {
		m, err := sessions.New(store, sessions.Config{
			Secret: []byte(secret), TTL: time.Minute, Limit: 5,
			NewID: func() (string, error) { return "same", nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		first := mustIssue(t, m, agent)
		if _, err := m.Issue(context.Background(), other); !errors.Is(err, sessions.ErrStore) {
			t.Errorf("%s: second issue with the same id: %v, want ErrStore", name, err)
		}
		if s, _, _ := store.Get(context.Background(), "same"); !reflect.DeepEqual(s, first.Session) {
			t.Errorf("%s: first session was overwritten: %+v", name, s)
		}
	}
}
