package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// TestMain fails the run if a goroutine outlives the tests: every server,
// pool and background loop must stop with its test.
func TestMain(m *testing.M) {
	code := testdb.Run(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const (
	agent    = "did:agentmesh:planner"
	other    = "did:agentmesh:critic"
	adminKey = "test-admin-key-0123456789abcdef-0123456789"
)

var secret = []byte("0123456789abcdef0123456789abcdef-test-secret")

// clock is a settable clock shared by a test's managers.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is one API instance on a test database.
type env struct {
	t     *testing.T
	url   string
	srv   *server.Server
	mgr   *sessions.Manager
	clock *clock
	logs  *syncBuffer
}

type envConfig struct {
	limit       int
	policy      sessions.LimitPolicy
	maxLifetime time.Duration
	clock       *clock
	opts        server.Options
}

// newEnv starts an API instance on d (its own pool: one instance) with
// the admin key, a debug logger into env.logs, and the PostgreSQL
// readiness check, store stats and live-session gauge wired as serve does.
func newEnv(t *testing.T, d *testdb.DB, cfg envConfig) *env {
	t.Helper()
	pool := d.Pool(t)
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.limit == 0 {
		cfg.limit = 3
	}
	if cfg.clock == nil {
		cfg.clock = newClock()
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	mgr, err := sessions.New(store, sessions.Config{
		Secret: secret, TTL: time.Hour, Limit: cfg.limit, Policy: cfg.policy,
		MaxLifetime: cfg.maxLifetime, Clock: cfg.clock.Now, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	opts := cfg.opts
	if opts.AdminKey == nil {
		opts.AdminKey = []byte(adminKey)
	}
	opts.Logger = log
	if opts.Ready == nil {
		opts.Ready = store.Ready
	}
	opts.StoreStats = store.Stats
	if opts.LiveSessions == nil {
		opts.LiveSessions = func(ctx context.Context) (int64, error) { return store.LiveSessions(ctx, cfg.clock.Now()) }
	}
	if opts.LiveSessionsCacheTTL == 0 {
		opts.LiveSessionsCacheTTL = time.Nanosecond // count on every scrape
	}
	srv, err := server.New(mgr, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &env{t: t, url: ts.URL, srv: srv, mgr: mgr, clock: cfg.clock, logs: logs}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// code is the error code of an error response.
func (r response) code() string {
	var e server.ErrorBody
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Code
}

// message is the message of an error response.
func (r response) message() string {
	var e server.ErrorBody
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Message
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, bytes.TrimSpace(r.body)) }

// do sends a request; body is sent as is when it is a string, else as
// JSON. auth is the whole Authorization header ("" for none).
func (e *env) do(method, path, auth string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

func (e *env) admin(method, path string, body any) response {
	e.t.Helper()
	return e.do(method, path, "Bearer "+adminKey, body)
}

// want fails the test unless r has the status (and error code, if given).
func want(t *testing.T, what string, r response, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		t.Fatalf("%s: got %s; want %d %s", what, r, status, code)
	}
	if ct := r.header.Get("Content-Type"); r.status != http.StatusNoContent && ct != "application/json" &&
		!strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("%s: Content-Type %q", what, ct)
	}
}

func decodeAs[T any](t *testing.T, r response) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v", r, err)
	}
	return v
}

func (e *env) issue(agentID string, md map[string]string) server.IssuedResponse {
	e.t.Helper()
	r := e.admin("POST", "/v1/sessions", map[string]any{"agent_id": agentID, "metadata": md})
	want(e.t, "issue", r, http.StatusCreated, "")
	return decodeAs[server.IssuedResponse](e.t, r)
}

func tokenBody(agentID, token string) map[string]string {
	return map[string]string{"agent_id": agentID, "token": token}
}

func TestSessionLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})

	first := e.issue(agent, map[string]string{"client": "claude", "instance": "i-1"})
	if first.Token == "" || first.Session.AgentID != agent || first.Session.Metadata["client"] != "claude" ||
		first.Session.IssuedAt != "2030-01-02T03:04:05Z" || first.Session.ExpiresAt != "2030-01-02T04:04:05Z" {
		t.Fatalf("issue response: %+v", first)
	}
	e.clock.Advance(time.Minute)
	second := e.issue(agent, nil)

	// Authenticate needs no admin key, only the token.
	r := e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, first.Token))
	want(t, "authenticate", r, http.StatusOK, "")
	if got := decodeAs[server.SessionResponse](t, r); got.Session.ID != first.Session.ID || got.Session.Metadata["instance"] != "i-1" {
		t.Fatalf("authenticate: %+v", got)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control %q", r.header.Get("Cache-Control"))
	}

	// List: oldest first, no token or digest in the output.
	r = e.admin("GET", "/v1/agents/"+agent+"/sessions", nil)
	want(t, "list", r, http.StatusOK, "")
	list := decodeAs[server.SessionsResponse](t, r)
	if len(list.Sessions) != 2 || list.Sessions[0].ID != first.Session.ID || list.Sessions[1].ID != second.Session.ID {
		t.Fatalf("list: %+v", list)
	}
	// No idle timeout: uses are not recorded, so last use is the issue.
	if first.Session.LastUsedAt != first.Session.IssuedAt || list.Sessions[1].LastUsedAt != second.Session.IssuedAt {
		t.Fatalf("last_used_at: issued %+v, listed %+v", first.Session, list.Sessions[1])
	}
	if bytes.Contains(r.body, []byte(first.Token)) {
		t.Fatal("list shows a token")
	}

	// Refresh: same session, later expiry, new token; the old one is dead.
	e.clock.Advance(10 * time.Minute)
	r = e.do("POST", "/v1/sessions/refresh", "", tokenBody(agent, first.Token))
	want(t, "refresh", r, http.StatusOK, "")
	ref := decodeAs[server.IssuedResponse](t, r)
	if ref.Session.ID != first.Session.ID || ref.Token == first.Token || ref.Session.ExpiresAt != "2030-01-02T04:15:05Z" {
		t.Fatalf("refresh: %+v", ref)
	}
	want(t, "old token after refresh", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, first.Token)),
		http.StatusUnauthorized, "unauthorized")
	want(t, "new token after refresh", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, ref.Token)),
		http.StatusOK, "")

	// Revoke one: 204, idempotent, and the token stops working.
	want(t, "revoke", e.admin("DELETE", "/v1/sessions/"+second.Session.ID, nil), http.StatusNoContent, "")
	want(t, "revoke again", e.admin("DELETE", "/v1/sessions/"+second.Session.ID, nil), http.StatusNoContent, "")
	want(t, "revoked token", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, second.Token)),
		http.StatusUnauthorized, "unauthorized")

	// Revoke all of an agent's sessions; another agent's survive.
	theirs := e.issue(other, nil)
	e.issue(agent, nil)
	r = e.admin("DELETE", "/v1/agents/"+agent+"/sessions", nil)
	want(t, "revoke agent", r, http.StatusOK, "")
	if got := decodeAs[server.RevokedResponse](t, r); got.Revoked != 2 {
		t.Fatalf("revoke agent: %+v, want 2 revoked", got)
	}
	r = e.admin("GET", "/v1/agents/"+agent+"/sessions", nil)
	if strings.TrimSpace(string(r.body)) != `{"sessions":[]}` {
		t.Fatalf("list after revoke-all: %s", r)
	}
	want(t, "refresh revoked", e.do("POST", "/v1/sessions/refresh", "", tokenBody(agent, ref.Token)),
		http.StatusUnauthorized, "unauthorized")
	want(t, "other agent's session", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(other, theirs.Token)),
		http.StatusOK, "")
}

