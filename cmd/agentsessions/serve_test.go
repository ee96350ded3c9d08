package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
)

// syncBuffer is a goroutine-safe writer for a running command's output.
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

// serving is an `agentsessions serve` running in-process.
type serving struct {
	t      *testing.T
	addr   string
	stderr *syncBuffer
	exit   chan int
}

var listeningRE = regexp.MustCompile(`(?:msg=listening addr=|"msg":"listening","addr":")([^\s"]+)`)

// startServe runs `serve --addr 127.0.0.1:0 args...` with ctx and waits
// until it listens. The caller ends ctx and calls wait.
func startServe(t *testing.T, ctx context.Context, args ...string) *serving {
	t.Helper()
	s := launchServe(t, ctx, args...)
	if code, listening := s.listenOrExit(); !listening {
		t.Fatalf("serve exited with %d before listening:\n%s", code, s.stderr.String())
	}
	return s
}

// launchServe starts `serve --addr 127.0.0.1:0 args...` with ctx and
// returns at once.
func launchServe(t *testing.T, ctx context.Context, args ...string) *serving {
	s := &serving{t: t, stderr: &syncBuffer{}, exit: make(chan int, 1)}
	go func() {
		s.exit <- runIO(ctx, append([]string{"serve", "--addr", "127.0.0.1:0"}, args...),
			strings.NewReader(""), io.Discard, s.stderr)
	}()
	return s
}

// listenOrExit waits until serve listens (and sets s.addr) or exits (and
// returns its status).
func (s *serving) listenOrExit() (code int, listening bool) {
	s.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if m := listeningRE.FindStringSubmatch(s.stderr.String()); m != nil {
			s.addr = m[1]
			return 0, true
		}
		select {
		case code := <-s.exit:
			return code, false
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("serve neither listened nor exited:\n%s", s.stderr.String())
		}
	}
}

// wait returns serve's exit status.
func (s *serving) wait() int {
	s.t.Helper()
	select {
	case code := <-s.exit:
		return code
	case <-time.After(60 * time.Second):
		s.t.Fatalf("serve did not stop:\n%s", s.stderr.String())
		return -1
	}
}

// call sends a JSON request and decodes a JSON answer into out (if not
// nil), returning the status.
func (s *serving) call(method, path, bearer, body string, out any) int {
	s.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+s.addr+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: %d %q: %v", method, path, res.StatusCode, b, err)
		}
	}
	return res.StatusCode
}

