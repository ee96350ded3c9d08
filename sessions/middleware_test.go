package sessions_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// echoSession answers 200 with the ID of the session the middleware put in
// the context, and 500 if there is none.
var echoSession = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	s, ok := sessions.SessionFromContext(r.Context())
	if !ok {
		http.Error(w, "no session in context", http.StatusInternalServerError)
		return
	}
	_, _ = w.Write([]byte(s.ID + " " + s.AgentID))
})

type mwResponse struct {
	status int
	code   string
	body   string
	header http.Header
}

func serveMW(h http.Handler, token, agentHeader, agentID string) mwResponse {
	r := httptest.NewRequest(http.MethodGet, "/tools", nil)
	if token != "" {
		r.Header.Set("Authorization", token)
	}
	if agentID != "" {
		r.Header.Set(agentHeader, agentID)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var body struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	return mwResponse{status: w.Code, code: body.Error.Code, body: w.Body.String(), header: w.Header()}
}

// The middleware's answers to every kind of credential, valid or not
// (pgxstore's TestMiddlewareDatabaseDown adds a real database going away).
func TestMiddleware(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sessions.NewMemoryStore(), 3)
	h := sessions.Middleware(e.Manager, sessions.MiddlewareConfig{})(echoSession)

	live := mustIssue(t, e.Manager, agent)
	revoked := mustIssue(t, e.Manager, agent)
	if _, err := e.Manager.Revoke(t.Context(), revoked.Session.ID); err != nil {
		t.Fatal(err)
	}
	other := mustIssue(t, e.Manager, "did:agentmesh:other")
	tampered := live.Token[:len(live.Token)-2] + "AA"
	if tampered == live.Token {
		tampered = live.Token[:len(live.Token)-2] + "BB"
	}

	cases := []struct {
		name, auth, agentID string
		status              int
		code                string
	}{
		{"valid", "Bearer " + live.Token, agent, 200, ""},
		{"scheme case-insensitive", "bearer " + live.Token, agent, 200, ""},
		{"no authorization", "", agent, 401, "missing_token"},
		{"basic scheme", "Basic " + live.Token, agent, 401, "missing_token"},
		{"empty bearer", "Bearer ", agent, 401, "missing_token"},
		{"no agent header", "Bearer " + live.Token, "", 400, "missing_agent_id"},
		{"tampered signature", "Bearer " + tampered, agent, 401, "invalid_token"},
		{"garbage", "Bearer not-a-token", agent, 401, "invalid_token"},
		{"oversized", "Bearer " + strings.Repeat("A", sessions.MaxTokenLength+1), agent, 401, "invalid_token"},
		{"revoked", "Bearer " + revoked.Token, agent, 401, "unauthorized"},
		{"another agent's token", "Bearer " + other.Token, agent, 403, "forbidden"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := serveMW(h, c.auth, sessions.DefaultAgentHeader, c.agentID)
			if got.status != c.status || got.code != c.code {
				t.Fatalf("got %d %q (%s), want %d %q", got.status, got.code, got.body, c.status, c.code)
			}
			if c.status == 200 && got.body != live.Session.ID+" "+agent {
				t.Fatalf("handler saw %q, want session %s", got.body, live.Session.ID)
			}
			if c.status == 401 && !strings.HasPrefix(got.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("401 without a Bearer challenge: %v", got.header)
			}
			if c.status != 200 && strings.Contains(got.body, live.Session.ID) {
				t.Fatalf("error body leaks the session: %s", got.body)
			}
		})
	}

	// Expiry: the fake clock moves past the TTL.
	e.Clock.Advance(2 * time.Minute)
	if got := serveMW(h, "Bearer "+live.Token, sessions.DefaultAgentHeader, agent); got.status != 401 || got.code != "expired" {
		t.Fatalf("expired token: got %d %q, want 401 expired", got.status, got.code)
	}

}

func TestMiddlewareCustomHeaderAndErrorHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t, sessions.NewMemoryStore(), 1)
	iss := mustIssue(t, e.Manager, agent)
	var gotStatus int
	var gotErr error
	h := sessions.Middleware(e.Manager, sessions.MiddlewareConfig{
		AgentHeader: "X-Client-DID",
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, status int, err error) {
			gotStatus, gotErr = status, err
			w.WriteHeader(status)
		},
	})(echoSession)

	if got := serveMW(h, "Bearer "+iss.Token, "X-Client-DID", agent); got.status != 200 {
		t.Fatalf("custom header: got %d %s", got.status, got.body)
	}
	// The default header is not read once another is configured.
	if got := serveMW(h, "Bearer "+iss.Token, sessions.DefaultAgentHeader, agent); got.status != 400 ||
		gotStatus != 400 || !errors.Is(gotErr, sessions.ErrMissingAgentID) {
		t.Fatalf("default header with custom config: got %d, handler saw %d %v", got.status, gotStatus, gotErr)
	}
	if got := serveMW(h, "Bearer "+iss.Token, "X-Client-DID", "did:agentmesh:other"); got.status != 403 ||
		!errors.Is(gotErr, sessions.ErrAccessDenied) {
		t.Fatalf("wrong agent: got %d, handler saw %v", got.status, gotErr)
	}
}