// Agent IDs are path segments: one with '/' and ':' must round-trip
// when escaped.
func TestAgentIDWithSlashInPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	const id = "team/a:b c"
	e.issue(id, nil)
	r := e.admin("GET", "/v1/agents/team%2Fa:b%20c/sessions", nil)
	want(t, "list", r, http.StatusOK, "")
	if got := decodeAs[server.SessionsResponse](t, r); len(got.Sessions) != 1 || got.Sessions[0].AgentID != id {
		t.Fatalf("list: %s", r)
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{limit: 3})
	path := "/v1/agents/" + agent + "/limit"
	limitIs := func(what string, r response, limit int, override bool) {
		t.Helper()
		want(t, what, r, http.StatusOK, "")
		if got := decodeAs[server.LimitResponse](t, r); got != (server.LimitResponse{AgentID: agent, Limit: limit, Override: override}) {
			t.Fatalf("%s: %+v", what, got)
		}
	}
	limitIs("default", e.admin("GET", path, nil), 3, false)
	limitIs("set", e.admin("PUT", path, `{"limit":1}`), 1, true)
	limitIs("get override", e.admin("GET", path, nil), 1, true)

	e.issue(agent, nil)
	r := e.admin("POST", "/v1/sessions", map[string]string{"agent_id": agent})
	want(t, "issue over the override", r, http.StatusConflict, "limit_exceeded")
	if !strings.Contains(r.String(), "limit of 1") {
		t.Fatalf("limit message: %s", r)
	}

	limitIs("delete", e.admin("DELETE", path, nil), 3, false)
	limitIs("delete again", e.admin("DELETE", path, nil), 3, false)
	e.issue(agent, nil)

	want(t, "limit 0", e.admin("PUT", path, `{"limit":0}`), http.StatusBadRequest, "invalid_limit")
	want(t, "limit missing", e.admin("PUT", path, `{}`), http.StatusBadRequest, "bad_request")
	want(t, "limit string", e.admin("PUT", path, `{"limit":"5"}`), http.StatusBadRequest, "bad_request")
	want(t, "limit too big", e.admin("PUT", path, `{"limit":4294967296}`), http.StatusBadRequest, "invalid_limit")
}

func TestEvictOldestPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{limit: 2, policy: sessions.PolicyEvictOldest})
	a := e.issue(agent, nil)
	e.clock.Advance(time.Second)
	e.issue(agent, nil)
	e.clock.Advance(time.Second)
	c := e.issue(agent, nil)
	if len(c.Evicted) != 1 || c.Evicted[0] != a.Session.ID {
		t.Fatalf("evicted %v, want [%s]", c.Evicted, a.Session.ID)
	}
	want(t, "evicted token", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, a.Token)),
		http.StatusUnauthorized, "unauthorized")
}

func TestAdminKeyRequired(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	e := newEnv(t, d, envConfig{})
	routes := []struct{ method, path, body string }{
		{"POST", "/v1/sessions", `{"agent_id":"` + agent + `"}`},
		{"DELETE", "/v1/sessions/abc", ""},
		{"GET", "/v1/agents/" + agent + "/sessions", ""},
		{"DELETE", "/v1/agents/" + agent + "/sessions", ""},
		{"GET", "/v1/agents/" + agent + "/limit", ""},
		{"PUT", "/v1/agents/" + agent + "/limit", `{"limit":9}`},
		{"DELETE", "/v1/agents/" + agent + "/limit", ""},
	}
	for _, rt := range routes {
		for _, auth := range []string{
			"",
			"Bearer",
			"Bearer ",
			"Bearer wrong-key",
			"Bearer " + adminKey + "x",
			"Bearer " + adminKey[:len(adminKey)-1],
			"Basic " + adminKey,
			adminKey,
		} {
			var body any
			if rt.body != "" {
				body = rt.body
			}
			r := e.do(rt.method, rt.path, auth, body)
			want(t, fmt.Sprintf("%s %s with %q", rt.method, rt.path, auth), r, http.StatusUnauthorized, "admin_key_required")
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("no Bearer challenge: %v", r.header)
			}
		}
	}
	// Nothing was written: no session, no override.
	if list, err := e.mgr.List(t.Context(), agent); err != nil || len(list) != 0 {
		t.Fatalf("sessions after refused issues: %v %v", list, err)
	}
	if l, err := e.mgr.AgentLimit(t.Context(), agent); err != nil || l.Override {
		t.Fatalf("limit after refused PUT: %+v %v", l, err)
	}
	// The scheme is case-insensitive, as RFC 7235 says.
	want(t, "lowercase bearer", e.do("GET", "/v1/agents/"+agent+"/limit", "bearer "+adminKey, nil), http.StatusOK, "")
	if got := metric(t, e, "agentsessions_admin_auth_failures_total"); got != float64(len(routes)*8) {
		t.Fatalf("admin_auth_failures_total = %v, want %d", got, len(routes)*8)
	}

	// A server without an admin key refuses every admin route, even with
	// an empty bearer.
	none := newEnv(t, d, envConfig{opts: server.Options{AdminKey: []byte{}}})
	for _, auth := range []string{"", "Bearer ", "Bearer " + adminKey} {
		r := none.do("GET", "/v1/agents/"+agent+"/limit", auth, nil)
		want(t, "admin routes disabled", r, http.StatusUnauthorized, "admin_key_required")
		if !strings.Contains(r.String(), "disabled") {
			t.Fatalf("message does not say the routes are disabled: %s", r)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	mgr, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: secret, TTL: time.Hour, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		m    *sessions.Manager
		opts server.Options
	}{
		"nil manager":    {nil, server.Options{}},
		"short key":      {mgr, server.Options{AdminKey: []byte("short")}},
		"31-byte key":    {mgr, server.Options{AdminKey: bytes.Repeat([]byte("k"), server.MinAdminKeyBytes-1)}},
		"negative body":  {mgr, server.Options{MaxBodyBytes: -1}},
		"negative ready": {mgr, server.Options{ReadyTimeout: -1}},
	} {
		if _, err := server.New(c.m, c.opts); !errors.Is(err, server.ErrInvalidOptions) {
			t.Errorf("%s: err %v, want ErrInvalidOptions", name, err)
		}
	}
	if _, err := server.New(mgr, server.Options{AdminKey: bytes.Repeat([]byte("k"), server.MinAdminKeyBytes)}); err != nil {
		t.Fatalf("32-byte key: %v", err)
	}
}

