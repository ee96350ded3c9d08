package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
)

// Two instances on one database, one with --cache-max-staleness: it
// answers repeated authentications from its cache (see /metrics) and
// refuses a token revoked on the other instance once the bound has passed.
func TestServeCache(t *testing.T) {
	const staleness = 200 * time.Millisecond
	d := testdb.New(t)
	t.Setenv("DATABASE_URL", d.URL)
	t.Setenv(envSecret, testSecret)
	const adminKey = "serve-admin-key-0123456789abcdef-0123456789"
	t.Setenv(envAdminKey, adminKey)

	wantCLI(t, exitUsage, "--cache-max-staleness must be 0 (off) or at least 20ms", "serve", "--cache-max-staleness", "5ms")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cached := startServe(t, ctx, "--cache-max-staleness", staleness.String())
	plain := startServe(t, ctx)

	metric := func(name string) string {
		res, err := http.Get("http://" + cached.addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		return ""
	}
	for deadline := time.Now().Add(10 * time.Second); metric("agentsessions_cache_fresh") != "1"; {
		if time.Now().After(deadline) {
			t.Fatalf("cache never fresh; log:\n%s", cached.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	var iss server.IssuedResponse
	if code := plain.call("POST", "/v1/sessions", adminKey, `{"agent_id":"`+agentA+`"}`, &iss); code != 201 {
		t.Fatalf("issue %d", code)
	}
	auth := `{"agent_id":"` + agentA + `","token":"` + iss.Token + `"}`
	for range 3 {
		if code := cached.call("POST", "/v1/sessions/authenticate", "", auth, nil); code != 200 {
			t.Fatalf("authenticate on the cached instance: %d", code)
		}
	}
	if hits := metric("agentsessions_cache_hits_total"); hits == "" || hits == "0" {
		t.Fatalf("cache hits %q after three authentications", hits)
	}
	if code := plain.call("DELETE", "/v1/sessions/"+iss.Session.ID, adminKey, "", nil); code != 204 {
		t.Fatalf("revoke %d", code)
	}
	time.Sleep(staleness)
	if code := cached.call("POST", "/v1/sessions/authenticate", "", auth, nil); code != 401 {
		t.Fatalf("token revoked on the other instance %v ago: %d", staleness, code)
	}
	cancel()
	cached.wait()
	plain.wait()
}
