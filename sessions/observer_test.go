package sessions_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

type obsKey struct{}

// recorder is an Observer that records every operation and its outcome,
// and puts the op's name in the context it returns.
type recorder struct {
	wantAgentID bool

	mu   sync.Mutex
	ops  []sessions.Op
	errs []error
	ends []int // how often each op's end was called
}

func (r *recorder) ObserveAgentID() bool { return r.wantAgentID }

func (r *recorder) Start(ctx context.Context, op sessions.Op) (context.Context, func(error)) {
	r.mu.Lock()
	i := len(r.ops)
	r.ops = append(r.ops, op)
	r.errs = append(r.errs, nil)
	r.ends = append(r.ends, 0)
	r.mu.Unlock()
	return context.WithValue(ctx, obsKey{}, op.Name), func(err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.errs[i] = err
		r.ends[i]++
	}
}

// ctxStore records, for each store call, the op name the observer put in
// its context.
type ctxStore struct {
	*sessions.MemoryStore
	mu   sync.Mutex
	seen []string
}

func (s *ctxStore) saw(ctx context.Context) {
	name, _ := ctx.Value(obsKey{}).(string)
	s.mu.Lock()
	s.seen = append(s.seen, name)
	s.mu.Unlock()
}

func (s *ctxStore) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	s.saw(ctx)
	return s.MemoryStore.Get(ctx, id)
}

func (s *ctxStore) Insert(ctx context.Context, sess sessions.Session, req sessions.InsertRequest) (sessions.InsertResult, error) {
	s.saw(ctx)
	return s.MemoryStore.Insert(ctx, sess, req)
}

