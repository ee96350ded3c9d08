package mcpsessions_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/mcpsessions"
	"github.com/agentsessions/agentsessions/sessions"
)

// recorder is an Options.OnError that keeps what it is told.
type recorder struct {
	mu   sync.Mutex
	ops  []mcpsessions.Op
	errs []error
}

func (r *recorder) onError(_ context.Context, op mcpsessions.Op, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	r.errs = append(r.errs, err)
}

func (r *recorder) calls() ([]mcpsessions.Op, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]mcpsessions.Op(nil), r.ops...), append([]error(nil), r.errs...)
}

// expectOnly fails unless OnError was called exactly once, for op, with an
// error matching target.
func (r *recorder) expectOnly(t *testing.T, op mcpsessions.Op, target error) {
	t.Helper()
	ops, errs := r.calls()
	if len(ops) != 1 || ops[0] != op || !errors.Is(errs[0], target) {
		t.Fatalf("OnError calls = %v %v, want one %s call with %v", ops, errs, op, target)
	}
}

func (r *recorder) expectNone(t *testing.T) {
	t.Helper()
	if ops, errs := r.calls(); len(ops) != 0 {
		t.Fatalf("OnError called: %v %v", ops, errs)
	}
}

func newAdapter(t *testing.T, m *sessions.Manager, opts mcpsessions.Options) (*mcpsessions.Adapter, *recorder) {
	t.Helper()
	rec := &recorder{}
	if opts.OnError == nil {
		opts.OnError = rec.onError
	}
	a, err := mcpsessions.New(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a, rec
}

func TestNewValidatesOptions(t *testing.T) {
	m, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: testSecret, TTL: time.Hour, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		m    *sessions.Manager
		opts mcpsessions.Options
	}{
		"nil manager":      {nil, mcpsessions.Options{AgentID: "a"}},
		"no agent":         {m, mcpsessions.Options{}},
		"bad agent":        {m, mcpsessions.Options{AgentID: "a\x00b"}},
		"negative timeout": {m, mcpsessions.Options{AgentID: "a", Timeout: -time.Second}},
	} {
		if _, err := mcpsessions.New(tc.m, tc.opts); !errors.Is(err, mcpsessions.ErrInvalidOptions) {
			t.Errorf("%s: New: %v, want ErrInvalidOptions", name, err)
		}
	}
	if _, err := mcpsessions.New(m, mcpsessions.Options{AgentID: "a\x00b"}); !errors.Is(err, sessions.ErrInvalidAgentID) {
		t.Errorf("bad agent: %v, want ErrInvalidAgentID too", err)
	}
	if _, err := mcpsessions.New(m, mcpsessions.Options{AgentIDFromRequest: mcpsessions.HeaderAgentID("X-Agent-ID")}); err != nil {
		t.Errorf("agent from request only: %v", err)
	}
}

func TestGenerateValidateTerminateAcrossInstances(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	i1, i2 := db.instance(t, sessions.Config{}), db.instance(t, sessions.Config{})
	a1, rec1 := newAdapter(t, i1.mgr, mcpsessions.Options{AgentID: "agent-1"})
	a2, rec2 := newAdapter(t, i2.mgr, mcpsessions.Options{AgentID: "agent-1"})
	ctx := context.Background()

	sid := a1.Generate()
	if sid == "" {
		t.Fatalf("Generate returned no session id: %v", rec1.errs)
	}
	s, err := i2.mgr.Verify(ctx, sid)
	if err != nil {
		t.Fatalf("the MCP session id is not a token the other instance accepts: %v", err)
	}
	if s.AgentID != "agent-1" {
		t.Fatalf("session agent = %q", s.AgentID)
	}
	if n := db.rows(t); n != 1 {
		t.Fatalf("%d rows after Generate, want 1", n)
	}

	for i, a := range []*mcpsessions.Adapter{a1, a2} {
		if term, err := a.Validate(sid); term || err != nil {
			t.Fatalf("instance %d: Validate(live) = %v, %v", i+1, term, err)
		}
	}

	if notAllowed, err := a2.Terminate(sid); notAllowed || err != nil {
		t.Fatalf("Terminate = %v, %v", notAllowed, err)
	}
	if n := db.rows(t); n != 0 {
		t.Fatalf("%d rows after Terminate, want 0", n)
	}
	for i, a := range []*mcpsessions.Adapter{a1, a2} {
		if term, err := a.Validate(sid); !term || err != nil {
			t.Fatalf("instance %d: Validate(terminated) = %v, %v; want true, nil", i+1, term, err)
		}
	}
	// Terminating again (another instance, a retried DELETE) succeeds.
	if notAllowed, err := a1.Terminate(sid); notAllowed || err != nil {
		t.Fatalf("second Terminate = %v, %v", notAllowed, err)
	}
	rec1.expectNone(t)
	rec2.expectNone(t)
}

