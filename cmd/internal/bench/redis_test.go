package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisURL is the Redis the peer tests use: $BENCH_REDIS_URL, else the
// local default.
func redisURL() string {
	if u := os.Getenv("BENCH_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

func newTestPeer(t *testing.T, limit int) *redisPeer {
	t.Helper()
	cfg, err := Config{DatabaseURL: "unused", RedisURL: redisURL(), Instances: 2, Workers: 2, Limit: limit,
		Agents: 10, Sessions: 6}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p, skipped := newRedisPeer(context.Background(), cfg)
	if p == nil {
		t.Skipf("Redis peer tests need a Redis: %s", skipped)
	}
	t.Cleanup(p.close)
	return p
}

// The peer does the job the store does: at most limit live sessions per
// agent, expired ones dropped by the next issue, authenticate by digest,
// revoke frees a slot.
func TestRedisPeerHoldsTheLimit(t *testing.T) {
	p := newTestPeer(t, 2)
	ctx := context.Background()
	c := p.clients[0]
	a, err := p.issue(ctx, c, "agent-1", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.issue(ctx, p.clients[1], "agent-1", "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.issue(ctx, c, "agent-1", "s3"); !errors.Is(err, errRedisLimit) {
		t.Fatalf("third session at limit 2: %v", err)
	}
	if err := p.authenticate(ctx, c, a); err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	forged := a
	forged.token += "x"
	if err := p.authenticate(ctx, c, forged); !errors.Is(err, errRedisUnknown) {
		t.Fatalf("wrong token: %v", err)
	}
	other := a
	other.agent = "agent-2"
	if err := p.authenticate(ctx, c, other); !errors.Is(err, errRedisUnknown) {
		t.Fatalf("another agent's session: %v", err)
	}
	if err := p.revoke(ctx, c, a); err != nil {
		t.Fatal(err)
	}
	if err := p.authenticate(ctx, c, a); !errors.Is(err, errRedisUnknown) {
		t.Fatalf("revoked session: %v", err)
	}
	if _, err := p.issue(ctx, c, "agent-1", "s4"); err != nil {
		t.Fatalf("issue after a revoke freed a slot: %v", err)
	}
	// An expired member (score in the past) is dropped by the next issue.
	if err := c.ZAdd(ctx, p.agentKey("agent-3"), redisZ(time.Now().Add(-time.Minute).Unix(), "old-1"), redisZ(time.Now().Add(-time.Minute).Unix(), "old-2")).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.issue(ctx, c, "agent-3", "s5"); err != nil {
		t.Fatalf("issue with only expired members: %v", err)
	}
	if n, err := c.ZCard(ctx, p.agentKey("agent-3")).Result(); err != nil || n != 1 {
		t.Fatalf("agent-3 holds %d members (%v), want 1 after the expired were dropped", n, err)
	}

	var res Result
	if err := p.check(ctx, &res); err != nil {
		t.Fatal(err)
	}
	if res.OverLimitAgents != 0 || res.Rows != 3 {
		t.Fatalf("check: over-limit %d, members %d; want 0 and 3", res.OverLimitAgents, res.Rows)
	}
	// The invariant check sees an agent pushed over the limit behind the
	// script's back.
	for i := range 3 {
		if err := c.ZAdd(ctx, p.agentKey("agent-9"), redisZ(time.Now().Add(time.Hour).Unix(), "x"+strconv.Itoa(i))).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.check(ctx, &res); err != nil {
		t.Fatal(err)
	}
	if res.OverLimitAgents != 1 {
		t.Fatalf("check: over-limit %d, want 1", res.OverLimitAgents)
	}
}

// A run's keys share a prefix and go when the peer closes; nothing else
// in the Redis is touched.
func TestRedisPeerCleansUpOnlyItsKeys(t *testing.T) {
	p := newTestPeer(t, 5)
	ctx := context.Background()
	c := p.clients[0]
	bystander := "agentsessions-bench-test-bystander:" + randomHex(4)
	if err := c.Set(ctx, bystander, "keep me", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	defer c.Del(context.Background(), bystander)
	pre, err := p.prefill(ctx, WorkloadAuthenticate)
	if err != nil {
		t.Fatal(err)
	}
	if len(pre) != 6 {
		t.Fatalf("prefill: %d sessions, want 6", len(pre))
	}
	for _, s := range pre {
		if err := p.authenticate(ctx, c, s); err != nil {
			t.Fatalf("prefilled %v: %v", s.sid, err)
		}
	}
	if err := p.deleteKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Exists(ctx, p.agentKey("1"), p.sessionKey(pre[0].sid)).Result(); err != nil || n != 0 {
		t.Fatalf("%d keys left (%v)", n, err)
	}
	if v, err := c.Get(ctx, bystander).Result(); err != nil || v != "keep me" {
		t.Fatalf("bystander key: %q %v", v, err)
	}
}

func TestRedisPeerSkipsWithAClearReason(t *testing.T) {
	cfg, err := Config{DatabaseURL: "unused", RedisURL: "redis://127.0.0.1:1/0"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p, skipped := newRedisPeer(context.Background(), cfg)
	if p != nil || skipped == "" || !strings.Contains(skipped, "no Redis reachable at 127.0.0.1:1") {
		t.Fatalf("peer %v, skipped %q", p, skipped)
	}
	if _, skipped := newRedisPeer(context.Background(), Config{RedisURL: "http://nope"}); !strings.Contains(skipped, "bad --redis-url") {
		t.Fatalf("bad URL: %q", skipped)
	}
}

// roundTrips counts the commands and pipelines a go-redis client sends.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { r.n.Add(1); return next(ctx, cmd) }
}
func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { r.n.Add(1); return next(ctx, cmds) }
}

// The invariant check takes a fixed number of round trips, not one per
// agent: 3,000 agents (one pushed over the limit) are checked in at most
// two (EVALSHA, and EVAL when the script was not loaded yet), and the
// prefill of 6,000 sessions goes in pipelines, not one call each.
func TestRedisCheckRoundTripsDoNotGrowWithAgents(t *testing.T) {
	p := newTestPeer(t, 2)
	p.cfg.Agents, p.cfg.Sessions = 3000, 6000
	ctx := context.Background()
	var rt roundTrips
	p.clients[0].AddHook(&rt)
	pre, err := p.prefill(ctx, WorkloadAuthenticate)
	if err != nil || len(pre) != 6000 {
		t.Fatalf("prefill: %d sessions, %v", len(pre), err)
	}
	if n := rt.n.Load(); n > 6000/redisPrefillBatch+10 {
		t.Errorf("prefill of 6,000 sessions took %d round trips on one client; want pipelines", n)
	}
	if err := p.clients[0].ZAdd(ctx, p.agentKey("1"), redisZ(time.Now().Add(time.Hour).Unix(), "extra")).Err(); err != nil {
		t.Fatal(err)
	}
	for run := range 2 { // the second run finds the script loaded
		rt.n.Store(0)
		var res Result
		if err := p.check(ctx, &res); err != nil {
			t.Fatal(err)
		}
		if res.Rows != 6001 || res.OverLimitAgents != 1 {
			t.Errorf("check: %d members, %d over the limit; want 6001 and 1", res.Rows, res.OverLimitAgents)
		}
		if n := rt.n.Load(); n > 2 || (run == 1 && n != 1) {
			t.Errorf("check run %d over 3,000 agents took %d round trips", run+1, n)
		}
	}
}

// The durable server the bench starts really fsyncs every write to its
// append-only file, and it is gone (and its directory) after stop.
func TestDurableRedisServer(t *testing.T) {
	srv, why := startRedisServer(context.Background(), "redis-server")
	if srv == nil {
		t.Skipf("durable Redis needs redis-server: %s", why)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			srv.stop()
		}
	})
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: srv.addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	for key, want := range map[string]string{"appendonly": "yes", "appendfsync": "always", "save": ""} {
		got, err := c.ConfigGet(ctx, key).Result()
		if err != nil || got[key] != want {
			t.Errorf("CONFIG GET %s = %v (%v), want %q", key, got, err, want)
		}
	}
	if got, err := c.ConfigGet(ctx, "dir").Result(); err != nil || !strings.HasPrefix(got["dir"], srv.dir) {
		t.Errorf("dir %v (%v), want the private directory %s", got, err, srv.dir)
	}
	if err := c.Set(ctx, "durable-probe", "on disk", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var aof int64
	_ = filepath.Walk(srv.dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && strings.Contains(info.Name(), ".aof") {
			aof += info.Size()
		}
		return nil
	})
	if aof == 0 {
		t.Errorf("no append-only file with data under %s after a write", srv.dir)
	}
	srv.stop()
	stopped = true
	if err := c.Ping(ctx).Err(); err == nil {
		t.Error("the server still answers after stop")
	}
	if _, err := os.Stat(srv.dir); !os.IsNotExist(err) {
		t.Errorf("directory %s left behind (%v)", srv.dir, err)
	}
	if srv.cmd.ProcessState == nil {
		t.Error("redis-server not waited for after stop")
	}
	if _, why := startRedisServer(ctx, "/nonexistent/redis-server"); !strings.Contains(why, "not found") {
		t.Errorf("missing binary: %q", why)
	}
}
