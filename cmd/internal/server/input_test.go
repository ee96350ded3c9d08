package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
)

// raw sends body as is with the Content-Type ct ("" for none).
func (e *env) raw(method, path, auth, ct, body string) response {
	e.t.Helper()
	return rawRequest(e.t, e.url, method, path, auth, ct, body)
}

func rawRequest(t *testing.T, base, method, path, auth, ct, body string) response {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// encoding/json turns invalid UTF-8 and lone surrogate escapes into U+FFFD:
// two different agent IDs would decode alike. The API refuses them.
func TestBodyRefusesInvalidUnicode(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	const ct = "application/json"
	admin := "Bearer " + adminKey
	for _, c := range []struct{ name, body, msg string }{
		{"invalid UTF-8", "{\"agent_id\":\"inv-\xff\"}", "UTF-8"},
		{"invalid UTF-8 in metadata", "{\"agent_id\":\"a\",\"metadata\":{\"k\":\"\xc3\"}}", "UTF-8"},
		{"lone high surrogate", `{"agent_id":"inv-\ud800"}`, `\ud800`},
		{"high surrogate then a letter", `{"agent_id":"inv-\uD800\u0041"}`, `\uD800`},
		{"high surrogate at the end", `{"agent_id":"inv-\udbff"}`, `\udbff`},
		{"lone low surrogate", `{"agent_id":"inv-\udc00x"}`, `\udc00`},
		{"two high surrogates", `{"agent_id":"inv-\ud800\ud800"}`, `\ud800`},
		{"surrogate in a metadata key", `{"agent_id":"a","metadata":{"\udfff":"v"}}`, `\udfff`},
	} {
		r := e.raw("POST", "/v1/sessions", admin, ct, c.body)
		want(t, c.name, r, http.StatusBadRequest, "bad_request")
		if !strings.Contains(r.message(), c.msg) {
			t.Errorf("%s: message %q does not mention %q", c.name, r.message(), c.msg)
		}
	}
	// Nothing was issued for the replacement character's agent.
	if list, err := e.mgr.List(t.Context(), "inv-\uFFFD"); err != nil || len(list) != 0 {
		t.Fatalf("sessions of inv-\\uFFFD: %v %v", list, err)
	}
	// The token routes refuse it too, before any token check.
	iss := e.issue("inv-x", nil)
	r := e.raw("POST", "/v1/sessions/authenticate", "", ct, "{\"agent_id\":\"inv-\xfe\",\"token\":\""+iss.Token+"\"}")
	want(t, "authenticate with invalid UTF-8", r, http.StatusBadRequest, "bad_request")

	// A surrogate pair, and an escaped backslash before "u", are fine.
	for name, c := range map[string]struct{ body, agent string }{
		"pair":              {`{"agent_id":"emoji-\ud83d\ude00"}`, "emoji-\U0001F600"},
		"escaped backslash": {`{"agent_id":"lit-\\ud800"}`, `lit-\ud800`},
	} {
		r := e.raw("POST", "/v1/sessions", admin, ct, c.body)
		want(t, name, r, http.StatusCreated, "")
		if got := decodeAs[server.IssuedResponse](t, r).Session.AgentID; got != c.agent {
			t.Errorf("%s: agent %q, want %q", name, got, c.agent)
		}
	}
}

// encoding/json matches keys without case and keeps the last of duplicate
// keys: {"agent_id":"a","Agent_ID":"b"} would issue for b. The API refuses
// duplicates and any key not exactly a field name, saying which.
func TestBodyRefusesDuplicateAndCaseVariantKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	const ct = "application/json"
	admin := "Bearer " + adminKey
	iss := e.issue(agent, nil)
	for _, c := range []struct{ name, path, auth, body, key string }{
		{"case variant", "/v1/sessions", admin, `{"agent_id":"a","Agent_ID":"victim"}`, `"Agent_ID"`},
		{"only a case variant", "/v1/sessions", admin, `{"AGENT_ID":"victim"}`, `"AGENT_ID"`},
		{"duplicate", "/v1/sessions", admin, `{"agent_id":"a","agent_id":"victim"}`, `"agent_id"`},
		{"duplicate metadata key", "/v1/sessions", admin, `{"agent_id":"victim","metadata":{"k":"1","k":"2"}}`, `"k"`},
		{"duplicate metadata", "/v1/sessions", admin, `{"agent_id":"victim","metadata":{},"metadata":{"k":"2"}}`, `"metadata"`},
		{"token case variant", "/v1/sessions/authenticate", "", `{"agent_id":"` + agent + `","token":"x","Token":"` + iss.Token + `"}`, `"Token"`},
		{"token duplicate", "/v1/sessions/refresh", "", `{"agent_id":"` + agent + `","token":"x","token":"` + iss.Token + `"}`, `"token"`},
		{"limit case variant", "/v1/agents/victim/limit", admin, `{"Limit":1}`, `"Limit"`},
	} {
		method := "POST"
		if strings.HasSuffix(c.path, "/limit") {
			method = "PUT"
		}
		r := e.raw(method, c.path, c.auth, ct, c.body)
		want(t, c.name, r, http.StatusBadRequest, "bad_request")
		if !strings.Contains(r.message(), c.key) {
			t.Errorf("%s: message %q does not name %s", c.name, r.message(), c.key)
		}
	}
	if list, err := e.mgr.List(t.Context(), "victim"); err != nil || len(list) != 0 {
		t.Fatalf("sessions of victim: %v %v", list, err)
	}
	if l, err := e.mgr.AgentLimit(t.Context(), "victim"); err != nil || l.Override {
		t.Fatalf("limit of victim: %+v %v", l, err)
	}
	// Metadata keys differing in case are different keys.
	r := e.raw("POST", "/v1/sessions", admin, ct, `{"agent_id":"md","metadata":{"k":"1","K":"2"}}`)
	want(t, "metadata keys differing in case", r, http.StatusCreated, "")
	if md := decodeAs[server.IssuedResponse](t, r).Session.Metadata; md["k"] != "1" || md["K"] != "2" {
		t.Fatalf("metadata %v", md)
	}
}

