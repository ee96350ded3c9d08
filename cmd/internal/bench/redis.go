package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis peer does the same job the way users build it on Redis: one
// sorted set per agent (member: session ID, score: expiry), one string per
// session (value: agent, expiry and token digest, with a TTL), and a Lua
// script that drops the agent's expired members, counts the rest and adds
// the new session if there is room, atomically. Authenticate is one GET
// and a digest comparison; revoke is one script (DEL + ZREM). It mints no
// HMAC tokens (that is CPU outside the store on both sides): a token is a
// random string whose SHA-256 is stored.

// redisIssue: KEYS[1] agent set, KEYS[2] session key; ARGV now, exp,
// limit, sid, ttl seconds, value. Returns 1 if added, 0 at the limit.
var redisIssue = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[5])
return 1
`)

// redisRevoke: KEYS[1] agent set, KEYS[2] session key; ARGV sid.
var redisRevoke = redis.NewScript(`
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
`)

var errRedisLimit = errors.New("redis peer: agent at its limit")
var errRedisUnknown = errors.New("redis peer: unknown session or digest mismatch")

type redisPeer struct {
	engine  string // EngineRedis or EngineRedisDurable
	cfg     Config
	clients []*redis.Client // one per instance, Workers connections each
	prefix  string          // every key of this run starts with it
	version string
	quiesce func() // called after prefill: closes the PostgreSQL engines' connections
}

// newRedisPeer connects to cfg.RedisURL; it returns nil and the reason
// when no Redis answers there.
func newRedisPeer(ctx context.Context, cfg Config) (*redisPeer, string) {
	// go-redis logs dial failures on its own; the reason comes back here.
	redis.SetLogger(quietRedisLog{})
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Sprintf("bad --redis-url %q: %v", cfg.RedisURL, err)
	}
	probe := redis.NewClient(&redis.Options{Addr: opts.Addr, Username: opts.Username, Password: opts.Password,
		DB: opts.DB, TLSConfig: opts.TLSConfig, DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1, PoolSize: 1})
	defer probe.Close()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := probe.Ping(pctx).Err(); err != nil {
		return nil, fmt.Sprintf("no Redis reachable at %s (%v); start one or pass --redis-url", opts.Addr, err)
	}
	version := "Redis"
	if info, err := probe.Info(pctx, "server").Result(); err == nil {
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				version = "Redis " + v
			}
		}
	}
	p := &redisPeer{engine: EngineRedis, cfg: cfg, prefix: "agentsessions-bench:" + randomHex(6) + ":", version: version}
	for range cfg.Instances {
		o := *opts
		o.PoolSize = cfg.Workers
		o.MinIdleConns = cfg.Workers
		p.clients = append(p.clients, redis.NewClient(&o))
	}
	return p, ""
}

func (p *redisPeer) close() {
	if !p.cfg.Keep {
		_ = p.deleteKeys(context.Background())
	} else {
		p.cfg.Log("kept Redis keys %s*", p.prefix)
	}
	for _, c := range p.clients {
		_ = c.Close()
	}
}

func (p *redisPeer) agentKey(agent string) string { return p.prefix + "a:" + agent }
func (p *redisPeer) sessionKey(sid string) string { return p.prefix + "s:" + sid }

func (p *redisPeer) client(w *worker) *redis.Client { return p.clients[w.id/p.cfg.Workers] }

// deleteKeys removes every key of this run (never anything else).
func (p *redisPeer) deleteKeys(ctx context.Context) error {
	c := p.clients[0]
	iter := c.Scan(ctx, 0, p.prefix+"*", 10000).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 10000 {
			if err := c.Unlink(ctx, batch...).Err(); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		if err := c.Unlink(ctx, batch...).Err(); err != nil {
			return err
		}
	}
	return iter.Err()
}

type redisSession struct{ agent, sid, token string }

func digestOf(token string) string {
	d := sha256.Sum256([]byte(token))
	return hex.EncodeToString(d[:])
}

// issue runs the Lua script for a new session of agent.
func (p *redisPeer) issue(ctx context.Context, c *redis.Client, agent, sid string) (redisSession, error) {
	s, keys, args := p.issueArgs(agent, sid)
	added, err := redisIssue.Run(ctx, c, keys, args...).Int()
	if err != nil {
		return redisSession{}, err
	}
	if added == 0 {
		return redisSession{}, errRedisLimit
	}
	return s, nil
}

// issueArgs makes a new session's token and the issue script's keys and
// arguments.
func (p *redisPeer) issueArgs(agent, sid string) (redisSession, []string, []any) {
	token := sid + "." + randomHex(16)
	now := time.Now().Unix()
	ttl := int64(p.cfg.TTL / time.Second)
	exp := now + ttl
	value := agent + "|" + strconv.FormatInt(exp, 10) + "|" + digestOf(token)
	return redisSession{agent: agent, sid: sid, token: token}, []string{p.agentKey(agent), p.sessionKey(sid)},
		[]any{now, exp, p.cfg.Limit, sid, ttl, value}
}

func (p *redisPeer) authenticate(ctx context.Context, c *redis.Client, s redisSession) error {
	v, err := c.Get(ctx, p.sessionKey(s.sid)).Result()
	if errors.Is(err, redis.Nil) {
		return errRedisUnknown
	}
	if err != nil {
		return err
	}
	parts := strings.Split(v, "|")
	if len(parts) != 3 || parts[0] != s.agent || parts[2] != digestOf(s.token) {
		return errRedisUnknown
	}
	return nil
}

func (p *redisPeer) revoke(ctx context.Context, c *redis.Client, s redisSession) error {
	return redisRevoke.Run(ctx, c, []string{p.agentKey(s.agent), p.sessionKey(s.sid)}, s.sid).Err()
}

// skips: issue-prune measures our pruner.
func (p *redisPeer) skips(workload string) bool { return workload == WorkloadIssuePrune }

func classifyRedis(err error) string {
	switch {
	case err == nil:
		return ClassOK
	case errors.Is(err, errRedisLimit):
		return ClassLimit
	case errors.Is(err, errRedisUnknown):
		return ClassDenied
	case errors.Is(err, context.DeadlineExceeded):
		return ClassTimeout
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	default:
		return ClassStore
	}
}

func (p *redisPeer) timed(ctx context.Context, w *worker, op string, fn func(ctx context.Context) error) error {
	opCtx, cancel := context.WithTimeout(ctx, p.cfg.OpTimeout)
	start := w.startOf()
	err := fn(opCtx)
	d := time.Since(start)
	cancel()
	class := classifyRedis(err)
	if err != nil && ctx.Err() != nil {
		class = ClassCanceled
	}
	w.rec.record(op, class, d, err)
	return err
}

// prefill deletes the run's keys and adds the sessions the workload starts
// from, as for the other engines.
func (p *redisPeer) prefill(ctx context.Context, workload string) ([]redisSession, error) {
	if err := p.deleteKeys(ctx); err != nil {
		return nil, fmt.Errorf("bench: redis: %w", err)
	}
	n, agentOf := prefillPlan(p.cfg, workload)
	out := make([]redisSession, n)
	if n == 0 {
		return out, nil
	}
	if err := redisIssue.Load(ctx, p.clients[0]).Err(); err != nil {
		return nil, fmt.Errorf("bench: redis prefill: %w", err)
	}
	// Pipelines of redisPrefillBatch scripts per round trip: at millions
	// of sessions one round trip each would take minutes.
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for _, c := range p.clients {
		for range p.cfg.Workers {
			wg.Go(func() {
				for ctx.Err() == nil {
					lo := int(next.Add(redisPrefillBatch) - redisPrefillBatch)
					if lo >= n {
						return
					}
					hi := min(n, lo+redisPrefillBatch)
					pipe := c.Pipeline()
					cmds := make([]*redis.Cmd, 0, hi-lo)
					for i := lo; i < hi; i++ {
						s, keys, args := p.issueArgs(agentOf(i), strconv.Itoa(prefillBase+i))
						out[i] = s
						cmds = append(cmds, pipe.EvalSha(ctx, redisIssue.Hash(), keys, args...))
					}
					_, err := pipe.Exec(ctx)
					for _, cmd := range cmds {
						if added, cerr := cmd.Int(); err == nil && cerr == nil && added != 1 {
							err = errors.New("a prefilled session was refused at the limit")
						}
					}
					if err != nil {
						mu.Lock()
						firstErr = errors.Join(firstErr, err)
						mu.Unlock()
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("bench: redis prefill: %w", firstErr)
	}
	return out, ctx.Err()
}

const redisPrefillBatch = 500

func (p *redisPeer) run(ctx context.Context, workload string, l load) (Result, error) {
	pre, err := p.prefill(ctx, workload)
	if err != nil {
		return Result{}, err
	}
	if p.quiesce != nil {
		p.quiesce()
	}
	cfg := p.cfg
	clients := cfg.Clients()
	newSID := func(w *worker) string { return strconv.FormatUint(w.rng.Uint64(), 16) }
	var setup func(w *worker)
	var step func(ctx context.Context, w *worker)
	switch workload {
	case WorkloadIssue:
		step = func(ctx context.Context, w *worker) {
			a := agentName(w.rng.IntN(cfg.Agents) + 1)
			_ = p.timed(ctx, w, OpIssue, func(ctx context.Context) error {
				_, err := p.issue(ctx, p.client(w), a, newSID(w))
				return err
			})
		}
	case WorkloadIssueHot:
		step = func(ctx context.Context, w *worker) {
			a := agentName(w.rng.IntN(cfg.HotAgents) + 1)
			var s redisSession
			if p.timed(ctx, w, OpIssue, func(ctx context.Context) (err error) {
				s, err = p.issue(ctx, p.client(w), a, newSID(w))
				return err
			}) == nil {
				_ = p.timed(ctx, w, OpRevoke, func(ctx context.Context) error { return p.revoke(ctx, p.client(w), s) })
			}
		}
	case WorkloadAuthenticate:
		step = func(ctx context.Context, w *worker) {
			s := pre[w.rng.IntN(len(pre))]
			_ = p.timed(ctx, w, OpAuthenticate, func(ctx context.Context) error { return p.authenticate(ctx, p.client(w), s) })
		}
	case WorkloadMixed:
		setup = func(w *worker) {
			for i := w.id; i < len(pre); i += clients {
				w.owned = append(w.owned, pre[i])
			}
		}
		step = func(ctx context.Context, w *worker) {
			c := p.client(w)
			switch pr := w.rng.IntN(100); {
			case pr < 90 && len(w.owned) > 0:
				s := w.owned[w.rng.IntN(len(w.owned))].(redisSession)
				_ = p.timed(ctx, w, OpAuthenticate, func(ctx context.Context) error { return p.authenticate(ctx, c, s) })
			case pr < 98 || len(w.owned) == 0:
				a := agentName(w.rng.IntN(cfg.Agents) + 1)
				var s redisSession
				if p.timed(ctx, w, OpIssue, func(ctx context.Context) (err error) {
					s, err = p.issue(ctx, c, a, newSID(w))
					return err
				}) == nil {
					w.owned = append(w.owned, s)
				}
			default:
				i := w.rng.IntN(len(w.owned))
				s := w.owned[i].(redisSession)
				if p.timed(ctx, w, OpRevoke, func(ctx context.Context) error { return p.revoke(ctx, c, s) }) == nil {
					w.owned[i] = w.owned[len(w.owned)-1]
					w.owned = w.owned[:len(w.owned)-1]
				}
			}
		}
	}
	d := drive(ctx, cfg, workload+" · "+p.engine, clients, l, setup, step)
	res := resultOf(p.engine, workload, d, l)
	res.setRetries(0)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := p.check(ctx, &res); err != nil {
		return res, err
	}
	cfg.Log("%s · %s: %s", workload, p.engine, oneLine(res))
	return res, nil
}

// redisCheck counts, server-side, the members of every sorted set whose
// key matches ARGV[1] and the sets holding more than ARGV[2]: the whole
// invariant check is one script call, so one round trip (two if the
// script must be loaded first) however many agents there are, where a
// ZCARD per agent took more than ten minutes at a million agents. It
// blocks the server while it runs (about a second per million agents),
// which is fine after a run.
var redisCheck = redis.NewScript(`
local cursor, rows, over, limit = '0', 0, 0, tonumber(ARGV[2])
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 10000)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local n = redis.call('ZCARD', k)
    rows = rows + n
    if n > limit then over = over + 1 end
  end
until cursor == '0'
return {rows, over}
`)

// check counts agents whose set holds more members than the limit, and
// the sessions stored.
func (p *redisPeer) check(ctx context.Context, res *Result) error {
	vals, err := redisCheck.Run(ctx, p.clients[0], nil, p.prefix+"a:*", p.cfg.Limit).Int64Slice()
	if err != nil || len(vals) != 2 {
		return fmt.Errorf("bench: redis invariant check: %v %w", vals, err)
	}
	res.Rows, res.OverLimitAgents = vals[0], vals[1]
	return nil
}

// redisZ is a sorted-set member with its score.
func redisZ(score int64, member string) redis.Z {
	return redis.Z{Score: float64(score), Member: member}
}

// quietRedisLog drops go-redis's log lines (process-wide: the bench is a
// command, and its own lines say what went wrong).
type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}