// tampered returns session IDs derived from a genuine one that no instance
// may accept.
func tampered(t *testing.T, sid string) map[string]string {
	t.Helper()
	body, sig, ok := strings.Cut(sid, ".")
	if !ok {
		t.Fatalf("session id %q is not a token", sid)
	}
	flip := func(s string, i int) string {
		c := byte('A')
		if s[i] == 'A' {
			c = 'B'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	other, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("another-secret-another-secret-!!"), TTL: time.Hour, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Issue(context.Background(), "agent-1")
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"payload byte flipped":   flip(body, len(body)/2) + "." + sig,
		"signature byte flipped": body + "." + flip(sig, len(sig)/2),
		"signature dropped":      body,
		"signature of another":   body + "." + strings.Split(foreign.Token, ".")[1],
		"other secret":           foreign.Token,
		"uuid":                   "mcp-session-5f3b1a4e-8a2b-4c1d-9e7f-0a1b2c3d4e5f",
		"oversized":              strings.Repeat("a", 64<<10) + "." + sig,
	}
}

func TestValidateRefusesForgedIDsWithoutStore(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1"})
	sid := a.Generate()
	if sid == "" {
		t.Fatal("Generate failed")
	}
	// With its pool closed, any store call fails with ErrStore: a forged ID
	// must be refused for what it is, before the store is asked.
	inst.pool.Close()
	for name, bad := range tampered(t, sid) {
		for op, call := range map[string]func(string) (bool, error){"Validate": a.Validate, "Terminate": a.Terminate} {
			flag, err := call(bad)
			if flag || err == nil {
				t.Errorf("%s(%s) = %v, %v; want an error", op, name, flag, err)
				continue
			}
			if errors.Is(err, sessions.ErrStore) {
				t.Errorf("%s(%s) reached the store: %v", op, name, err)
			}
			if !errors.Is(err, sessions.ErrInvalidSignature) && !errors.Is(err, sessions.ErrInvalidTokenFormat) {
				t.Errorf("%s(%s) = %v; want an invalid token error", op, name, err)
			}
		}
	}
	for _, call := range []func(string) (bool, error){a.Validate, a.Terminate} {
		if _, err := call(""); !errors.Is(err, mcpsessions.ErrNoSessionID) {
			t.Errorf("empty id: %v, want ErrNoSessionID", err)
		}
	}
	rec.expectNone(t) // client errors are not the server's failures
	if n := db.rows(t); n != 1 {
		t.Fatalf("%d rows, want the 1 genuine session", n)
	}
}

func TestStoreFailureIsAnErrorNotATermination(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1"})
	sid := a.Generate()
	if sid == "" {
		t.Fatal("Generate failed")
	}
	inst.pool.Close()

	term, err := a.Validate(sid)
	if term || !errors.Is(err, sessions.ErrStore) {
		t.Fatalf("Validate with the store down = %v, %v; want false and ErrStore", term, err)
	}
	rec.expectOnly(t, mcpsessions.OpValidate, sessions.ErrStore)

	rec2 := &recorder{}
	a2, _ := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1", OnError: rec2.onError})
	if _, err := a2.Terminate(sid); !errors.Is(err, sessions.ErrStore) {
		t.Fatalf("Terminate with the store down: %v, want ErrStore", err)
	}
	rec2.expectOnly(t, mcpsessions.OpTerminate, sessions.ErrStore)

	rec3 := &recorder{}
	a3, _ := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1", OnError: rec3.onError})
	if got := a3.Generate(); got != "" {
		t.Fatalf("Generate with the store down = %q, want \"\"", got)
	}
	rec3.expectOnly(t, mcpsessions.OpGenerate, sessions.ErrStore)

	if n := db.rows(t); n != 1 {
		t.Fatalf("%d rows, want 1: a failure must not delete the session", n)
	}
}

func TestGenerateAtLimitReturnsEmpty(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{Limit: 1})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1"})
	if a.Generate() == "" {
		t.Fatal("first Generate failed")
	}
	if got := a.Generate(); got != "" {
		t.Fatalf("Generate at the limit = %q, want \"\"", got)
	}
	rec.expectOnly(t, mcpsessions.OpGenerate, sessions.ErrLimitExceeded)
	var le *sessions.LimitError
	if _, errs := rec.calls(); !errors.As(errs[0], &le) || le.Limit != 1 || le.AgentID != "agent-1" {
		t.Fatalf("OnError got %v, want a *sessions.LimitError for agent-1, limit 1", errs[0])
	}
	if n := db.rows(t); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}

