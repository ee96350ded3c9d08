package sessions

import (
	"cmp"
	"context"
	"crypto/subtle"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// useLog collects the uses of sessions seen by one manager and writes them
// to the store in batches ([TouchStore.Touch]), for Config.IdleTimeout and
// PolicyEvictLeastRecentlyUsed: one write per LastUseInterval for all the
// sessions used in it, instead of one per Authenticate. A timer, armed by
// the first use after a flush, writes the batch; no goroutine runs while
// nothing is pending, and Manager.Close writes what is left.
//
// What it holds also answers "when was this session last used here?"
// until the store has it: uses not yet written, being written, and
// written by the last flush (a cache in front of the store may still
// hold the older last use). It is sharded by session ID, so concurrent
// authenticates of different sessions rarely wait for one another.
type useLog struct {
	store    TouchStore
	interval time.Duration
	logger   *slog.Logger
	byAgent  atomic.Bool // keep useGen.byKey: least-recently-used eviction asks for an agent's uses

	shards [useShards]useShard

	tmu   sync.Mutex
	timer *time.Timer // armed while some use is pending
	armed atomic.Bool // timer != nil, read without tmu on every use

	flushMu sync.Mutex // one flush at a time, so batches land in order

	flushes  atomic.Uint64
	uses     atomic.Uint64
	failures atomic.Uint64
}

const useShards = 32

type useShard struct {
	mu      sync.Mutex
	pending useGen // not yet written
	writing useGen // the batch being written
	written useGen // the last batch written
}

// useGen is one generation of uses: the latest use of each session
// (Unix seconds), and (for least-recently-used eviction) the sessions of
// each (agent, kind).
type useGen struct {
	at    map[string]uint64
	byKey map[limitKey][]string
}

func (g *useGen) add(id string, key limitKey, at uint64, byAgent bool) {
	if g.at == nil {
		g.at = make(map[string]uint64)
	}
	cur, seen := g.at[id]
	if !seen && byAgent {
		if g.byKey == nil {
			g.byKey = make(map[limitKey][]string)
		}
		g.byKey[key] = append(g.byKey[key], id)
	}
	if !seen || at > cur {
		g.at[id] = at
	}
}

func newUseLog(store TouchStore, interval time.Duration, logger *slog.Logger, byAgent bool) *useLog {
	l := &useLog{store: store, interval: interval, logger: logger}
	l.byAgent.Store(byAgent)
	return l
}

func (l *useLog) shard(id string) *useShard {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return &l.shards[h%useShards]
}

// knownLocked is the latest use of id the shard knows of, 0 if none.
func (sh *useShard) knownLocked(id string) uint64 {
	return max(sh.pending.at[id], sh.writing.at[id], sh.written.at[id])
}

// known is the latest use of id this log knows of, 0 if none.
func (l *useLog) known(id string) uint64 {
	sh := l.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.knownLocked(id)
}

// recent returns the uses this log knows of for key's sessions (kept only
// when byAgent is set).
func (l *useLog) recent(key limitKey) []Use {
	var out []Use
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		seen := map[string]bool{}
		for _, g := range []*useGen{&sh.pending, &sh.writing, &sh.written} {
			for _, id := range g.byKey[key] {
				if !seen[id] {
					seen[id] = true
					out = append(out, Use{ID: id, At: unixTime(sh.knownLocked(id))})
				}
			}
		}
		sh.mu.Unlock()
	}
	return out
}

// use records a use of id (a session of key) at now, unless idle > 0 and
// the session's latest use (stored, as its store last reported it, or
// known here) is idle or more seconds before now: then it records
// nothing and returns false.
func (l *useLog) use(id string, key limitKey, stored, now, idle uint64) bool {
	sh := l.shard(id)
	sh.mu.Lock()
	if idle > 0 && isIdle(max(stored, sh.knownLocked(id)), now, idle) {
		sh.mu.Unlock()
		return false
	}
	sh.pending.add(id, key, now, l.byAgent.Load())
	sh.mu.Unlock()
	if !l.armed.Load() {
		l.arm()
	}
	return true
}

// arm starts the timer that writes the pending uses, unless it runs.
func (l *useLog) arm() {
	l.tmu.Lock()
	defer l.tmu.Unlock()
	if l.timer == nil {
		l.timer = time.AfterFunc(l.interval, l.flushOnTimer)
		l.armed.Store(true)
	}
}

func (l *useLog) disarm() {
	l.tmu.Lock()
	defer l.tmu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
		l.armed.Store(false)
	}
}

// isIdle: last used at lastUse, the session is idle at now (lastUse + idle
// <= now, the same boundary as expiry).
func isIdle(lastUse, now, idle uint64) bool {
	return lastUse <= now && now-lastUse >= idle
}

func (l *useLog) flushOnTimer() {
	// Bounded, so a hung store cannot pile up timers: a failed batch goes
	// back to pending and the next timer tries again.
	ctx, cancel := context.WithTimeout(context.Background(), max(l.interval, 10*time.Second))
	defer cancel()
	if err := l.flush(ctx, true); err != nil {
		l.logger.Warn("sessions: writing last uses failed; they are kept and written with the next batch", slog.Any("error", err))
	}
}

