package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	d := testdb.NewEmpty(t)
	e := newEnv(t, d, envConfig{})
	want(t, "healthz", e.do("GET", "/healthz", "", nil), 200, "")

	// No migrations at all.
	r := e.do("GET", "/readyz", "", nil)
	want(t, "readyz, empty schema", r, 503, "not_ready")
	if !strings.Contains(r.String(), "no migrations are applied: run 'agentsessions migrate up'") {
		t.Fatalf("readyz message: %s", r)
	}

	// Only the first migration: still not ready, the message names the
	// first missing one.
	db := stdlib.OpenDBFromPool(d.Pool(t))
	t.Cleanup(func() { _ = db.Close() })
	p, err := migrations.NewProvider(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", "/readyz", "", nil)
	want(t, "readyz, partly migrated", r, 503, "not_ready")
	if !strings.Contains(r.String(), "are not applied (first: 2): run 'agentsessions migrate up'") {
		t.Fatalf("readyz message: %s", r)
	}
	want(t, "healthz while not ready", e.do("GET", "/healthz", "", nil), 200, "")

	// Every migration: ready.
	if _, err := p.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", "/readyz", "", nil)
	want(t, "readyz, migrated", r, 200, "")
	if strings.TrimSpace(string(r.body)) != `{"status":"ready"}` {
		t.Fatalf("readyz body: %s", r)
	}

	// Rolled back by one: not ready again.
	if _, err := p.Down(t.Context()); err != nil {
		t.Fatal(err)
	}
	want(t, "readyz after a rollback", e.do("GET", "/readyz", "", nil), 503, "not_ready")
	if !strings.Contains(e.logs.String(), "not ready") {
		t.Fatalf("not-ready cause not logged:\n%s", e.logs.String())
	}
}