func TestExpiredAndSupersededSessionsAreTerminated(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	var now atomic.Int64
	now.Store(time.Now().Unix())
	inst := db.instance(t, sessions.Config{TTL: time.Minute, Clock: func() time.Time { return time.Unix(now.Load(), 0) }})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1"})

	sid := a.Generate()
	now.Add(10) // within the same second, Refresh returns the token unchanged
	refreshed, err := inst.mgr.Refresh(context.Background(), sid, "agent-1")
	if err != nil {
		t.Fatal(err)
	}
	if term, err := a.Validate(sid); !term || err != nil {
		t.Fatalf("Validate(token replaced by Refresh) = %v, %v; want terminated", term, err)
	}
	if term, err := a.Validate(refreshed.Token); term || err != nil {
		t.Fatalf("Validate(refreshed) = %v, %v", term, err)
	}
	// The stale token must not revoke the session that superseded it.
	if _, err := a.Terminate(sid); err != nil {
		t.Fatal(err)
	}
	if term, err := a.Validate(refreshed.Token); term || err != nil {
		t.Fatalf("stale Terminate revoked the refreshed session: %v, %v", term, err)
	}

	now.Add(61)
	if term, err := a.Validate(refreshed.Token); !term || err != nil {
		t.Fatalf("Validate(expired) = %v, %v; want terminated", term, err)
	}
	if n := db.rows(t); n != 0 {
		t.Fatalf("%d rows, want the expired session deleted", n)
	}
	rec.expectNone(t)
}

func TestTimeoutBoundsStoreCalls(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1", Timeout: time.Nanosecond})
	if got := a.Generate(); got != "" {
		t.Fatalf("Generate with a 1ns timeout = %q", got)
	}
	rec.expectOnly(t, mcpsessions.OpGenerate, context.DeadlineExceeded)
}

