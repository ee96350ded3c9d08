package sessions

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// MemoryStore is a [Store] held in process memory, with the reference
// implementation's semantics. It suits tests and single-instance services:
// sessions are lost on restart and the limit holds only within the process.
// It implements [AgentStore], [RefreshStore], [LimitStore] and
// [TouchStore].
// The zero value is not usable; call [NewMemoryStore].
type MemoryStore struct {
	mu      sync.Mutex
	byID    map[string]Session
	byAgent map[limitKey]map[string]struct{} // (agent, kind) -> session IDs
	limits  map[limitKey]int
}

// limitKey is what a limit counts: one agent's sessions of one kind.
type limitKey struct{ agent, kind string }

func keyOf(s Session) limitKey { return limitKey{s.AgentID, s.Kind} }

var (
	_ AgentStore   = (*MemoryStore)(nil)
	_ RefreshStore = (*MemoryStore)(nil)
	_ LimitStore   = (*MemoryStore)(nil)
	_ TouchStore   = (*MemoryStore)(nil)
)

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		byID:    make(map[string]Session),
		byAgent: make(map[limitKey]map[string]struct{}),
		limits:  make(map[limitKey]int),
	}
}

// Get implements [Store].
func (m *MemoryStore) Get(ctx context.Context, id string) (Session, bool, error) {
	if err := ctx.Err(); err != nil {
		return Session{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.byID[id]
	return cloneSession(s), ok, nil
}

// Delete implements [Store].
func (m *MemoryStore) Delete(ctx context.Context, id string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.deleteLocked(id), nil
}

// DeleteExpired implements [Store].
func (m *MemoryStore) DeleteExpired(ctx context.Context, id, digest string, now time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.byID[id]; ok && (!s.ExpiresAt.After(now) || s.TokenDigest == digest) {
		m.deleteLocked(id)
	}
	return nil
}

// Insert implements [Store]. Unlike the reference, which prunes every
// agent's expired sessions here, it prunes only s.AgentID's, as the
// PostgreSQL store does; other agents' expired sessions stay until looked up
// or pruned.
func (m *MemoryStore) Insert(ctx context.Context, s Session, req InsertRequest) (InsertResult, error) {
	if err := ctx.Err(); err != nil {
		return InsertResult{}, err
	}
	if s.Kind == "" {
		s.Kind = KindSession
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s.LastUsedAt = lastUsedAt(s)
	key := keyOf(s)
	for id := range m.byAgent[key] {
		if old := m.byID[id]; !old.ExpiresAt.After(req.Now) || idleBy(old, req.IdleCutoff) {
			m.deleteLocked(id)
		}
	}
	res := InsertResult{Limit: req.Limit}
	if n, ok := m.limits[key]; ok {
		res.Limit = n
	}
	if _, dup := m.byID[s.ID]; dup {
		return InsertResult{}, &StoreError{Op: "insert", Err: ErrDuplicateSessionID}
	}
	if excess := len(m.byAgent[key]) - res.Limit + 1; excess > 0 {
		if !req.Policy.evicts() {
			return res, nil
		}
		victims := m.agentLocked(key, time.Time{})
		if req.Policy == PolicyEvictLeastRecentlyUsed {
			for i, v := range victims {
				for _, u := range req.RecentUses {
					if u.ID == v.ID && u.At.After(v.LastUsedAt) {
						victims[i].LastUsedAt = u.At
					}
				}
			}
			slices.SortStableFunc(victims, func(a, b Session) int { return a.LastUsedAt.Compare(b.LastUsedAt) })
		}
		for _, old := range victims[:excess] {
			m.deleteLocked(old.ID)
			res.Evicted = append(res.Evicted, old.ID)
		}
	}
	m.byID[s.ID] = cloneSession(s)
	if m.byAgent[key] == nil {
		m.byAgent[key] = make(map[string]struct{})
	}
	m.byAgent[key][s.ID] = struct{}{}
	res.Inserted = true
	return res, nil
}

// ListAgent implements [AgentStore].
func (m *MemoryStore) ListAgent(ctx context.Context, agentID, kind string, now time.Time) ([]Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.agentLocked(limitKey{agentID, kind}, now), nil
}

// DeleteAgent implements [AgentStore].
func (m *MemoryStore) DeleteAgent(ctx context.Context, agentID, kind, exceptID string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for id := range m.byAgent[limitKey{agentID, kind}] {
		if id != exceptID {
			m.deleteLocked(id)
			n++
		}
	}
	return n, nil
}

// Extend implements [RefreshStore].
func (m *MemoryStore) Extend(ctx context.Context, id, oldDigest string, expiresAt time.Time, newDigest string, now time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.byID[id]
	if !ok || s.TokenDigest != oldDigest || !s.ExpiresAt.After(now) {
		return false, nil
	}
	s.ExpiresAt, s.TokenDigest = expiresAt, newDigest
	m.byID[id] = s
	return true, nil
}

// AgentLimit implements [LimitStore].
func (m *MemoryStore) AgentLimit(ctx context.Context, agentID, kind string) (int, bool, error) {
	if err := ctx.Err(); err != nil {
		return 0, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.limits[limitKey{agentID, kind}]
	return n, ok, nil
}

// SetAgentLimit implements [LimitStore].
func (m *MemoryStore) SetAgentLimit(ctx context.Context, agentID, kind string, limit int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.limits[limitKey{agentID, kind}] = limit
	return nil
}

// DeleteAgentLimit implements [LimitStore].
func (m *MemoryStore) DeleteAgentLimit(ctx context.Context, agentID, kind string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	key := limitKey{agentID, kind}
	_, ok := m.limits[key]
	delete(m.limits, key)
	return ok, nil
}

// AgentLimits implements [LimitStore].
func (m *MemoryStore) AgentLimits(ctx context.Context, kind string) ([]AgentLimitOverride, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []AgentLimitOverride{}
	for key, n := range m.limits {
		if key.kind == kind {
			out = append(out, AgentLimitOverride{AgentID: key.agent, Limit: n})
		}
	}
	slices.SortFunc(out, func(a, b AgentLimitOverride) int { return cmp.Compare(a.AgentID, b.AgentID) })
	return out, nil
}

// Touch implements [TouchStore].
func (m *MemoryStore) Touch(ctx context.Context, uses []Use) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	// As pgxstore does: a use timed more than a minute ahead of this
	// host's clock counts as a minute ahead, so a clock that ran ahead
	// cannot keep sessions from going idle for longer.
	latest := time.Now().Add(time.Minute)
	for _, u := range uses {
		at := u.At
		if at.After(latest) {
			at = latest.Truncate(time.Second)
		}
		if s, ok := m.byID[u.ID]; ok && at.After(s.LastUsedAt) {
			s.LastUsedAt = at.UTC()
			m.byID[u.ID] = s
		}
	}
	return nil
}

// GetLatest implements [TouchStore]: this store has no cache, so it is Get.
func (m *MemoryStore) GetLatest(ctx context.Context, id string) (Session, bool, error) {
	return m.Get(ctx, id)
}

// PruneIdle deletes every agent session (kind [KindSession]) last used at
// or before cutoff and returns how many: pass [IdleDeleteCutoff] with the
// managers' idle timeout. Insert prunes only the issuing agent's, like
// PruneExpired.
func (m *MemoryStore) PruneIdle(cutoff time.Time) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for id, s := range m.byID {
		if s.Kind == KindSession && idleBy(s, cutoff) {
			m.deleteLocked(id)
			n++
		}
	}
	return n
}

// lastUsedAt is s.LastUsedAt, never before IssuedAt, as stores report it.
func lastUsedAt(s Session) time.Time {
	if s.LastUsedAt.Before(s.IssuedAt) {
		return s.IssuedAt
	}
	return s.LastUsedAt
}

// idleBy: s was last used at or before cutoff; never when cutoff is zero.
func idleBy(s Session, cutoff time.Time) bool {
	return !cutoff.IsZero() && !lastUsedAt(s).After(cutoff)
}

// PruneExpired deletes every session that expired at or before now and
// returns how many. Insert prunes only the issuing agent's sessions, so a
// long-running process should call this now and then.
func (m *MemoryStore) PruneExpired(now time.Time) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for id, s := range m.byID {
		if !s.ExpiresAt.After(now) {
			m.deleteLocked(id)
			n++
		}
	}
	return n
}

// agentLocked returns the sessions of key expiring after now, oldest first.
func (m *MemoryStore) agentLocked(key limitKey, now time.Time) []Session {
	var out []Session
	for id := range m.byAgent[key] {
		if s := m.byID[id]; s.ExpiresAt.After(now) {
			out = append(out, cloneSession(s))
		}
	}
	slices.SortFunc(out, func(a, b Session) int {
		return cmp.Or(a.IssuedAt.Compare(b.IssuedAt), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// deleteLocked deletes the session and reports whether there was one.
func (m *MemoryStore) deleteLocked(id string) bool {
	s, ok := m.byID[id]
	if !ok {
		return false
	}
	delete(m.byID, id)
	ids := m.byAgent[keyOf(s)]
	delete(ids, id)
	if len(ids) == 0 {
		delete(m.byAgent, keyOf(s))
	}
	return true
}

// cloneSession copies the metadata map so callers cannot change what the
// store holds.
func cloneSession(s Session) Session {
	s.Metadata = maps.Clone(s.Metadata)
	return s
}
