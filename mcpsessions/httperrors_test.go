package mcpsessions_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/mcpsessions"
	"github.com/agentsessions/agentsessions/sessions"
)

// flakyStore is a memory store whose Get fails while down is set, with a
// cause naming a host, as a driver's error would.
type flakyStore struct {
	*sessions.MemoryStore
	down atomic.Bool
}

func (f *flakyStore) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	if f.down.Load() {
		return sessions.Session{}, false, errors.New("dial tcp 10.7.7.7:5432: connection refused")
	}
	return f.MemoryStore.Get(ctx, id)
}

// Behind Adapter.Middleware a failed session check is answered with the
// status, Retry-After and message of sessions.HTTPError (503 only when
// the store failed; 500 when the server's clock is broken), while the MCP
// answers stay: 404 for a session ID that is unknown, terminated, forged
// or another agent's, 400 without one.
func TestMiddlewareAnswersPerTable(t *testing.T) {
	t.Parallel()
	store := &flakyStore{MemoryStore: sessions.NewMemoryStore()}
	var before1970 atomic.Bool
	now := func() time.Time {
		if before1970.Load() {
			return time.Unix(-10, 0)
		}
		return time.Now()
	}
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte("mcpsessions-table-secret-0123456789"), TTL: time.Hour, Limit: 5, Clock: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := newAdapter(t, m, mcpsessions.Options{AgentID: "agent-1"})
	other, _ := newAdapter(t, m, mcpsessions.Options{AgentID: "agent-2"})
	reached := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := a.Middleware(reached)
	live := a.Generate()
	revoked := a.Generate()
	if _, err := a.Terminate(revoked); err != nil {
		t.Fatal(err)
	}
	theirs := other.Generate()
	get := func(sid string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/mcp", nil)
		if sid != "" {
			r.Header.Set(server.HeaderKeySessionID, sid)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}

	for name, c := range map[string]struct {
		sid    string
		status int
	}{
		"valid":           {live, http.StatusTeapot},
		"no session id":   {"", http.StatusBadRequest},
		"terminated":      {revoked, http.StatusNotFound},
		"forged":          {"not-a-session-id", http.StatusNotFound},
		"another agent's": {theirs, http.StatusNotFound},
	} {
		if w := get(c.sid); w.Code != c.status {
			t.Errorf("%s: GET answered %d %s, want %d", name, w.Code, w.Body, c.status)
		}
	}

	for _, c := range []struct {
		name  string
		setup func()
	}{
		{"store down", func() { store.down.Store(true) }},
		{"clock before 1970", func() { store.down.Store(false); before1970.Store(true) }},
	} {
		c.setup()
		w := get(live)
		_, libErr := m.Authenticate(t.Context(), live, "agent-1")
		info := sessions.HTTPError(libErr)
		body, _ := io.ReadAll(w.Body)
		if w.Code != info.Status || w.Header().Get("Retry-After") != info.RetryAfter() ||
			!strings.Contains(string(body), info.Code) || !strings.Contains(string(body), info.Message) {
			t.Errorf("%s: got %d Retry-After %q %q, want %d Retry-After %q with %s: %s", c.name, w.Code,
				w.Header().Get("Retry-After"), body, info.Status, info.RetryAfter(), info.Code, info.Message)
		}
		if strings.Contains(string(body), "10.7.7.7") {
			t.Errorf("%s: body %q leaks the store's cause", c.name, body)
		}
		if _, err := a.Validate(live); err == nil || err.Error() != "mcpsessions: validate: "+info.Message {
			t.Errorf("%s: Validate error %v, want the table's message %q", c.name, err, info.Message)
		}
	}
}
