package pgxstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// Defaults of [CacheConfig].
const (
	DefaultCacheMaxStaleness = time.Second
	DefaultCacheMaxEntries   = 100_000
)

// Channels of the invalidation trigger (migration 00003) and of the
// cache's heartbeats.
const (
	invalidateChannel = "agentsessions_invalidate"
	flushChannel      = "agentsessions_flush"
	heartbeatChannel  = "agentsessions_heartbeat"

	// triggersOff is the trigger state (InvalidationTriggerState, and the
	// last field of a heartbeat) when invalidations cannot be trusted.
	triggersOff = "off"
)

var errTriggersOff = errors.New("the invalidation triggers of migration 00003 on agent_sessions are missing or do not fire always; " +
	"apply the migrations, or after a restore run: ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_invalidate; " +
	"ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_flush")

// CacheConfig configures the verified-session cache; see
// [Store.RunCache]. The zero value gives the defaults.
type CacheConfig struct {
	// MaxStaleness bounds how long after a revocation commits, on any
	// instance, this instance may still accept the revoked token from its
	// cache. The cache answers only while a heartbeat sent within the last
	// MaxStaleness has come back on its listener connection; NOTIFY is
	// delivered in commit order, so that proves every revocation committed
	// before the heartbeat has been applied. Heartbeats go out every
	// MaxStaleness/4. Default: [DefaultCacheMaxStaleness] (1s); at least
	// 20ms.
	MaxStaleness time.Duration

	// MaxEntries bounds how many sessions are cached; past it, arbitrary
	// entries make room. Default: [DefaultCacheMaxEntries] (100,000).
	MaxEntries int

	// Logger receives a warning when the listener connection is lost and
	// an info record when it is back. Default: discards.
	Logger *slog.Logger
}

func (c CacheConfig) withDefaults() (CacheConfig, error) {
	if c.MaxStaleness == 0 {
		c.MaxStaleness = DefaultCacheMaxStaleness
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultCacheMaxEntries
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.MaxStaleness < 20*time.Millisecond:
		return c, &sessions.ConfigError{Field: "CacheConfig.MaxStaleness", Reason: "must be at least 20ms"}
	case c.MaxEntries < 0:
		return c, &sessions.ConfigError{Field: "CacheConfig.MaxEntries", Reason: "must not be negative"}
	}
	return c, nil
}

// CacheStats counts the cache's work since [Store.RunCache] began.
type CacheStats struct {
	Running       bool   // RunCache is running
	Fresh         bool   // the cache answers now (listener confirmed within MaxStaleness)
	Entries       int    // sessions cached now
	Hits          uint64 // Get calls answered from memory
	Misses        uint64 // Get calls that went to the database
	Invalidations uint64 // notifications and local revocations applied
	Resyncs       uint64 // times the cache was emptied: listener (re)connections and TRUNCATEs
}

