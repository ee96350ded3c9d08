package sessions

import (
	"context"
	"sync"
	"time"
)

// MemoryStore is a [Store] held in process memory, with the reference
// implementation's semantics. It suits tests and single-instance services:
// sessions are lost on restart and the limit holds only within the process.
// The zero value is not usable; call [NewMemoryStore].
type MemoryStore struct {
	mu      sync.Mutex
	byID    map[string]Session
	byAgent map[string]map[string]struct{} // agent ID -> session IDs
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{
		byID:    make(map[string]Session),
		byAgent: make(map[string]map[string]struct{}),
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
	return s, ok, nil
}

// Delete implements [Store].
func (m *MemoryStore) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deleteLocked(id)
	return nil
}

// InsertIfBelowLimit implements [Store]. Unlike the reference, which prunes
// every agent's expired sessions here, it prunes only s.AgentID's, as the
// PostgreSQL store does; other agents' expired sessions stay until looked up
// or pruned.
func (m *MemoryStore) InsertIfBelowLimit(ctx context.Context, s Session, limit int, now time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := m.byAgent[s.AgentID]
	for id := range ids {
		if !m.byID[id].ExpiresAt.After(now) {
			m.deleteLocked(id)
		}
	}
	if len(m.byAgent[s.AgentID]) >= limit {
		return false, nil
	}
	if _, dup := m.byID[s.ID]; dup {
		return false, &StoreError{Op: "insert", Err: errDuplicateID}
	}
	m.byID[s.ID] = s
	if m.byAgent[s.AgentID] == nil {
		m.byAgent[s.AgentID] = make(map[string]struct{})
	}
	m.byAgent[s.AgentID][s.ID] = struct{}{}
	return true, nil
}

// PruneExpired deletes every session that expired at or before now and
// returns how many. InsertIfBelowLimit prunes only the issuing agent's
// sessions, so a long-running process should call this now and then.
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

func (m *MemoryStore) deleteLocked(id string) {
	s, ok := m.byID[id]
	if !ok {
		return
	}
	delete(m.byID, id)
	ids := m.byAgent[s.AgentID]
	delete(ids, id)
	if len(ids) == 0 {
		delete(m.byAgent, s.AgentID)
	}
}