// Bodies must be declared application/json (415 otherwise, missing
// Content-Type included); parameters and case are free, a charset must be
// UTF-8.
func TestBodyNeedsJSONContentType(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	admin := "Bearer " + adminKey
	iss := e.issue(agent, nil)
	routes := []struct{ method, path, auth, body string }{
		{"POST", "/v1/sessions", admin, `{"agent_id":"ct"}`},
		{"POST", "/v1/sessions/authenticate", "", `{"agent_id":"` + agent + `","token":"` + iss.Token + `"}`},
		{"PUT", "/v1/agents/ct/limit", admin, `{"limit":7}`},
	}
	for _, rt := range routes {
		for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "application/jsonx",
			"application/json; charset=latin1", "application/json; charset=utf-16", "json", ";"} {
			r := e.raw(rt.method, rt.path, rt.auth, ct, rt.body)
			want(t, rt.path+" with Content-Type "+ct, r, http.StatusUnsupportedMediaType, "unsupported_media_type")
			if !strings.Contains(r.message(), "application/json") {
				t.Errorf("%s %q: message %q does not name application/json", rt.path, ct, r.message())
			}
		}
		for _, ct := range []string{"application/json", "Application/JSON; charset=UTF-8", "application/json;charset=utf-8"} {
			r := e.raw(rt.method, rt.path, rt.auth, ct, rt.body)
			if r.status >= 300 {
				t.Errorf("%s with Content-Type %q: %s", rt.path, ct, r)
			}
		}
	}
	// Without the admin key the answer is still 401: the key is checked first.
	want(t, "no key, no type", e.raw("POST", "/v1/sessions", "", "", `{"agent_id":"ct"}`), http.StatusUnauthorized, "admin_key_required")
}