// flush writes every pending use now. A failed batch is kept (merged back
// into pending) for the next flush, which a timer then schedules unless
// rearm is false (Close): a use is never dropped.
func (l *useLog) flush(ctx context.Context, rearm bool) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	// Disarm first: a use recorded after its shard was swapped below
	// arms a new timer for the next batch.
	l.disarm()
	var uses []Use
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		sh.writing, sh.pending = sh.pending, useGen{}
		for id, at := range sh.writing.at {
			uses = append(uses, Use{ID: id, At: unixTime(at)})
		}
		sh.mu.Unlock()
	}
	if len(uses) == 0 {
		return nil
	}
	// In ID order, so two instances' batches lock shared rows in the same
	// order.
	slices.SortFunc(uses, func(a, b Use) int { return cmp.Compare(a.ID, b.ID) })
	err := l.store.Touch(ctx, uses)

	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		batch := sh.writing
		sh.writing = useGen{}
		if err == nil {
			sh.written = batch
		} else {
			if batch.byKey != nil { // every ID of the batch is under its key
				for key, ids := range batch.byKey {
					for _, id := range ids {
						sh.pending.add(id, key, batch.at[id], true)
					}
				}
			} else {
				for id, at := range batch.at {
					sh.pending.add(id, limitKey{}, at, false)
				}
			}
		}
		sh.mu.Unlock()
	}
	if err != nil {
		l.failures.Add(1)
		if rearm {
			l.arm()
		}
		return storeErr("touch", err)
	}
	l.flushes.Add(1)
	l.uses.Add(uint64(len(uses)))
	return nil
}

// LastUseStats counts a manager's writes of last uses (see
// Config.IdleTimeout): Flushes batches written, Uses session uses in them,
// Failures batches that failed and were kept for the next.
type LastUseStats struct {
	Flushes  uint64
	Uses     uint64
	Failures uint64
}

// LastUseStats reports the manager's writes of last uses; all zero when
// neither an idle timeout nor least-recently-used eviction needs them.
func (m *Manager) LastUseStats() LastUseStats {
	if m.uses == nil {
		return LastUseStats{}
	}
	return LastUseStats{Flushes: m.uses.flushes.Load(), Uses: m.uses.uses.Load(), Failures: m.uses.failures.Load()}
}

// Close writes the session uses collected so far to the store, so that
// other instances see them (see Config.IdleTimeout), and stops the timer
// that writes them. Call it on shutdown, after the last request. The
// manager stays usable: a later use arms the timer again. It returns a
// [StoreError] when the write fails; the uses are then kept (no timer is
// armed for them) and written by the next Close, or by the timer a later
// use arms. Without an idle timeout or least-recently-used eviction there
// is nothing to write.
func (m *Manager) Close(ctx context.Context) error {
	if m.uses == nil {
		return nil
	}
	return m.uses.flush(ctx, false)
}

// lastUse is s's last use in Unix seconds: LastUsedAt, but never before
// IssuedAt (a store that does not track uses leaves it zero).
func lastUse(s Session) uint64 {
	return uint64(max(s.LastUsedAt.Unix(), s.IssuedAt.Unix(), 0))
}

// noteUse records that s, whose token was just verified, is used at now,
// or refuses it with ErrSessionIdle under an idle timeout. Only a session
// that looks idle by what this manager knows costs a store read: another
// instance may have used it since, and its uses reach the store, not a
// cache in front of it.
func (m *Manager) noteUse(ctx context.Context, s Session, now uint64) (Session, error) {
	key := limitKey{s.AgentID, KindSession}
	if m.uses.use(s.ID, key, lastUse(s), now, m.idle) {
		s.LastUsedAt = unixTime(now)
		return s, nil
	}
	fresh, found, err := m.uses.store.GetLatest(ctx, s.ID)
	if err != nil {
		m.cfg.Logger.WarnContext(ctx, "sessions: authenticate failed", slog.Any("error", err))
		return Session{}, storeErr("get", err)
	}
	if !found {
		return Session{}, m.deny(ctx, ReasonUnknownSession)
	}
	if subtle.ConstantTimeCompare([]byte(fresh.TokenDigest), []byte(s.TokenDigest)) != 1 {
		return Session{}, m.deny(ctx, ReasonDigestMismatch)
	}
	if !m.uses.use(s.ID, key, lastUse(fresh), now, m.idle) {
		m.cfg.Logger.DebugContext(ctx, "sessions: session idle", slog.Duration("idle_timeout", m.cfg.IdleTimeout))
		return Session{}, ErrSessionIdle
	}
	s.LastUsedAt = unixTime(now)
	return s, nil
}

// liveByUse drops the sessions an idle timeout has ended, for List.
func (m *Manager) liveByUse(ss []Session, now uint64) []Session {
	if m.idle == 0 {
		return ss
	}
	return slices.DeleteFunc(ss, func(s Session) bool {
		return isIdle(max(lastUse(s), m.uses.known(s.ID)), now, m.idle)
	})
}

// insertRequest is what Issue asks of Store.Insert at now.
func (m *Manager) insertRequest(agentID string, now uint64) InsertRequest {
	req := InsertRequest{Limit: m.cfg.Limit, Policy: m.cfg.Policy, Now: unixTime(now)}
	if m.idle > 0 {
		if cut := IdleDeleteCutoff(unixTime(now), m.cfg.IdleTimeout, m.cfg.LastUseInterval); cut.Unix() > 0 {
			req.IdleCutoff = cut // before 1970 nothing can be idle: no session is older
		}
	}
	if m.cfg.Policy == PolicyEvictLeastRecentlyUsed {
		req.RecentUses = m.uses.recent(limitKey{agentID, KindSession})
	}
	return req
}
