package pgxstore_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// With the database gone, the middleware answers 503 store_unavailable
// with Retry-After, never 401 (the token may be fine), and the handler is
// not reached.
func TestMiddlewareDatabaseDown(t *testing.T) {
	t.Parallel()
	pool := testdb.New(t).Pool(t)
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, store, 3)
	reached := false
	h := sessions.Middleware(e.Manager, sessions.MiddlewareConfig{})(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached = true }))
	iss := mustIssue(t, e.Manager, agent)
	pool.Close()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+iss.Token)
	r.Header.Set(sessions.DefaultAgentHeader, agent)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), `"store_unavailable"`) || w.Header().Get("Retry-After") == "" {
		t.Fatalf("store down: got %d %s %v, want 503 store_unavailable with Retry-After", w.Code, w.Body, w.Header())
	}
	if reached {
		t.Fatal("the handler was reached with the store down")
	}
}