// A token route without its token or agent ID says which field is missing,
// with 400, not as a token failure.
func TestBodyMissingFields(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	iss := e.issue(agent, nil)
	for _, route := range []string{"/v1/sessions/authenticate", "/v1/sessions/refresh"} {
		for _, c := range []struct{ name, body, code, field string }{
			{"no token", `{"agent_id":"` + agent + `"}`, "missing_token", `"token"`},
			{"empty token", `{"agent_id":"` + agent + `","token":""}`, "missing_token", `"token"`},
			{"null token", `{"agent_id":"` + agent + `","token":null}`, "missing_token", `"token"`},
			{"no agent", `{"token":"` + iss.Token + `"}`, "missing_agent_id", `"agent_id"`},
			{"empty agent", `{"agent_id":"","token":"` + iss.Token + `"}`, "missing_agent_id", `"agent_id"`},
			{"nothing", `{}`, "missing_agent_id", `"agent_id"`},
		} {
			r := e.do("POST", route, "", c.body)
			want(t, route+": "+c.name, r, http.StatusBadRequest, c.code)
			if !strings.Contains(r.message(), c.field) || r.header.Get("WWW-Authenticate") != "" {
				t.Errorf("%s %s: %s %v should name %s, without a challenge", route, c.name, r, r.header, c.field)
			}
		}
	}
	r := e.admin("POST", "/v1/sessions", `{"metadata":{"k":"v"}}`)
	want(t, "issue without agent", r, http.StatusBadRequest, "missing_agent_id")
	if !strings.Contains(r.message(), `"agent_id"`) {
		t.Errorf("issue without agent: %s", r)
	}
}

// flakyStore is a memory store whose Get fails while down is set, with a
// cause naming a host as a driver's error would.
type flakyStore struct {
	*sessions.MemoryStore
	down atomic.Bool
}

func (f *flakyStore) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	if f.down.Load() {
		return sessions.Session{}, false, errors.New("dial tcp 10.9.8.7:5432: connection refused")
	}
	return f.MemoryStore.Get(ctx, id)
}