func request(method string, header ...string) *http.Request {
	r := httptest.NewRequest(method, "/mcp", nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	return r
}

func TestResolver(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{
		AgentID:            "default-agent",
		AgentIDFromRequest: mcpsessions.HeaderAgentID("X-Agent-ID"),
	})
	var _ server.SessionIdManagerResolver = a
	ctx := context.Background()

	// The agent comes from the header, else from Options.AgentID.
	sidB := a.ResolveSessionIdManager(request(http.MethodPost, "X-Agent-ID", "agent-b")).Generate()
	sidD := a.ResolveSessionIdManager(request(http.MethodPost)).Generate()
	for sid, want := range map[string]string{sidB: "agent-b", sidD: "default-agent"} {
		s, err := inst.mgr.Verify(ctx, sid)
		if err != nil || s.AgentID != want {
			t.Fatalf("session %v, %v; want agent %s", s.AgentID, err, want)
		}
	}

	// A request only accepts its agent's sessions: the header's, else
	// Options.AgentID's.
	asB := a.ResolveSessionIdManager(request(http.MethodPost, "X-Agent-ID", "agent-b"))
	asC := a.ResolveSessionIdManager(request(http.MethodPost, "X-Agent-ID", "agent-c"))
	asDefault := a.ResolveSessionIdManager(request(http.MethodPost))
	if term, err := asB.Validate(sidB); term || err != nil {
		t.Fatalf("own session: %v, %v", term, err)
	}
	if term, err := asDefault.Validate(sidD); term || err != nil {
		t.Fatalf("default agent's own session: %v, %v", term, err)
	}
	for name, c := range map[string]struct {
		m   server.SessionIdManager
		sid string
	}{
		"agent-c, agent-b's session":       {asC, sidB},
		"no header, agent-b's session":     {asDefault, sidB},
		"agent-b, default agent's session": {asB, sidD},
	} {
		if term, err := c.m.Validate(c.sid); term || !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("Validate(%s) = %v, %v; want ErrAccessDenied", name, term, err)
		}
		if _, err := c.m.Terminate(c.sid); !errors.Is(err, sessions.ErrAccessDenied) {
			t.Fatalf("Terminate(%s) = %v; want ErrAccessDenied", name, err)
		}
	}
	// A GET without a session ID gets an ID that names nothing.
	before := db.rows(t)
	unbound := a.ResolveSessionIdManager(request(http.MethodGet)).Generate()
	if unbound == "" || db.rows(t) != before {
		t.Fatalf("GET Generate = %q with %d rows (was %d); want an ID and no row", unbound, db.rows(t), before)
	}
	if _, err := asDefault.Validate(unbound); !errors.Is(err, sessions.ErrInvalidTokenFormat) {
		t.Fatal("an unbound ID validated")
	}

	// mcp-go's sweeper and Shutdown resolve with a nil request: Terminate
	// leaves the shared session alone.
	if _, err := a.ResolveSessionIdManager(nil).Terminate(sidB); err != nil {
		t.Fatal(err)
	}
	if term, err := asB.Validate(sidB); term || err != nil {
		t.Fatalf("nil-request Terminate revoked the session: %v, %v", term, err)
	}
	// A client's DELETE does revoke it.
	if _, err := asB.Terminate(sidB); err != nil {
		t.Fatal(err)
	}
	if term, err := asB.Validate(sidB); !term || err != nil {
		t.Fatalf("after DELETE: %v, %v", term, err)
	}
	if term, err := asDefault.Validate(sidD); term || err != nil {
		t.Fatalf("another agent's Terminate attempts revoked the session: %v, %v", term, err)
	}

	// Store calls run on the request's context.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	r := request(http.MethodPost).WithContext(cancelled)
	if term, err := a.ResolveSessionIdManager(r).Validate(sidD); term || !errors.Is(err, context.Canceled) {
		t.Fatalf("Validate on a cancelled request = %v, %v; want context.Canceled", term, err)
	}
	rec.expectOnly(t, mcpsessions.OpValidate, context.Canceled)
}

// A token the same store issued to another agent (by the agentsessions HTTP
// API, say) is not an MCP session of a fixed-agent adapter.
func TestFixedAgentRefusesOtherAgentsTokens(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "mcp-server"})
	alice, err := inst.mgr.Issue(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if term, err := a.Validate(alice.Token); term || !errors.Is(err, sessions.ErrAccessDenied) {
		t.Fatalf("Validate(alice's token) = %v, %v; want ErrAccessDenied", term, err)
	}
	if _, err := a.Terminate(alice.Token); !errors.Is(err, sessions.ErrAccessDenied) {
		t.Fatalf("Terminate(alice's token) = %v; want ErrAccessDenied", err)
	}
	if _, err := inst.mgr.Authenticate(context.Background(), alice.Token, "alice"); err != nil {
		t.Fatalf("alice's session after the adapter saw it: %v", err)
	}
	rec.expectNone(t)
}