func TestBadTokens(t *testing.T) {
	t.Parallel()
	// MaxLifetime 1h = TTL: a session can never be extended.
	e := newEnv(t, testdb.New(t), envConfig{maxLifetime: time.Hour})
	live := e.issue(agent, nil)
	theirs := e.issue(other, nil)
	tampered := live.Token[:len(live.Token)-2] + "AA"
	if tampered == live.Token {
		tampered = live.Token[:len(live.Token)-2] + "BB"
	}
	// A token signed with another secret, for a real session ID.
	foreignMgr, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{
		Secret: []byte("another-secret-another-secret-another"), TTL: time.Hour, Limit: 1, Clock: e.clock.Now,
		NewID: func() (string, error) { return live.Session.ID, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := foreignMgr.Issue(t.Context(), agent)
	if err != nil {
		t.Fatal(err)
	}

	for _, route := range []string{"/v1/sessions/authenticate", "/v1/sessions/refresh"} {
		for _, c := range []struct {
			name, agentID, token string
			status               int
			code                 string
		}{
			{"garbage", agent, "not-a-token", 401, "invalid_token"},
			{"empty token", agent, "", 400, "missing_token"},
			{"tampered signature", agent, tampered, 401, "invalid_token"},
			{"other secret", agent, foreign.Token, 401, "invalid_token"},
			{"oversized token", agent, strings.Repeat("A", sessions.MaxTokenLength+1), 401, "invalid_token"},
			{"another agent's token", agent, theirs.Token, 403, "forbidden"},
			{"empty agent", "", live.Token, 400, "missing_agent_id"},
			{"control character in agent", "a\x00b", live.Token, 400, "invalid_agent_id"},
		} {
			r := e.do("POST", route, "", tokenBody(c.agentID, c.token))
			want(t, route+": "+c.name, r, c.status, c.code)
		}
	}

	// The live token survives all that.
	want(t, "live", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, live.Token)), 200, "")

	// At the end of its lifetime a session cannot be refreshed.
	e.clock.Advance(2 * time.Second)
	want(t, "refresh at max lifetime", e.do("POST", "/v1/sessions/refresh", "", tokenBody(agent, live.Token)),
		http.StatusUnauthorized, "lifetime_exceeded")

	// Past its expiry it is refused, and deleted.
	e.clock.Advance(time.Hour)
	want(t, "expired", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, live.Token)),
		http.StatusUnauthorized, "expired")
	want(t, "expired, second time", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, live.Token)),
		http.StatusUnauthorized, "expired")

	text := scrape(t, e)
	for reason, n := range map[string]int{
		"invalid_token": 4, "invalid_signature": 4, "agent_mismatch": 2, "invalid_agent_id": 2,
		"lifetime_exceeded": 1, "expired": 2, "unknown_session": 0,
	} {
		name := `agentsessions_authentication_failures_total{reason="` + reason + `"}`
		if got := metricIn(t, text, name); got != float64(n) {
			t.Errorf("%s = %v, want %d", name, got, n)
		}
	}
}

func TestRequestValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	big := `{"agent_id":"` + agent + `","metadata":{"k":"` + strings.Repeat("x", server.DefaultMaxBodyBytes) + `"}}`
	for _, c := range []struct {
		name, body string
		status     int
		code, msg  string
	}{
		{"empty", "", 400, "bad_request", "empty"},
		{"not JSON", "agent_id=x", 400, "bad_request", "not valid JSON"},
		{"truncated", `{"agent_id":`, 400, "bad_request", "not valid JSON"},
		{"array", `[]`, 400, "bad_request", "JSON object"},
		{"two objects", `{"agent_id":"a"}{"agent_id":"b"}`, 400, "bad_request", "more than one"},
		{"trailing garbage", `{"agent_id":"a"} x`, 400, "bad_request", "not valid JSON"},
		{"trailing space", `{"agent_id":"a"}` + " \n\t", 201, "", ""},
		{"unknown field", `{"agent":"a"}`, 400, "bad_request", `unknown field "agent"`},
		{"agent not a string", `{"agent_id":7}`, 400, "bad_request", `"agent_id" must be a JSON string`},
		{"metadata not strings", `{"agent_id":"a","metadata":{"n":1}}`, 400, "bad_request", "metadata"},
		{"missing agent", `{}`, 400, "missing_agent_id", "agent_id"},
		{"metadata too big", `{"agent_id":"a","metadata":{"k":"` + strings.Repeat("x", 2000) + `"}}`, 400, "invalid_metadata", "metadata"},
		{"empty metadata key", `{"agent_id":"a","metadata":{"":"v"}}`, 400, "invalid_metadata", "metadata"},
		{"over the body cap", big, 413, "request_too_large", "65536"},
	} {
		r := e.admin("POST", "/v1/sessions", c.body)
		want(t, c.name, r, c.status, c.code)
		if !strings.Contains(r.message(), c.msg) {
			t.Errorf("%s: message %s does not mention %q", c.name, r, c.msg)
		}
	}
	// The token routes share the decoder and the cap.
	want(t, "authenticate over the cap", e.do("POST", "/v1/sessions/authenticate", "",
		`{"token":"`+strings.Repeat("x", server.DefaultMaxBodyBytes)+`"}`), 413, "request_too_large")
	if list, _ := e.mgr.List(t.Context(), "a"); len(list) != 1 {
		t.Fatalf("want only the trailing-space request's session, got %v", list)
	}

	// Unknown routes and methods answer JSON too.
	want(t, "unknown route", e.do("GET", "/v2/nothing", "", nil), 404, "not_found")
	r := e.do("GET", "/v1/sessions", "", nil)
	want(t, "wrong method", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "POST" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
	r = e.do("PATCH", "/v1/agents/x/limit", "", nil)
	want(t, "PATCH limit", r, 405, "method_not_allowed")
	if r.header.Get("Allow") != "GET, PUT, DELETE" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
}

// A smaller cap applies as configured.
func TestMaxBodyBytesOption(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{opts: server.Options{MaxBodyBytes: 64}})
	want(t, "small", e.admin("POST", "/v1/sessions", `{"agent_id":"a"}`), 201, "")
	want(t, "over 64", e.admin("POST", "/v1/sessions", `{"agent_id":"`+strings.Repeat("a", 60)+`"}`), 413, "request_too_large")
}