// flakyStore fails every Get while down is set, with a cause that names a
// host, as a database driver's error would.
type flakyStore struct {
	sessions.Store
	down atomic.Bool
}

func (f *flakyStore) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	if f.down.Load() {
		return sessions.Session{}, false, errors.New("dial tcp 10.1.2.3:5432: connection refused")
	}
	return f.Store.Get(ctx, id)
}

// The default middleware answers every refusal with the status and code
// of sessions.HTTPError (401 for no token at all, as RFC 6750 says), a
// message naming the configured agent header where that is what to fix,
// and a WWW-Authenticate challenge only when the token is what failed.
func TestMiddlewareAnswersPerTable(t *testing.T) {
	t.Parallel()
	store := &flakyStore{Store: sessions.NewMemoryStore()}
	clock := newClock(1_700_000_000)
	cfg := sessions.Config{Secret: []byte(secret), TTL: time.Minute, Limit: 5, Clock: clock.Now}
	m, err := sessions.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Clock = func() time.Time { return time.Unix(-10, 0) }
	before1970, err := sessions.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	live := mustIssue(t, m, agent)
	revoked := mustIssue(t, m, agent)
	if _, err := m.Revoke(t.Context(), revoked.Session.ID); err != nil {
		t.Fatal(err)
	}
	expiring := mustIssue(t, m, agent)
	theirs := mustIssue(t, m, other)

	const header = "X-Client-DID"
	statusOf := map[string]int{}
	for _, c := range sessions.HTTPErrorCodes() {
		statusOf[c.Code] = c.Status
	}
	const invalidChallenge = `Bearer error="invalid_token"`
	cases := []struct {
		name, auth, agentID string
		mgr                 *sessions.Manager
		before              func()
		code, challenge     string
		inMessage           string
	}{
		{name: "no token", agentID: agent, code: "missing_token", challenge: "Bearer", inMessage: "Authorization: Bearer <token>"},
		{name: "no agent header", auth: "Bearer " + live.Token, code: "missing_agent_id", inMessage: header},
		{name: "agent ID too long", auth: "Bearer " + live.Token, agentID: strings.Repeat("a", sessions.MaxAgentIDLength+1),
			code: "invalid_agent_id", inMessage: header},
		{name: "tampered", auth: "Bearer " + live.Token + "x", agentID: agent, code: "invalid_token", challenge: invalidChallenge},
		{name: "revoked", auth: "Bearer " + revoked.Token, agentID: agent, code: "unauthorized", challenge: invalidChallenge},
		{name: "another agent's token", auth: "Bearer " + theirs.Token, agentID: agent, code: "forbidden", inMessage: header},
		{name: "clock before 1970", auth: "Bearer " + live.Token, agentID: agent, mgr: before1970, code: "internal_error"},
		{name: "store down", auth: "Bearer " + live.Token, agentID: agent, code: "store_unavailable",
			before: func() { store.down.Store(true) }},
		{name: "expired", auth: "Bearer " + expiring.Token, agentID: agent, code: "expired", challenge: invalidChallenge,
			before: func() { store.down.Store(false); clock.Advance(2 * time.Minute) }},
	}
	for _, c := range cases {
		if c.before != nil {
			c.before()
		}
		mgr := m
		if c.mgr != nil {
			mgr = c.mgr
		}
		h := sessions.Middleware(mgr, sessions.MiddlewareConfig{AgentHeader: header})(echoSession)
		got := serveMW(h, c.auth, header, c.agentID)
		wantStatus := statusOf[c.code]
		if c.code == "missing_token" {
			wantStatus = http.StatusUnauthorized
		}
		if got.status != wantStatus || got.code != c.code {
			t.Errorf("%s: got %d %q (%s), want %d %s", c.name, got.status, got.code, got.body, wantStatus, c.code)
		}
		if ch := got.header.Get("WWW-Authenticate"); ch != c.challenge {
			t.Errorf("%s: WWW-Authenticate %q, want %q", c.name, ch, c.challenge)
		}
		if ra := got.header.Get("Retry-After"); (ra != "") != (wantStatus == http.StatusServiceUnavailable) {
			t.Errorf("%s: Retry-After %q with status %d", c.name, ra, got.status)
		}
		var body struct {
			Error struct{ Message string } `json:"error"`
		}
		if err := json.Unmarshal([]byte(got.body), &body); err != nil || body.Error.Message == "" {
			t.Errorf("%s: body %s: %v", c.name, got.body, err)
		}
		if !strings.Contains(body.Error.Message, c.inMessage) || strings.Contains(got.body, `\u003c`) ||
			strings.Contains(got.body, "10.1.2.3") || strings.Contains(got.body, "sessions: ") {
			t.Errorf("%s: body %s should name %q, unescaped, without the store's cause", c.name, got.body, c.inMessage)
		}
	}
}

func TestContextWithSession(t *testing.T) {
	ctx := context.Background()
	if _, ok := sessions.SessionFromContext(ctx); ok {
		t.Fatal("a bare context carries a session")
	}
	want := sessions.Session{ID: "s1", AgentID: "agent-1"}
	got, ok := sessions.SessionFromContext(sessions.ContextWithSession(ctx, want))
	if !ok || got.ID != want.ID || got.AgentID != want.AgentID {
		t.Fatalf("SessionFromContext = %+v, %v; want %+v, true", got, ok, want)
	}
}