// An unreachable database makes /readyz fail without naming the host;
// /healthz still answers.
func TestReadinessUnreachableDatabase(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(t.Context(), "postgres://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	ready := store.Ready
	mgr, err := sessions.New(sessions.NewMemoryStore(), sessions.Config{Secret: secret, TTL: time.Hour, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv, err := server.New(mgr, server.Options{Ready: ready, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, url: startServer(t, srv), logs: logs}
	r := e.do("GET", "/readyz", "", nil)
	want(t, "readyz", r, 503, "not_ready")
	if !strings.Contains(r.String(), "the database is unreachable") || strings.Contains(r.String(), "127.0.0.1") {
		t.Fatalf("readyz body: %s", r)
	}
	if !strings.Contains(logs.String(), "127.0.0.1") {
		t.Fatalf("the log lacks the cause:\n%s", logs.String())
	}
	want(t, "healthz", e.do("GET", "/healthz", "", nil), 200, "")
}

// startServer serves h with Run on a loopback port until the test ends.
func startServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.Run(ctx, ln, h, server.RunOptions{}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// waitRefused waits until nothing accepts connections on addr any more.
func waitRefused(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		_ = c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the server still accepts connections after shutdown began")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Shutdown stops accepting at once but lets an in-flight request finish,
// with its context intact (the issue reaches the database), and stops the
// background work only after it.
func TestRunDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testdb.New(t), envConfig{})
	started, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/sessions" {
			close(started)
			<-release
		}
		e.srv.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bgStopped := make(chan struct{})
	logs := &syncBuffer{}
	ran := make(chan error, 1)
	go func() {
		ran <- server.Run(ctx, ln, h, server.RunOptions{
			ShutdownTimeout: time.Minute,
			Logger:          slog.New(slog.NewTextHandler(logs, nil)),
			Background: func(ctx context.Context) {
				<-ctx.Done()
				close(bgStopped)
			},
		})
	}()

	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/sessions", strings.NewReader(`{"agent_id":"`+agent+`"}`))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		got <- result{status: res.StatusCode, body: string(b)}
	}()

	<-started
	cancel() // SIGTERM, as main does
	waitRefused(t, addr)
	select {
	case <-bgStopped:
		t.Fatal("background work stopped while a request was in flight")
	case err := <-ran:
		t.Fatalf("Run returned with a request in flight: %v", err)
	default:
	}
	close(release)
	res := <-got
	if res.err != nil || res.status != http.StatusCreated {
		t.Fatalf("in-flight request: %d %s %v", res.status, res.body, res.err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	<-bgStopped
	if list, err := e.mgr.List(t.Context(), agent); err != nil || len(list) != 1 {
		t.Fatalf("sessions after drain: %v %v", list, err)
	}
	if !strings.Contains(logs.String(), "draining in-flight requests") || !strings.Contains(logs.String(), "stopped") {
		t.Fatalf("log:\n%s", logs.String())
	}
}

// A request still running at the end of the timeout is cut off and Run
// says so.
func TestRunShutdownTimeout(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	handlerDone := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
		close(started)
		<-release
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- server.Run(ctx, ln, h, server.RunOptions{ShutdownTimeout: 50 * time.Millisecond}) }()
	clientDone := make(chan error, 1)
	go func() {
		res, err := http.Get("http://" + ln.Addr().String() + "/slow")
		if err == nil {
			res.Body.Close()
		}
		clientDone <- err
	}()
	<-started
	cancel()
	if err := <-ran; !errors.Is(err, server.ErrShutdownTimeout) {
		t.Fatalf("Run: %v, want ErrShutdownTimeout", err)
	}
	if err := <-clientDone; err == nil {
		t.Fatal("the cut-off request got a response")
	}
	close(release)
	<-handlerDone
}

func TestRunFailsOnClosedListener(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = ln.Close()
	if err := server.Run(context.Background(), ln, http.NotFoundHandler(), server.RunOptions{}); err == nil {
		t.Fatal("Run on a closed listener returned nil")
	}
}

// Two instances (two pools, two servers) on one database: the limit holds
// across them under concurrent issues, and a session issued, revoked or
// re-limited on one is seen by the other.
func TestMultiInstance(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	a := newEnv(t, d, envConfig{limit: 3})
	b := newEnv(t, d, envConfig{limit: 3, clock: a.clock})
	instances := []*env{a, b}

	const attempts = 24
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		codes  = map[int]int{}
		tokens []string
	)
	for i := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := instances[i%2].do("POST", "/v1/sessions", "Bearer "+adminKey, `{"agent_id":"`+agent+`"}`)
			mu.Lock()
			defer mu.Unlock()
			codes[r.status]++
			if r.status == http.StatusCreated {
				var iss server.IssuedResponse
				if err := json.Unmarshal(r.body, &iss); err != nil {
					t.Error(err)
				}
				tokens = append(tokens, iss.Token)
			}
		}()
	}
	wg.Wait()
	if codes[201] != 3 || codes[409] != attempts-3 {
		t.Fatalf("status counts %v; want 3 x 201 and %d x 409", codes, attempts-3)
	}
	list, err := a.mgr.List(t.Context(), agent)
	if err != nil || len(list) != 3 {
		t.Fatalf("stored sessions: %d %v", len(list), err)
	}
	retries := metric(t, a, "agentsessions_store_serialization_retries_total") +
		metric(t, b, "agentsessions_store_serialization_retries_total")
	denials := metric(t, a, "agentsessions_limit_denials_total") + metric(t, b, "agentsessions_limit_denials_total")
	if denials != attempts-3 {
		t.Fatalf("limit denials on both instances: %v, want %d", denials, attempts-3)
	}
	t.Logf("%d concurrent issues on 2 instances: %v; serialization retries: %v", attempts, codes, retries)

	// Every token works on both instances; a revoke on one is seen by the
	// other.
	for _, tok := range tokens {
		for _, e := range instances {
			want(t, "cross-instance authenticate", e.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, tok)), 200, "")
		}
	}
	r := b.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, tokens[0]))
	var sess server.SessionResponse
	if err := json.Unmarshal(r.body, &sess); err != nil {
		t.Fatal(err)
	}
	want(t, "revoke on b", b.admin("DELETE", "/v1/sessions/"+sess.Session.ID, nil), 204, "")
	want(t, "revoked, seen on a", a.do("POST", "/v1/sessions/authenticate", "", tokenBody(agent, tokens[0])), 401, "unauthorized")

	// A limit override set on one instance applies on the other.
	want(t, "override on a", a.admin("PUT", "/v1/agents/"+agent+"/limit", `{"limit":4}`), 200, "")
	want(t, "issue on b under the override", b.admin("POST", "/v1/sessions", map[string]string{"agent_id": agent}), 201, "")
	want(t, "issue on b under the override", b.admin("POST", "/v1/sessions", map[string]string{"agent_id": agent}), 201, "")
	want(t, "issue on a over the override", a.admin("POST", "/v1/sessions", map[string]string{"agent_id": agent}), 409, "limit_exceeded")
}
