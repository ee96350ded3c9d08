package pgxstore_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
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

func TestMiddlewarePostgres(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t).Pool(t)
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, store, 3)
	h := sessions.Middleware(e.mgr, sessions.MiddlewareConfig{})(echoSession)

	live := mustIssue(t, e.mgr, agent)
	revoked := mustIssue(t, e.mgr, agent)
	if _, err := e.mgr.Revoke(t.Context(), revoked.Session.ID); err != nil {
		t.Fatal(err)
	}
	other := mustIssue(t, e.mgr, "did:agentmesh:other")
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
	e.clock.Advance(2 * time.Minute)
	if got := serveMW(h, "Bearer "+live.Token, sessions.DefaultAgentHeader, agent); got.status != 401 || got.code != "expired" {
		t.Fatalf("expired token: got %d %q, want 401 expired", got.status, got.code)
	}

	// Database down: 503 (retry later), never 401, and the handler is not reached.
	fresh := mustIssue(t, e.mgr, "did:agentmesh:fresh")
	pool.Close()
	got := serveMW(h, "Bearer "+fresh.Token, sessions.DefaultAgentHeader, "did:agentmesh:fresh")
	if got.status != 503 || got.code != "store_unavailable" || got.header.Get("Retry-After") == "" {
		t.Fatalf("store down: got %d %q %v, want 503 store_unavailable with Retry-After", got.status, got.code, got.header)
	}
}
