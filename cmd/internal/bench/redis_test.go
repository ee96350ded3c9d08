package bench

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
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