// RunCache keeps a cache of verified sessions in this store until ctx
// ends, then returns nil. While it runs, [Store.Get] (and so
// Manager.Authenticate) answers from memory when it can: a cached session
// needs no database round trip. It is opt-in because it trades a bounded
// window of staleness for that round trip:
//
//   - Every revocation, eviction, refresh and prune, by any instance or by
//     hand (DELETE, UPDATE or TRUNCATE), fires a trigger (migration 00003)
//     whose NOTIFY reaches every cache through a dedicated listener
//     connection (outside the pool).
//   - A revoked token is never accepted from the cache after the
//     notification arrived, nor later than cfg.MaxStaleness after the
//     revocation committed, even if notifications stall: the cache then
//     stops answering and every Get goes to the database.
//   - When the listener connection drops, the cache is bypassed until a
//     new connection listens again; it starts empty (notifications sent
//     while it was away are lost) and refills from the database.
//
// Run one RunCache per store; a second one returns an error. It fails at
// once if the invalidation triggers are missing or disabled, or if its
// listener connection goes through a pooler that cannot carry LISTEN
// (then set [Config].DirectDatabaseURL). Every
// heartbeat reads the triggers' state as it passes through the database:
// one that finds them disabled (as pg_restore --disable-triggers leaves
// them while it runs) makes the cache bypassed at once, and one that finds
// them changed since the listener connected (disabled and enabled again,
// recreated) empties the cache, since invalidations may have been lost in
// between. So the MaxStaleness bound holds even while someone disables
// the triggers.
//
// Costs, cache or not: the triggers NOTIFY on every deleted or updated
// session, and PostgreSQL serializes the commits of transactions that
// NOTIFY; a process that stops reading its listener connection while
// keeping it open lets the notification queue fill (8 GB by default),
// after which such commits fail. Freshness is judged by the monotonic and
// the wall clock both, so a suspended host does not stretch the bound.
func (p *Store) RunCache(ctx context.Context, cfg CacheConfig) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	state, err := p.q.InvalidationTriggerState(ctx)
	if err != nil {
		return p.wrap(ctx, "cache check", err)
	}
	if state == triggersOff {
		return &sessions.ConfigError{Field: "RunCache", Reason: errTriggersOff.Error()}
	}
	if err := p.checkListenable(ctx, "cache check"); err != nil {
		return err
	}
	c, err := newSessionCache(cfg)
	if err != nil {
		return err
	}
	c.obs = p.cfg.Observer
	if !p.cache.CompareAndSwap(nil, c) {
		return &sessions.ConfigError{Field: "RunCache", Reason: "a cache is already running on this store"}
	}
	defer p.cache.CompareAndSwap(c, nil)

	keepListening(ctx, cfg.Logger, "sessions: cache listener lost; bypassing the cache until it is back", func() (bool, error) {
		connected, err := c.listen(ctx, p)
		c.stale()
		return connected, err
	})
	return nil
}

// CacheStats reports on the cache of [Store.RunCache].
func (p *Store) CacheStats() CacheStats {
	c := p.cache.Load()
	if c == nil {
		return CacheStats{}
	}
	return c.statsNow()
}

const cacheShards = 64

type sessionCache struct {
	cfg       CacheConfig
	nonce     string        // tells our heartbeats from other instances'
	base      time.Time     // origin of the monotonic readings below
	conn      atomic.Uint64 // listener connection number, in heartbeats
	fresh     atomic.Int64  // ns since base a confirmed heartbeat was sent; 0: not fresh
	freshWall atomic.Int64  // the same send time as unix ns on the wall clock
	seed      maphash.Seed
	pid       atomic.Uint32 // listener's backend, for tests
	perShard  int
	shards    [cacheShards]cacheShard

	obs Observer // told about resyncs; may be nil

	hits, misses, invalidations, resyncs atomic.Uint64
}

type cacheShard struct {
	mu  sync.Mutex
	seq uint64 // bumped by every invalidation in the shard
	m   map[string]sessions.Session
}

// fillTicket is taken before a database read: the read's result may be
// cached only if nothing in its shard was invalidated since.
type fillTicket struct{ seq uint64 }

func newSessionCache(cfg CacheConfig) (*sessionCache, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	c := &sessionCache{cfg: cfg, nonce: hex.EncodeToString(b[:]), base: time.Now(), seed: maphash.MakeSeed(),
		perShard: max(1, cfg.MaxEntries/cacheShards)}
	for i := range c.shards {
		c.shards[i].m = make(map[string]sessions.Session)
	}
	return c, nil
}

func (c *sessionCache) shard(id string) *cacheShard {
	return &c.shards[maphash.String(c.seed, id)%cacheShards]
}

func (c *sessionCache) now() int64 { return int64(time.Since(c.base)) }

// isFresh: the last confirmed heartbeat was sent within MaxStaleness, by
// the monotonic clock and by the wall clock (the monotonic clock stops
// while the host is suspended; the wall clock does not).
func (c *sessionCache) isFresh() bool {
	f := c.fresh.Load()
	return f != 0 && c.now()-f < int64(c.cfg.MaxStaleness) &&
		time.Now().UnixNano()-c.freshWall.Load() < int64(c.cfg.MaxStaleness)
}

