package gosdkauth_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"

	"github.com/agentsessions/agentsessions/mcpsessions/gosdkauth"
	"github.com/agentsessions/agentsessions/sessions"
)

const agent = "agent-gosdkauth"

// store is a memory store that counts the calls reaching it and fails them
// all while down is set.
type store struct {
	*sessions.MemoryStore
	calls atomic.Int64
	down  atomic.Bool
}

var errDown = errors.New("connection refused (db.internal:5432)")

func (s *store) hit() error {
	s.calls.Add(1)
	if s.down.Load() {
		return errDown
	}
	return nil
}

func (s *store) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	if err := s.hit(); err != nil {
		return sessions.Session{}, false, err
	}
	return s.MemoryStore.Get(ctx, id)
}

func (s *store) DeleteExpired(ctx context.Context, id, digest string, now time.Time) error {
	if err := s.hit(); err != nil {
		return err
	}
	return s.MemoryStore.DeleteExpired(ctx, id, digest, now)
}

func newManager(t *testing.T) (*sessions.Manager, *store) {
	t.Helper()
	st := &store{MemoryStore: sessions.NewMemoryStore()}
	m, err := sessions.New(st, sessions.Config{Secret: []byte("gosdkauth-test-secret-0123456789ab"), TTL: time.Hour, Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	return m, st
}

func issue(t *testing.T, m *sessions.Manager) sessions.Issued {
	t.Helper()
	iss, err := m.Issue(context.Background(), agent)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// The verifier's TokenInfo: the agent as UserID, the session's expiry, the
// session in Extra, no scopes.
func TestTokenVerifierTokenInfo(t *testing.T) {
	m, _ := newManager(t)
	iss := issue(t, m)
	ti, err := gosdkauth.TokenVerifier(m)(context.Background(), iss.Token, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ti.UserID != agent || !ti.Expiration.Equal(iss.Session.ExpiresAt) || len(ti.Scopes) != 0 {
		t.Fatalf("TokenInfo = %+v; want UserID %q, Expiration %v, no scopes", ti, agent, iss.Session.ExpiresAt)
	}
	s, ok := gosdkauth.SessionFromTokenInfo(ti)
	if !ok || s.ID != iss.Session.ID || s.AgentID != agent {
		t.Fatalf("SessionFromTokenInfo = %+v, %v; want session %s", s, ok, iss.Session.ID)
	}
	if _, ok := ti.Extra[gosdkauth.ExtraSessionKey].(sessions.Session); !ok {
		t.Fatalf("Extra[%q] is not a sessions.Session", gosdkauth.ExtraSessionKey)
	}
	if _, ok := gosdkauth.SessionFromTokenInfo(nil); ok {
		t.Fatal("SessionFromTokenInfo(nil) is ok")
	}
	if _, ok := gosdkauth.SessionFromTokenInfo(&auth.TokenInfo{UserID: "x"}); ok {
		t.Fatal("SessionFromTokenInfo of another verifier's info is ok")
	}
}

// Forged and malformed tokens are auth.ErrInvalidToken without a store
// call; revoked ones are auth.ErrInvalidToken; a store failure is not (so
// go-sdk does not answer it 401), matches sessions.ErrStore, and its text
// holds neither the token nor the database's error.
func TestTokenVerifierErrors(t *testing.T) {
	m, st := newManager(t)
	verify := gosdkauth.TokenVerifier(m)
	ctx := context.Background()
	iss := issue(t, m)

	for _, tok := range []string{"", "garbage", "a.b", iss.Token + "x", strings.ToUpper(iss.Token)} {
		before := st.calls.Load()
		_, err := verify(ctx, tok, nil)
		if !errors.Is(err, auth.ErrInvalidToken) {
			t.Fatalf("token %q: err = %v, want auth.ErrInvalidToken", tok, err)
		}
		if n := st.calls.Load() - before; n != 0 {
			t.Fatalf("token %q cost %d store calls, want 0", tok, n)
		}
	}

	st.down.Store(true)
	_, err := verify(ctx, iss.Token, nil)
	if err == nil || errors.Is(err, auth.ErrInvalidToken) || !errors.Is(err, sessions.ErrStore) {
		t.Fatalf("store down: err = %v; want sessions.ErrStore, not auth.ErrInvalidToken", err)
	}
	if strings.Contains(err.Error(), iss.Token) || strings.Contains(err.Error(), "db.internal") {
		t.Fatalf("store down: error text %q leaks the token or the database's error", err)
	}
	st.down.Store(false)

	if _, err := m.Revoke(ctx, iss.Session.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(ctx, iss.Token, nil); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("revoked: err = %v, want auth.ErrInvalidToken", err)
	}
}

func serve(h http.Handler, token string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader("{}"))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// RequireBearerToken's answers, and what reaches the handler.
func TestRequireBearerToken(t *testing.T) {
	m, st := newManager(t)
	iss := issue(t, m)
	var failures atomic.Int32
	mw, err := gosdkauth.RequireBearerToken(m, gosdkauth.Options{
		ResourceMetadataURL: "https://mcp.example/.well-known/oauth-protected-resource",
		OnError:             func(context.Context, error) { failures.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int32
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		ti := auth.TokenInfoFromContext(r.Context())
		s, ok := gosdkauth.SessionFromTokenInfo(ti)
		cs, cok := sessions.SessionFromContext(r.Context())
		if !ok || !cok || s.ID != iss.Session.ID || cs.ID != s.ID || ti.UserID != agent {
			http.Error(w, "wrong context", http.StatusTeapot)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	const rm = `resource_metadata="https://mcp.example/.well-known/oauth-protected-resource"`

	if w := serve(h, iss.Token); w.Code != http.StatusNoContent {
		t.Fatalf("valid token: %d %s", w.Code, w.Body)
	}
	calls := st.calls.Load()

	w := serve(h, "")
	if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") != "Bearer "+rm {
		t.Fatalf("no token: %d, WWW-Authenticate %q", w.Code, w.Header().Get("WWW-Authenticate"))
	}
	w = serve(h, "forged.token")
	if w.Code != http.StatusUnauthorized ||
		!strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer "+rm+`, error="invalid_token", error_description="`) {
		t.Fatalf("forged token: %d, WWW-Authenticate %q", w.Code, w.Header().Get("WWW-Authenticate"))
	}
	if !strings.HasPrefix(w.Body.String(), sessions.CodeInvalidToken+": ") {
		t.Fatalf("forged token: body %q", w.Body)
	}
	if n := st.calls.Load() - calls; n != 0 {
		t.Fatalf("missing and forged tokens cost %d store calls", n)
	}

	st.down.Store(true)
	w = serve(h, iss.Token)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "1" || w.Header().Get("WWW-Authenticate") != "" {
		t.Fatalf("store down: %d, Retry-After %q, WWW-Authenticate %q", w.Code, w.Header().Get("Retry-After"), w.Header().Get("WWW-Authenticate"))
	}
	if !strings.HasPrefix(w.Body.String(), sessions.CodeStoreUnavailable+": ") || strings.Contains(w.Body.String(), "db.internal") {
		t.Fatalf("store down: body %q", w.Body)
	}
	if failures.Load() != 1 {
		t.Fatalf("OnError called %d times, want 1", failures.Load())
	}
	st.down.Store(false)

	if _, err := m.Revoke(context.Background(), iss.Session.ID); err != nil {
		t.Fatal(err)
	}
	if w := serve(h, iss.Token); w.Code != http.StatusUnauthorized ||
		!strings.Contains(w.Header().Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Fatalf("revoked: %d, WWW-Authenticate %q", w.Code, w.Header().Get("WWW-Authenticate"))
	}
	if reached.Load() != 1 || failures.Load() != 1 {
		t.Fatalf("handler reached %d times, OnError %d; want 1 and 1", reached.Load(), failures.Load())
	}
}

// Why RequireBearerToken wraps go-sdk's middleware: with TokenVerifier
// alone, auth.RequireBearerToken (v1.8.0) answers a store outage 500.
func TestPlainSDKMiddlewareAnswersStoreOutage500(t *testing.T) {
	m, st := newManager(t)
	iss := issue(t, m)
	h := auth.RequireBearerToken(gosdkauth.TokenVerifier(m), nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	if w := serve(h, iss.Token); w.Code != http.StatusNoContent {
		t.Fatalf("valid token: %d %s", w.Code, w.Body)
	}
	if w := serve(h, "forged.token"); w.Code != http.StatusUnauthorized {
		t.Fatalf("forged token: %d", w.Code)
	}
	st.down.Store(true)
	if w := serve(h, iss.Token); w.Code != http.StatusInternalServerError {
		t.Fatalf("store down: %d, want go-sdk's 500", w.Code)
	}
}

func TestRequireBearerTokenOptions(t *testing.T) {
	m, _ := newManager(t)
	for name, tc := range map[string]struct {
		m    *sessions.Manager
		opts gosdkauth.Options
	}{
		"nil manager":      {nil, gosdkauth.Options{}},
		"negative timeout": {m, gosdkauth.Options{Timeout: -time.Second}},
		"quoted URL":       {m, gosdkauth.Options{ResourceMetadataURL: `https://x/"`}},
	} {
		if _, err := gosdkauth.RequireBearerToken(tc.m, tc.opts); !errors.Is(err, gosdkauth.ErrInvalidOptions) {
			t.Errorf("%s: err = %v, want ErrInvalidOptions", name, err)
		}
	}
}