func scrape(t *testing.T, e *env) string {
	t.Helper()
	r := e.do("GET", "/metrics", "", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", r.status, r.header.Get("Content-Type"))
	}
	return string(r.body)
}

// metricIn returns the value of the sample named exactly name (with its
// labels, as exposed), failing the test if there is none.
func metricIn(t *testing.T, text, name string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("no sample %s in /metrics:\n%s", name, text)
	return 0
}

func metric(t *testing.T, e *env, name string) float64 {
	t.Helper()
	return metricIn(t, scrape(t, e), name)
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{limit: 2})
	a := e.issue(agent, nil)
	e.issue(agent, nil)
	want(t, "over limit", e.admin("POST", "/v1/sessions", map[string]string{"agent_id": agent}), 409, "limit_exceeded")
	e.issue(other, nil)
	want(t, "auth", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, a.Token)), 200, "")
	want(t, "bad sig", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, a.Token+"x")), 401, "invalid_token")
	e.clock.Advance(5 * time.Second)
	want(t, "refresh", e.do("POST", "/v1/sessions/refresh", "", tokenBody(agent, a.Token)), 200, "")
	want(t, "refresh old token", e.do("POST", "/v1/sessions/refresh", "", tokenBody(agent, a.Token)), 401, "unauthorized")
	want(t, "revoke", e.admin("DELETE", "/v1/sessions/"+a.Session.ID, nil), 204, "")
	want(t, "wrong admin key", e.do("DELETE", "/v1/sessions/x", "Bearer nope", nil), 401, "admin_key_required")

	text := scrape(t, e)
	for name, v := range map[string]float64{
		"agentsessions_sessions_issued_total":                                     3,
		"agentsessions_limit_denials_total":                                       1,
		"agentsessions_authentications_total":                                     1,
		"agentsessions_sessions_refreshed_total":                                  1,
		"agentsessions_sessions_revoked_total":                                    1,
		"agentsessions_admin_auth_failures_total":                                 1,
		`agentsessions_authentication_failures_total{reason="invalid_signature"}`: 1,
		`agentsessions_authentication_failures_total{reason="unknown_session"}`:   0,
		`agentsessions_store_operation_duration_seconds_count{op="issue"}`:        4,
		`agentsessions_store_operation_duration_seconds_count{op="authenticate"}`: 2,
		`agentsessions_store_operation_duration_seconds_count{op="refresh"}`:      2,
		`agentsessions_store_operation_duration_seconds_count{op="revoke"}`:       1,
		`agentsessions_http_requests_total{code="201",route="POST /v1/sessions"}`: 3,
		`agentsessions_http_requests_total{code="409",route="POST /v1/sessions"}`: 1,
		// Two of agent's (one revoked: a) plus other's: 2 live.
		"agentsessions_live_sessions": 2,
		// Issue runs one limit transaction each, refused ones included.
		"agentsessions_store_transactions_total": 4,
	} {
		if got := metricIn(t, text, name); got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}
	// A superseded token fails the digest or the expiry comparison.
	if got := metricIn(t, text, `agentsessions_authentication_failures_total{reason="digest_mismatch"}`) +
		metricIn(t, text, `agentsessions_authentication_failures_total{reason="metadata_mismatch"}`); got != 1 {
		t.Errorf("digest_mismatch + metadata_mismatch = %v, want 1", got)
	}
	// Counters that depend on contention exist from the start.
	for _, name := range []string{
		"agentsessions_store_serialization_retries_total", "agentsessions_store_retries_exhausted_total",
		"agentsessions_store_reconnects_total", "agentsessions_pruned_sessions_total", "agentsessions_prune_errors_total",
		`agentsessions_store_operation_duration_seconds_bucket{op="issue",le="+Inf"}`,
		"go_goroutines", "process_open_fds",
	} {
		metricIn(t, text, name)
	}
	// The pruner hook counts deletions and failures.
	e.srv.ObservePrune(pgxstore.PruneResult{Deleted: 7, Batches: 1}, nil)
	e.srv.ObservePrune(pgxstore.PruneResult{Skipped: true}, nil)
	e.srv.ObservePrune(pgxstore.PruneResult{}, errors.New("boom"))
	text = scrape(t, e)
	if metricIn(t, text, "agentsessions_pruned_sessions_total") != 7 || metricIn(t, text, "agentsessions_prune_errors_total") != 1 {
		t.Fatalf("prune metrics:\n%s", text)
	}
}