// get returns the cached session, or a ticket for filling the cache
// after reading the database.
func (c *sessionCache) get(id string) (sessions.Session, bool, fillTicket) {
	sh := c.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := fillTicket{seq: sh.seq}
	if s, ok := sh.m[id]; ok && c.isFresh() {
		c.hits.Add(1)
		return cloneSession(s), true, t
	}
	c.misses.Add(1)
	return sessions.Session{}, false, t
}

// ticket is a fillTicket for a database read of id that bypasses get.
func (c *sessionCache) ticket(id string) fillTicket {
	sh := c.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return fillTicket{seq: sh.seq}
}

func (c *sessionCache) fill(s sessions.Session, t fillTicket) {
	sh := c.shard(s.ID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.seq != t.seq {
		return // invalidated while we read: the row may be stale
	}
	if len(sh.m) >= c.perShard {
		for k := range sh.m { // arbitrary victim
			delete(sh.m, k)
			break
		}
	}
	sh.m[s.ID] = cloneSession(s)
}

func (c *sessionCache) invalidate(id string) {
	sh := c.shard(id)
	sh.mu.Lock()
	delete(sh.m, id)
	sh.seq++
	sh.mu.Unlock()
	c.invalidations.Add(1)
}

func (c *sessionCache) invalidateAgent(agentID, kind string) {
	c.dropEverywhere(func(_ string, s sessions.Session) bool { return s.AgentID == agentID && s.Kind == kind })
	c.invalidations.Add(1)
}

// resync empties the cache and refuses fills begun before it; reason is
// for the observer (see Observer.CacheResync).
func (c *sessionCache) resync(ctx context.Context, reason string) {
	c.dropEverywhere(func(string, sessions.Session) bool { return true })
	c.resyncs.Add(1)
	if c.obs != nil {
		c.obs.CacheResync(ctx, reason)
	}
}

// dropEverywhere deletes the entries drop selects from every shard and
// bumps every shard's seq, so fills begun before are refused.
func (c *sessionCache) dropEverywhere(drop func(string, sessions.Session) bool) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		maps.DeleteFunc(sh.m, drop)
		sh.seq++
		sh.mu.Unlock()
	}
}

func (c *sessionCache) stale() { c.fresh.Store(0) }

func (c *sessionCache) statsNow() CacheStats {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.Lock()
		n += len(c.shards[i].m)
		c.shards[i].mu.Unlock()
	}
	return CacheStats{Running: true, Fresh: c.isFresh(), Entries: n, Hits: c.hits.Load(), Misses: c.misses.Load(),
		Invalidations: c.invalidations.Load(), Resyncs: c.resyncs.Load()}
}

// listen runs one listener connection until it fails or ctx ends;
// connected reports whether it got as far as listening.
func (c *sessionCache) listen(ctx context.Context, p *Store) (connected bool, err error) {
	conn, err := p.listenerConn(ctx, "agentsessions-cache")
	if err != nil {
		return false, err
	}
	defer closeListener(ctx, conn)
	c.pid.Store(conn.PgConn().PID())
	q := db.New(conn)
	// Read before LISTEN: a heartbeat that later finds another state
	// means the triggers changed after this point, and the cache resyncs.
	triggers, err := q.InvalidationTriggerState(ctx)
	if err != nil {
		return false, err
	}
	if triggers == triggersOff {
		return false, errTriggersOff
	}
	if err := q.ListenInvalidations(ctx); err != nil {
		return false, err
	}
	if err := q.ListenFlushes(ctx); err != nil {
		return false, err
	}
	if err := q.ListenHeartbeats(ctx); err != nil {
		return false, err
	}
	// Revocations committed before LISTEN never reach us: start empty.
	c.resync(ctx, "connected")
	connNo := c.conn.Add(1)
	c.cfg.Logger.InfoContext(ctx, "sessions: cache listener connected")

	hbCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.heartbeats(hbCtx, p, connNo) })
	defer wg.Wait()
	defer stop()
	return true, c.receive(ctx, conn, connNo, triggers)
}