func TestObserverSeesEveryOperation(t *testing.T) {
	for _, want := range []bool{false, true} {
		t.Run(map[bool]string{false: "no agent id", true: "agent id"}[want], func(t *testing.T) {
			ctx := context.Background()
			rec := &recorder{wantAgentID: want}
			store := &ctxStore{MemoryStore: sessions.NewMemoryStore()}
			clock := newClock(1_700_000_000)
			m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 1,
				MaxLifetime: time.Hour, Clock: clock.Now, Observer: rec})
			if err != nil {
				t.Fatal(err)
			}
			iss, err := m.Issue(ctx, agent, sessions.WithMetadata(map[string]string{"k": "v"}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Issue(ctx, agent); !errors.Is(err, sessions.ErrLimitExceeded) {
				t.Fatalf("second issue: %v, want limit exceeded", err)
			}
			if _, err := m.Authenticate(ctx, iss.Token, agent); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Authenticate(ctx, iss.Token, "bad\x00agent"); !errors.Is(err, sessions.ErrInvalidAgentID) {
				t.Fatalf("authenticate with a bad agent id: %v", err)
			}
			if _, err := m.Verify(ctx, iss.Token); err != nil {
				t.Fatal(err)
			}
			clock.Advance(2 * time.Second)
			if _, err := m.Refresh(ctx, iss.Token, agent); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Revoke(ctx, iss.Session.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := m.RevokeAgent(ctx, agent); err != nil {
				t.Fatal(err)
			}

			h, err := sessions.NewHandles(m, sessions.HandleKind{Name: "basket", TTL: time.Minute, Limit: 2})
			if err != nil {
				t.Fatal(err)
			}
			hd, err := h.Create(ctx, agent, "basket")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.Resolve(ctx, agent, "basket", hd.Handle); err != nil {
				t.Fatal(err)
			}
			if _, err := h.List(ctx, agent, "basket"); err != nil {
				t.Fatal(err)
			}
			clock.Advance(2 * time.Second)
			if _, err := h.Refresh(ctx, agent, "basket", hd.Handle); err != nil {
				t.Fatal(err)
			}
			if _, err := h.Destroy(ctx, agent, "basket", hd.Handle); err != nil {
				t.Fatal(err)
			}
			if _, err := h.Resolve(ctx, agent, "nokind", hd.Handle); !errors.Is(err, sessions.ErrInvalidConfig) {
				t.Fatalf("resolve of an unknown kind: %v", err)
			}
			again, err := m.Issue(ctx, agent)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.RevokeOtherSessions(ctx, again.Token, agent); err != nil {
				t.Fatal(err)
			}
			kept, err := h.Create(ctx, agent, "basket")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.DestroyOthers(ctx, agent, "basket", kept.Handle); err != nil {
				t.Fatal(err)
			}

			agentID := func(id string) string {
				if want {
					return id
				}
				return ""
			}
			wantOps := []sessions.Op{
				{Name: sessions.OpIssue, Kind: sessions.KindSession, AgentID: agentID(agent)},
				{Name: sessions.OpIssue, Kind: sessions.KindSession, AgentID: agentID(agent)},
				{Name: sessions.OpAuthenticate, Kind: sessions.KindSession, AgentID: agentID(agent)},
				{Name: sessions.OpAuthenticate, Kind: sessions.KindSession}, // invalid agent id: never passed on
				{Name: sessions.OpVerify, Kind: sessions.KindSession},
				{Name: sessions.OpRefresh, Kind: sessions.KindSession, AgentID: agentID(agent)},
				{Name: sessions.OpRevoke, Kind: sessions.KindSession},
				{Name: sessions.OpRevokeAgent, Kind: sessions.KindSession, AgentID: agentID(agent)},
				{Name: sessions.OpHandleCreate, Kind: "basket", AgentID: agentID(agent)},
				{Name: sessions.OpHandleResolve, Kind: "basket", AgentID: agentID(agent)},
				{Name: sessions.OpHandleList, Kind: "basket", AgentID: agentID(agent)},
				{Name: sessions.OpHandleRefresh, Kind: "basket", AgentID: agentID(agent)},
				{Name: sessions.OpHandleDestroy, Kind: "basket", AgentID: agentID(agent)},
				{Name: sessions.OpHandleResolve, Kind: "", AgentID: agentID(agent)}, // a kind not configured is not passed on
				{Name: sessions.OpIssue, Kind: sessions.KindSession, AgentID: agentID(agent)},
				{Name: sessions.OpRevokeOthers, Kind: sessions.KindSession, AgentID: agentID(agent)},
				{Name: sessions.OpHandleCreate, Kind: "basket", AgentID: agentID(agent)},
				{Name: sessions.OpHandleDestroyOthers, Kind: "basket", AgentID: agentID(agent)},
			}
			if !slices.Equal(rec.ops, wantOps) {
				t.Fatalf("ops:\n got %+v\nwant %+v", rec.ops, wantOps)
			}
			for i, n := range rec.ends {
				if n != 1 {
					t.Errorf("op %d (%s): end called %d times, want 1", i, rec.ops[i].Name, n)
				}
			}
			for i, wantErr := range map[int]error{1: sessions.ErrLimitExceeded, 3: sessions.ErrInvalidAgentID, 13: sessions.ErrInvalidConfig} {
				if !errors.Is(rec.errs[i], wantErr) {
					t.Errorf("op %d (%s): end got %v, want %v", i, rec.ops[i].Name, rec.errs[i], wantErr)
				}
			}
			for i, err := range rec.errs {
				if i != 1 && i != 3 && i != 13 && err != nil {
					t.Errorf("op %d (%s): end got %v, want nil", i, rec.ops[i].Name, err)
				}
			}
			// Store calls run under the context Start returned.
			for _, name := range store.seen {
				if name == "" {
					t.Fatalf("a store call ran outside the observer's context: %q", store.seen)
				}
			}
			if !slices.Contains(store.seen, sessions.OpAuthenticate) || !slices.Contains(store.seen, sessions.OpHandleCreate) {
				t.Fatalf("store calls saw %q", store.seen)
			}
		})
	}
}

// An observer without ObserveAgentID never gets agent IDs, and nil
// results from Start are tolerated.
type plainObserver struct{ ops []sessions.Op }

func (p *plainObserver) Start(ctx context.Context, op sessions.Op) (context.Context, func(error)) {
	p.ops = append(p.ops, op)
	return nil, nil
}

func TestObserverWithoutAgentIDOptIn(t *testing.T) {
	obs := &plainObserver{}
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 1, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	iss := mustIssue(t, m, agent)
	if _, err := m.Authenticate(context.Background(), iss.Token, agent); err != nil {
		t.Fatal(err)
	}
	for _, op := range obs.ops {
		if op.AgentID != "" || strings.Contains(op.Name, agent) {
			t.Fatalf("op %+v carries the agent id", op)
		}
	}
	if len(obs.ops) != 2 {
		t.Fatalf("ops = %+v", obs.ops)
	}
}

// With no observer, observing costs nothing: Verify of a malformed token
// (refused with a sentinel error) allocates nothing.
func TestNoObserverNoAllocations(t *testing.T) {
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { _, _ = m.Verify(ctx, "no-dot") }); n != 0 {
		t.Fatalf("Verify of a malformed token allocates %v times without an observer, want 0", n)
	}
}