// The server answers every library error with exactly the status, code,
// message and Retry-After of sessions.HTTPError.
func TestServerAnswersPerTable(t *testing.T) {
	t.Parallel()
	store := &flakyStore{MemoryStore: sessions.NewMemoryStore()}
	clk := newClock()
	var before1970 atomic.Bool
	now := func() time.Time {
		if before1970.Load() {
			return time.Unix(-10, 0)
		}
		return clk.Now()
	}
	mgr, err := sessions.New(store, sessions.Config{Secret: secret, TTL: time.Hour, Limit: 1, MaxLifetime: time.Hour, Clock: now})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv, err := server.New(mgr, server.Options{AdminKey: []byte(adminKey), Logger: slogTo(logs)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	e := &env{t: t, url: ts.URL, srv: srv, mgr: mgr, clock: clk, logs: logs}
	ctx := t.Context()

	live := e.issue(agent, nil)
	theirs := e.issue(other, nil)
	gone := e.issue("revoked", nil)
	if _, err := mgr.Revoke(ctx, gone.Session.ID); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)

	cases := []struct {
		name   string
		before func()
		call   func() response
		lib    func() error // the same call on the library, after the API's
	}{
		{"invalid agent ID", nil,
			func() response { return e.admin("POST", "/v1/sessions", map[string]string{"agent_id": "a\x01b"}) },
			func() error { _, err := mgr.Issue(ctx, "a\x01b"); return err }},
		{"invalid metadata", nil,
			func() response {
				return e.admin("POST", "/v1/sessions", map[string]any{"agent_id": "m", "metadata": map[string]string{"": "v"}})
			},
			func() error {
				_, err := mgr.Issue(ctx, "m", sessions.WithMetadata(map[string]string{"": "v"}))
				return err
			}},
		{"invalid session ID", nil,
			func() response { return e.admin("DELETE", "/v1/sessions/%01", nil) },
			func() error { _, err := mgr.Revoke(ctx, "\x01"); return err }},
		{"invalid limit", nil,
			func() response { return e.admin("PUT", "/v1/agents/x/limit", `{"limit":0}`) },
			func() error { return mgr.SetAgentLimit(ctx, "x", 0) }},
		{"limit exceeded", nil,
			func() response { return e.admin("POST", "/v1/sessions", map[string]string{"agent_id": agent}) },
			func() error { _, err := mgr.Issue(ctx, agent); return err }},
		{"invalid token", nil,
			func() response { return e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, "garbage")) },
			func() error { _, err := mgr.Authenticate(ctx, "garbage", agent); return err }},
		{"invalid signature", nil,
			func() response {
				return e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, live.Token+"A"))
			},
			func() error { _, err := mgr.Authenticate(ctx, live.Token+"A", agent); return err }},
		{"another agent's token", nil,
			func() response { return e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, theirs.Token)) },
			func() error { _, err := mgr.Authenticate(ctx, theirs.Token, agent); return err }},
		{"revoked", nil,
			func() response { return e.do("POST", "/v1/sessions/refresh", "", tokenBody("revoked", gone.Token)) },
			func() error { _, err := mgr.Refresh(ctx, gone.Token, "revoked"); return err }},
		{"lifetime exceeded", nil,
			func() response { return e.do("POST", "/v1/sessions/refresh", "", tokenBody(agent, live.Token)) },
			func() error { _, err := mgr.Refresh(ctx, live.Token, agent); return err }},
		{"clock before 1970", func() { before1970.Store(true) },
			func() response { return e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, live.Token)) },
			func() error { _, err := mgr.Authenticate(ctx, live.Token, agent); return err }},
		{"store down", func() { before1970.Store(false); store.down.Store(true) },
			func() response { return e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, live.Token)) },
			func() error { _, err := mgr.Authenticate(ctx, live.Token, agent); return err }},
		{"expired", func() { store.down.Store(false); clk.Advance(2 * time.Hour) },
			func() response { return e.do("POST", "/v1/sessions/authenticate", "", tokenBody(other, theirs.Token)) },
			func() error { return sessions.ErrSessionExpired }}, // the API's call deleted it
	}
	for _, c := range cases {
		if c.before != nil {
			c.before()
		}
		r := c.call()
		libErr := c.lib()
		if libErr == nil {
			t.Fatalf("%s: the library call succeeded", c.name)
		}
		info := sessions.HTTPError(libErr)
		if r.status != info.Status || r.code() != info.Code || r.message() != info.Message {
			t.Errorf("%s: got %s, want %d %s %q", c.name, r, info.Status, info.Code, info.Message)
		}
		if r.header.Get("Retry-After") != info.RetryAfter() {
			t.Errorf("%s: Retry-After %q, want %q", c.name, r.header.Get("Retry-After"), info.RetryAfter())
		}
		if strings.Contains(string(r.body), "10.9.8.7") || strings.Contains(string(r.body), `\u003c`) {
			t.Errorf("%s: body %s leaks the store's cause or escapes HTML", c.name, r)
		}
	}
	if !strings.Contains(logs.String(), "10.9.8.7") {
		t.Errorf("the store failure's cause was not logged:\n%s", logs)
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// DELETE /v1/sessions/{id} is idempotent: 204 for an unknown or already
// revoked session too, and sessions_revoked_total counts only sessions
// that were revoked.
func TestRevokeUnknownSession(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	iss := e.issue(agent, nil)
	for _, id := range []string{iss.Session.ID, iss.Session.ID, "no-such-session"} {
		want(t, "revoke "+id, e.admin("DELETE", "/v1/sessions/"+id, nil), http.StatusNoContent, "")
	}
	if got := metric(t, e, "agentsessions_sessions_revoked_total"); got != 1 {
		t.Fatalf("sessions_revoked_total = %v after revoking one session (three DELETEs), want 1", got)
	}
}