// With AgentIDFromRequest alone, a session needs a request that names an
// agent; a request naming none is checked on its session ID alone.
func TestAgentFromRequestOnly(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentIDFromRequest: mcpsessions.HeaderAgentID("X-Agent-ID")})

	if got := a.Generate(); got != "" {
		t.Fatalf("Generate without a request = %q, want \"\"", got)
	}
	rec.expectOnly(t, mcpsessions.OpGenerate, sessions.ErrInvalidAgentID)
	if got := a.ResolveSessionIdManager(request(http.MethodPost)).Generate(); got != "" {
		t.Fatalf("Generate for a request without the header = %q, want \"\"", got)
	}
	if n := db.rows(t); n != 0 {
		t.Fatalf("%d rows, want 0", n)
	}

	sid := a.ResolveSessionIdManager(request(http.MethodPost, "X-Agent-ID", "agent-x")).Generate()
	if sid == "" {
		t.Fatal("Generate with the header failed")
	}
	noAgent := a.ResolveSessionIdManager(request(http.MethodPost))
	if term, err := noAgent.Validate(sid); term || err != nil {
		t.Fatalf("Validate without an agent = %v, %v", term, err)
	}
	if term, err := a.Validate(sid); term || err != nil {
		t.Fatalf("plain Validate = %v, %v", term, err)
	}
	if _, err := noAgent.Terminate(sid); err != nil {
		t.Fatal(err)
	}
	if term, err := a.Validate(sid); !term || err != nil {
		t.Fatalf("Validate after Terminate = %v, %v; want terminated", term, err)
	}
}

// SessionAgentID takes the agent from sessions.Middleware: the MCP session
// belongs to whoever authenticated with their agentsessions token.
func TestSessionAgentIDFromSessionsMiddleware(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentIDFromRequest: mcpsessions.SessionAgentID})
	bob, err := inst.mgr.Issue(context.Background(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	var sid string
	h := sessions.Middleware(inst.mgr, sessions.MiddlewareConfig{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sid = a.ResolveSessionIdManager(r).Generate()
	}))
	r := request(http.MethodPost, "Authorization", "Bearer "+bob.Token, sessions.DefaultAgentHeader, "bob")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusOK || sid == "" {
		t.Fatalf("status %d, session id %q; OnError: %v", w.Code, sid, rec.errs)
	}
	s, err := inst.mgr.Authenticate(context.Background(), sid, "bob")
	if err != nil {
		t.Fatalf("the MCP session is not bob's: %v", err)
	}
	if s.ID == bob.Session.ID {
		t.Fatal("the MCP session reused bob's bearer session")
	}
	if got := mcpsessions.SessionAgentID(request(http.MethodPost)); got != "" {
		t.Fatalf("SessionAgentID without the middleware = %q", got)
	}
}

// mcp-go writes Terminate's error into its 500 response: a store failure's
// text must not carry the database's messages, which go to OnError.
func TestStoreFailureTextIsOpaque(t *testing.T) {
	t.Parallel()
	db := newDB(t)
	inst := db.instance(t, sessions.Config{})
	a, rec := newAdapter(t, inst.mgr, mcpsessions.Options{AgentID: "agent-1"})
	sid := a.Generate()
	inst.pool.Close()
	_, verr := a.Validate(sid)
	_, terr := a.Terminate(sid)
	for op, err := range map[string]error{"validate": verr, "terminate": terr} {
		if want := "mcpsessions: " + op + ": " + sessions.HTTPError(sessions.ErrStore).Message; err == nil || err.Error() != want {
			t.Errorf("%s error text = %v, want %q", op, err, want)
		}
		if !errors.Is(err, sessions.ErrStore) {
			t.Errorf("%s error %v does not match sessions.ErrStore", op, err)
		}
	}
	_, errs := rec.calls()
	if len(errs) != 2 {
		t.Fatalf("OnError got %v, want 2 errors", errs)
	}
	for _, err := range errs {
		var se *sessions.StoreError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), se.Err.Error()) {
			t.Errorf("OnError got %v, want the store's cause in full", err)
		}
		if strings.Contains(err.Error(), sid) {
			t.Errorf("OnError's error contains the session id")
		}
	}
}
