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
// hold the older last use).
type useLog struct {
	store    TouchStore
	interval time.Duration
	logger   *slog.Logger

	mu      sync.Mutex
	pending map[string]uint64 // id -> latest use (Unix seconds), not yet written
	writing map[string]uint64 // the batch being written
	written map[string]uint64 // the last batch written
	timer   *time.Timer       // armed while pending is not empty

	flushMu sync.Mutex // one flush at a time, so batches land in order

	flushes  atomic.Uint64
	uses     atomic.Uint64
	failures atomic.Uint64
}

func newUseLog(store TouchStore, interval time.Duration, logger *slog.Logger) *useLog {
	return &useLog{store: store, interval: interval, logger: logger, pending: make(map[string]uint64)}
}

// knownLocked is the latest use of id this log knows of, 0 if none.
func (l *useLog) knownLocked(id string) uint64 {
	return max(l.pending[id], l.writing[id], l.written[id])
}

// known is knownLocked for callers without l.mu.
func (l *useLog) known(id string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.knownLocked(id)
}

// use records a use of id at now, unless idle > 0 and the session's latest
// use (stored, as its store last reported it, or known here) is idle or
// more seconds before now: then it records nothing and returns false.
func (l *useLog) use(id string, stored, now, idle uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if idle > 0 && isIdle(max(stored, l.knownLocked(id)), now, idle) {
		return false
	}
	if now > l.pending[id] {
		l.pending[id] = now
	}
	if l.timer == nil {
		l.timer = time.AfterFunc(l.interval, l.flushOnTimer)
	}
	return true
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
	if err := l.flush(ctx); err != nil {
		l.logger.Warn("sessions: writing last uses failed; they are kept and written with the next batch", slog.Any("error", err))
	}
}

// flush writes every pending use now. A failed batch is kept (merged back
// into pending) for the next flush: a use is never dropped.
func (l *useLog) flush(ctx context.Context) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	batch := l.pending
	l.pending = make(map[string]uint64)
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if len(batch) == 0 {
		l.mu.Unlock()
		return nil
	}
	l.writing = batch
	l.mu.Unlock()

	uses := make([]Use, 0, len(batch))
	for id, at := range batch {
		uses = append(uses, Use{ID: id, At: unixTime(at)})
	}
	// In ID order, so two instances' batches lock shared rows in the same
	// order.
	slices.SortFunc(uses, func(a, b Use) int { return cmp.Compare(a.ID, b.ID) })
	err := l.store.Touch(ctx, uses)

	l.mu.Lock()
	defer l.mu.Unlock()
	l.writing = nil
	if err != nil {
		l.failures.Add(1)
		for id, at := range batch {
			if at > l.pending[id] {
				l.pending[id] = at
			}
		}
		if l.timer == nil {
			l.timer = time.AfterFunc(l.interval, l.flushOnTimer)
		}
		return storeErr("touch", err)
	}
	l.written = batch
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
// [StoreError] when the write fails; the uses are then kept, and written
// by the next Close or timer. Without an idle timeout or
// least-recently-used eviction there is nothing to write.
func (m *Manager) Close(ctx context.Context) error {
	if m.uses == nil {
		return nil
	}
	return m.uses.flush(ctx)
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
	if m.uses.use(s.ID, lastUse(s), now, m.idle) {
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
	if !m.uses.use(s.ID, lastUse(fresh), now, m.idle) {
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

// idleCutoff is InsertRequest.IdleCutoff at now: zero without an idle
// timeout.
func (m *Manager) idleCutoff(now uint64) time.Time {
	if m.idle == 0 || now < m.idle {
		return time.Time{}
	}
	return unixTime(now - m.idle)
}