// serve with a database: the admin key from a file, the secret from the
// environment; a real SIGTERM drains an in-flight request, and nothing
// secret reaches the log.
func TestServePostgresAndSIGTERM(t *testing.T) {
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	t.Setenv(envAdminKey, "")
	const adminKey = "serve-admin-key-0123456789abcdef-0123456789"
	keyFile := writeFile(t, "admin.key", adminKey+"\n", 0o600)

	ctx, stop := signalContext()
	defer stop()
	s := startServe(t, ctx, "--admin-key-file", keyFile, "--limit", "2", "--log-format", "json")

	if code := s.call("GET", "/healthz", "", "", nil); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code := s.call("GET", "/readyz", "", "", nil); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	var iss server.IssuedResponse
	if code := s.call("POST", "/v1/sessions", adminKey, `{"agent_id":"`+agentA+`","metadata":{"client":"test"}}`, &iss); code != 201 {
		t.Fatalf("issue %d", code)
	}
	if code := s.call("POST", "/v1/sessions", "", `{"agent_id":"`+agentA+`"}`, nil); code != 401 {
		t.Fatalf("issue without the admin key: %d", code)
	}
	var sess server.SessionResponse
	if code := s.call("POST", "/v1/sessions/authenticate", "", `{"agent_id":"`+agentA+`","token":"`+iss.Token+`"}`, &sess); code != 200 ||
		sess.Session.Metadata["client"] != "test" {
		t.Fatalf("authenticate %d %+v", code, sess)
	}
	// The CLI on the same database and secret sees the same session.
	if out := mustCLI(t, "verify", "--token", iss.Token); !strings.Contains(out, iss.Session.ID) {
		t.Fatalf("CLI verify of a served token: %q", out)
	}
	// The --limit flag applies.
	s.call("POST", "/v1/sessions", adminKey, `{"agent_id":"`+agentA+`"}`, nil)
	if code := s.call("POST", "/v1/sessions", adminKey, `{"agent_id":"`+agentA+`"}`, nil); code != 409 {
		t.Fatalf("third issue with --limit 2: %d", code)
	}
	res, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		"agentsessions_sessions_issued_total 2", "agentsessions_limit_denials_total 1", "agentsessions_live_sessions 2",
		"agentsessions_store_serialization_retries_total 0",
	} {
		if !strings.Contains(string(metrics), want+"\n") {
			t.Fatalf("/metrics lacks %q", want)
		}
	}

	// An in-flight request: headers sent with Expect: 100-continue; the
	// 100 Continue proves the handler is running and reading the body.
	body := `{"agent_id":"` + agentB + `"}`
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", adminKey, len(body))
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 Continue") {
		t.Fatalf("no 100 Continue: %q %v", line, err)
	}
	if _, err := br.ReadString('\n'); err != nil { // the blank line
		t.Fatal(err)
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	// Wait until shutdown has begun: the listener is closed.
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after SIGTERM")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := io.WriteString(conn, body); err != nil {
		t.Fatal(err)
	}
	res, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("in-flight request: %v\n%s", err, s.stderr.String())
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 201 {
		t.Fatalf("in-flight request: %d %v %s", res.StatusCode, res.Header, b)
	}
	var drained server.IssuedResponse
	if err := json.Unmarshal(b, &drained); err != nil || drained.Session.AgentID != agentB {
		t.Fatalf("in-flight issue: %s %v", b, err)
	}
	if code := s.wait(); code != exitOK {
		t.Fatalf("serve exited %d:\n%s", code, s.stderr.String())
	}

	logs := s.stderr.String()
	for _, want := range []string{`"msg":"listening"`, `"store":"postgres"`, `"msg":"shutting down: no new connections; draining in-flight requests"`, `"msg":"stopped"`, `"route":"POST /v1/sessions"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
	for what, secret := range map[string]string{"secret": testSecret, "admin key": adminKey, "token": iss.Token, "drained token": drained.Token} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains the %s:\n%s", what, logs)
		}
	}
	// The drained session is in the store: its request context was not
	// cancelled by the signal.
	if out := mustCLI(t, "list", "--agent", agentB); !strings.Contains(out, drained.Session.ID) {
		t.Fatalf("drained session not stored: %q", out)
	}
}

// Without a database: the in-memory store, clearly logged, and a
// generated admin key printed once so the API is usable at once.
func TestServeMemoryMode(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	t.Setenv(envSecret, "")
	t.Setenv(envAdminKey, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startServe(t, ctx)
	logs := s.stderr.String()
	if !strings.Contains(logs, "NO DATABASE: sessions are kept in this process's memory") ||
		!strings.Contains(logs, "store=memory") || !strings.Contains(logs, "do not run more than one") {
		t.Fatalf("memory mode not clearly logged:\n%s", logs)
	}
	m := regexp.MustCompile(`generated an admin key for this process only.*\n\n    (\S+)\n`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no generated admin key on stderr:\n%s", logs)
	}
	key := m[1]
	if len(key) < 32 || strings.Count(logs, key) != 1 {
		t.Fatalf("admin key %q: too short or printed more than once", key)
	}
	var iss server.IssuedResponse
	if code := s.call("POST", "/v1/sessions", key, `{"agent_id":"`+agentA+`"}`, &iss); code != 201 {
		t.Fatalf("issue with the generated key: %d", code)
	}
	if code := s.call("POST", "/v1/sessions/authenticate", "", `{"agent_id":"`+agentA+`","token":"`+iss.Token+`"}`, nil); code != 200 {
		t.Fatalf("authenticate: %d", code)
	}
	var list server.SessionsResponse
	if code := s.call("GET", "/v1/agents/"+agentA+"/sessions", key, "", &list); code != 200 || len(list.Sessions) != 1 {
		t.Fatalf("list: %d %+v", code, list)
	}
	if code := s.call("GET", "/readyz", "", "", nil); code != 200 {
		t.Fatalf("readyz in memory mode: %d", code)
	}
	cancel()
	if code := s.wait(); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if strings.Contains(s.stderr.String(), iss.Token) {
		t.Fatal("the token was logged")
	}
}

// An admin key from the environment is used as is, and not printed.
func TestServeMemoryModeWithAdminKeyFromEnv(t *testing.T) {
	const key = "env-admin-key-0123456789abcdef-0123456789"
	t.Setenv("DATABASE_URL", "")
	t.Setenv(envSecret, testSecret)
	t.Setenv(envAdminKey, key)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startServe(t, ctx, "--ttl", "2h", "--policy", "evict-oldest", "--limit", "1")
	if code := s.call("POST", "/v1/sessions", key, `{"agent_id":"a"}`, nil); code != 201 {
		t.Fatalf("issue: %d", code)
	}
	var iss server.IssuedResponse
	if code := s.call("POST", "/v1/sessions", key, `{"agent_id":"a"}`, &iss); code != 201 || len(iss.Evicted) != 1 {
		t.Fatalf("issue under evict-oldest: %d %+v", code, iss)
	}
	cancel()
	s.wait()
	logs := s.stderr.String()
	if strings.Contains(logs, "generated an admin key") || strings.Contains(logs, key) || strings.Contains(logs, testSecret) {
		t.Fatalf("log:\n%s", logs)
	}
	if !strings.Contains(logs, "policy=evict-oldest") || !strings.Contains(logs, "ttl=2h0m0s") {
		t.Fatalf("settings not logged:\n%s", logs)
	}
}

func TestServeConfigErrors(t *testing.T) {
	d := testdb.New(t)
	t.Setenv(envAdminKey, "")
	t.Setenv(envSecret, "")
	t.Setenv("DATABASE_URL", d.URL)
	// With a database the secret is required: every instance must share it.
	wantCLI(t, exitUsage, "no signing secret: pass --secret-file PATH or set AGENTSESSIONS_SECRET", "serve", "--addr", "127.0.0.1:0")
	t.Setenv(envSecret, testSecret)
	t.Setenv(envAdminKey, "short-key")
	out := wantCLI(t, exitUsage, "the admin key from $AGENTSESSIONS_ADMIN_KEY is 9 bytes; use at least 32", "serve", "--addr", "127.0.0.1:0")
	if strings.Contains(out, "short-key") {
		t.Fatal("the short admin key was printed")
	}
	t.Setenv(envAdminKey, "")
	wantCLI(t, exitUsage, "cannot read --admin-key-file", "serve", "--addr", "127.0.0.1:0", "--admin-key-file", "/nonexistent/key")

	// A port already in use.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wantCLI(t, exitError, "cannot listen on "+ln.Addr().String(), "serve", "--addr", ln.Addr().String())
	t.Setenv(envAddr, ln.Addr().String())
	wantCLI(t, exitError, "cannot listen on "+ln.Addr().String()+" (--addr / AGENTSESSIONS_ADDR)", "serve")

	// With a database but no admin key, the admin routes are disabled
	// (and the log says so); the token routes work.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startServe(t, ctx)
	if code := s.call("GET", "/v1/agents/a/limit", "", "", nil); code != 401 {
		t.Fatalf("admin route without a key configured: %d", code)
	}
	if code := s.call("POST", "/v1/sessions/authenticate", "", `{"agent_id":"a","token":"x.y"}`, nil); code != 401 {
		t.Fatalf("authenticate garbage: %d", code)
	}
	cancel()
	s.wait()
	if !strings.Contains(s.stderr.String(), "no admin key: the admin routes (issue, revoke, list, limits) answer 401") {
		t.Fatalf("log:\n%s", s.stderr.String())
	}
}

// serve refuses an empty or partly migrated database, saying which
// command migrates it, instead of answering 503 forever; with --migrate it
// migrates and is ready.
func TestServeRefusesUnmigratedDatabase(t *testing.T) {
	d := testdb.NewEmpty(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	t.Setenv(envAdminKey, "")
	files := embeddedMigrations(t)

	refused := func(wantCount string) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s := launchServe(t, ctx)
		code, listening := s.listenOrExit()
		if listening {
			cancel()
			s.wait()
			t.Fatalf("serve started on an unmigrated database:\n%s", s.stderr.String())
		}
		errOut := s.stderr.String()
		for _, want := range []string{wantCount, "agentsessions migrate up --database-url \"$DATABASE_URL\"",
			"make migrate", "--migrate"} {
			if code != exitError || !strings.Contains(errOut, want) {
				t.Fatalf("exit %d, want %d with %q in:\n%s", code, exitError, want, errOut)
			}
		}
		if strings.Contains(errOut, d.URL) {
			t.Fatalf("the database URL is printed:\n%s", errOut)
		}
	}
	refused(fmt.Sprintf("%d migrations embedded in this binary not yet applied (first: 1)", len(files)))

	// Partly migrated: every migration but the newest.
	mustCLI(t, "migrate", "up")
	mustCLI(t, "migrate", "down")
	refused("1 migration embedded in this binary not yet applied (first: " +
		strings.TrimLeft(strings.SplitN(files[len(files)-1], "_", 2)[0], "0") + ")")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startServe(t, ctx, "--migrate")
	if code := s.call("GET", "/readyz", "", "", nil); code != 200 {
		t.Fatalf("readyz after --migrate: %d", code)
	}
	if !strings.Contains(s.stderr.String(), "migrations applied") {
		t.Fatalf("log:\n%s", s.stderr.String())
	}
	cancel()
	if code := s.wait(); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	// Migrated: serve starts without --migrate.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	s = startServe(t, ctx)
	if code := s.call("GET", "/readyz", "", "", nil); code != 200 {
		t.Fatalf("readyz on a migrated database: %d", code)
	}
	cancel()
	s.wait()
}

// Instances started together with --migrate on an empty database take
// turns under the advisory lock: all of them start, ready.
func TestServeMigrateConcurrentStarts(t *testing.T) {
	d := testdb.NewEmpty(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	t.Setenv(envAdminKey, "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var all []*serving
	for range 3 {
		all = append(all, launchServe(t, ctx, "--migrate"))
	}
	for i, s := range all {
		if code, listening := s.listenOrExit(); !listening {
			t.Fatalf("instance %d exited with %d:\n%s", i, code, s.stderr.String())
		}
		if code := s.call("GET", "/readyz", "", "", nil); code != 200 {
			t.Fatalf("instance %d: readyz %d", i, code)
		}
	}
	cancel()
	for i, s := range all {
		if code := s.wait(); code != exitOK {
			t.Fatalf("instance %d: exit %d:\n%s", i, code, s.stderr.String())
		}
	}
}

// A bad or busy --addr fails before serve generates (and prints) an admin
// key, in memory mode where it would generate one.
func TestServeBadAddrFailsBeforeAdminKey(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	t.Setenv(envSecret, "")
	t.Setenv(envAdminKey, "")
	t.Setenv(envAddr, "")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, c := range []struct {
		addr string
		code int
		want string
	}{
		{"nonsense", exitUsage, `--addr / $AGENTSESSIONS_ADDR "nonsense" is not a listen address HOST:PORT`},
		{"127.0.0.1:notaport", exitUsage, "is not a listen address"},
		{"127.0.0.1:99999", exitUsage, "is not a listen address"},
		{"no such host.invalid:8080", exitUsage, "is not a listen address"},
		{busy.Addr().String(), exitError, "cannot listen on " + busy.Addr().String()},
	} {
		code, out, errOut := cli(t, "serve", "--addr", c.addr)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("--addr %q: exit %d, stderr %q; want exit %d and %q", c.addr, code, errOut, c.code, c.want)
		}
		if strings.Contains(out+errOut, "admin key") {
			t.Errorf("--addr %q: an admin key was generated before the address failed:\n%s", c.addr, out+errOut)
		}
	}
	// The same from the environment.
	t.Setenv(envAddr, "nonsense")
	if code, _, errOut := cli(t, "serve"); code != exitUsage || !strings.Contains(errOut, "is not a listen address") {
		t.Errorf("$%s=nonsense: exit %d, %q", envAddr, code, errOut)
	}
}

// --idle-timeout: a session used every 300ms outlives a 2s idle timeout;
// one left alone is refused with 401 expired, saying idle; the instance's
// writes of last use show on /metrics.
func TestServeIdleTimeout(t *testing.T) {
	const key = "env-admin-key-0123456789abcdef-0123456789"
	t.Setenv("DATABASE_URL", "")
	t.Setenv(envSecret, testSecret)
	t.Setenv(envAdminKey, key)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := startServe(t, ctx, "--idle-timeout", "2s")
	var used, unused server.IssuedResponse
	for _, out := range []*server.IssuedResponse{&used, &unused} {
		if code := s.call("POST", "/v1/sessions", key, `{"agent_id":"a"}`, out); code != 201 {
			t.Fatalf("issue: %d", code)
		}
	}
	auth := func(tok string, out any) int {
		return s.call("POST", "/v1/sessions/authenticate", "", `{"agent_id":"a","token":"`+tok+`"}`, out)
	}
	for start := time.Now(); time.Since(start) < 3*time.Second; time.Sleep(300 * time.Millisecond) {
		if code := auth(used.Token, nil); code != 200 {
			t.Fatalf("a session used every 300ms, %s after issue: %d", time.Since(start), code)
		}
	}
	var refused struct {
		Error struct{ Code, Message string }
	}
	if code := auth(unused.Token, &refused); code != 401 || refused.Error.Code != "expired" || !strings.Contains(refused.Error.Message, "idle") {
		t.Fatalf("a session unused for 3s under --idle-timeout 2s: %d %v, want 401 expired saying idle", code, refused)
	}
	res, err := http.Get("http://" + s.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if m := regexp.MustCompile(`(?m)^agentsessions_last_use_writes_total (\d+)`).FindSubmatch(metrics); m == nil || string(m[1]) == "0" {
		t.Errorf("after 3s of uses with 1s batches, /metrics has no last-use writes: %q", m)
	}
	cancel()
	if code := s.wait(); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(s.stderr.String(), "idle_timeout=2s") {
		t.Errorf("idle timeout not logged:\n%s", s.stderr.String())
	}
}