// heartbeats sends a heartbeat through the pool every MaxStaleness/4. Its
// payload carries the time it was sent; when it comes back, every
// notification committed before that time has been received.
func (c *sessionCache) heartbeats(ctx context.Context, p *Store, connNo uint64) {
	t := time.NewTicker(c.cfg.MaxStaleness / 4)
	defer t.Stop()
	for {
		payload := c.nonce + "/" + strconv.FormatUint(connNo, 10) + "/" + strconv.FormatInt(c.now(), 10) +
			"/" + strconv.FormatInt(time.Now().UnixNano(), 10)
		if err := p.q.NotifyHeartbeat(ctx, payload); err != nil && ctx.Err() == nil {
			c.cfg.Logger.DebugContext(ctx, "sessions: cache heartbeat failed", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// receive applies notifications until the connection fails, falls
// silent for 2×MaxStaleness (a half-open connection), or ctx ends.
// triggers is the invalidation triggers' state when the listener
// connected.
func (c *sessionCache) receive(ctx context.Context, conn *pgx.Conn, connNo uint64, triggers string) error {
	lastHeard := c.now()
	off := false // the last heartbeat found the triggers off (logged once)
	for {
		waitCtx, cancel := context.WithTimeout(ctx, c.cfg.MaxStaleness)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if c.now()-lastHeard > 2*int64(c.cfg.MaxStaleness) {
				return fmt.Errorf("no heartbeat came back for %v", time.Duration(c.now()-lastHeard))
			}
			continue
		case err != nil:
			return err
		case n == nil:
			return errors.New("the listener connection returned no notification")
		}
		switch n.Channel {
		case invalidateChannel:
			c.invalidate(n.Payload)
		case flushChannel:
			c.resync(ctx, "flush")
		case heartbeatChannel:
			hb, ok := c.ownHeartbeat(n.Payload, connNo)
			if !ok {
				continue
			}
			lastHeard = c.now()
			switch hb.triggers {
			case triggersOff:
				// Revocations may be committing unannounced right now.
				c.stale()
				if !off {
					c.cfg.Logger.WarnContext(ctx, "sessions: cache bypassed: "+errTriggersOff.Error())
				}
				off = true
				continue
			case triggers:
				off = false
			default:
				off = false
				// Changed since we connected (disabled and enabled again,
				// recreated): what was revoked in between was never
				// announced. Start over, as after a reconnect.
				c.resync(ctx, "triggers_changed")
				triggers = hb.triggers
				c.cfg.Logger.InfoContext(ctx, "sessions: invalidation triggers changed; cache emptied")
			}
			if hb.sent > c.fresh.Load() {
				c.freshWall.Store(hb.wall)
				c.fresh.Store(hb.sent)
			}
		}
	}
}

// heartbeat is one of this cache's heartbeats, come back.
type heartbeat struct {
	sent, wall int64  // when it was sent: monotonic ns since base, wall-clock unix ns
	triggers   string // the invalidation triggers' state as the database saw it
}

// ownHeartbeat parses a heartbeat payload of this cache's current
// connection: nonce/conn/monotonic ns/wall-clock unix ns/trigger state
// (the last field appended by the NotifyHeartbeat statement).
func (c *sessionCache) ownHeartbeat(payload string, connNo uint64) (hb heartbeat, ok bool) {
	rest, ok := strings.CutPrefix(payload, c.nonce+"/"+strconv.FormatUint(connNo, 10)+"/")
	if !ok {
		return hb, false
	}
	fields := strings.Split(rest, "/")
	if len(fields) != 3 || fields[2] == "" {
		return hb, false
	}
	sent, err1 := strconv.ParseInt(fields[0], 10, 64)
	wall, err2 := strconv.ParseInt(fields[1], 10, 64)
	return heartbeat{sent: sent, wall: wall, triggers: fields[2]}, err1 == nil && err2 == nil && sent > 0
}