// The live-session count is cached: scrapes within the TTL do not count
// again.
func TestLiveSessionsGaugeCached(t *testing.T) {
	t.Parallel()
	var counts atomic.Int64
	e := newEnv(t, testdb.New(t), envConfig{opts: server.Options{
		LiveSessionsCacheTTL: time.Hour,
		LiveSessions: func(context.Context) (int64, error) {
			return counts.Add(1), nil
		},
	}})
	for range 3 {
		if got := metric(t, e, "agentsessions_live_sessions"); got != 1 {
			t.Fatalf("gauge %v, want the cached first count 1", got)
		}
	}
}

// Tokens, the admin key and the secret never reach the log, whatever
// happens to the request.
func TestSecretsNeverLogged(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{limit: 1})
	iss := e.issue(agent, map[string]string{"client": "c"})
	e.admin("POST", "/v1/sessions", map[string]string{"agent_id": agent})
	e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, iss.Token))
	e.do("POST", "/v1/sessions/authenticate", "", tokenBody(other, iss.Token))
	e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, iss.Token+"AA"))
	e.do("POST", "/v1/sessions/authenticate?token="+iss.Token, "", tokenBody(agent, iss.Token))
	e.clock.Advance(3 * time.Second)
	ref := e.do("POST", "/v1/sessions/refresh", "", tokenBody(agent, iss.Token))
	want(t, "refresh", ref, 200, "")
	newToken := decodeAs[server.IssuedResponse](t, ref).Token
	e.do("GET", "/v1/agents/"+agent+"/sessions", "Bearer "+adminKey+"-wrong", nil)
	e.do("GET", "/metrics", "Bearer "+adminKey, nil)

	logs := e.logs.String()
	if !strings.Contains(logs, "route=\"POST /v1/sessions/authenticate\"") {
		t.Fatalf("requests were not logged:\n%s", logs)
	}
	sig := iss.Token[strings.IndexByte(iss.Token, '.')+1:]
	for what, s := range map[string]string{
		"token": iss.Token, "signature": sig, "refreshed token": newToken, "admin key": adminKey, "secret": string(secret),
	} {
		if strings.Contains(logs, s) {
			t.Errorf("the log contains the %s:\n%s", what, logs)
		}
	}
}

// POST /v1/sessions/revoke-others: the token's holder logs out its
// agent's other sessions, without the admin key; the token's own session
// and other agents' sessions stay; another agent's or a revoked token is
// refused.
func TestRevokeOtherSessionsRoute(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	mine := e.issue(agent, nil)
	e.clock.Advance(time.Second)
	gone := e.issue(agent, nil)
	theirs := e.issue(other, nil)
	r := e.do("POST", "/v1/sessions/revoke-others", "", tokenBody(agent, mine.Token))
	want(t, "revoke others", r, http.StatusOK, "")
	if got := decodeAs[server.RevokedResponse](t, r); got.Revoked != 1 {
		t.Fatalf("revoke others: %+v, want 1 revoked", got)
	}
	want(t, "own session", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, mine.Token)), http.StatusOK, "")
	want(t, "other session", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, gone.Token)),
		http.StatusUnauthorized, "unauthorized")
	want(t, "other agent", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(other, theirs.Token)), http.StatusOK, "")
	want(t, "another agent's token", e.do("POST", "/v1/sessions/revoke-others", "", tokenBody(agent, theirs.Token)),
		http.StatusForbidden, "forbidden")
	want(t, "revoked token", e.do("POST", "/v1/sessions/revoke-others", "", tokenBody(agent, gone.Token)),
		http.StatusUnauthorized, "unauthorized")
	want(t, "no token", e.do("POST", "/v1/sessions/revoke-others", "", map[string]string{"agent_id": agent}),
		http.StatusBadRequest, "missing_token")
}
