package pgxstore

// CacheListenerPID is the backend PID of the store's cache listener
// connection (0 before the first connection), so tests can terminate it.
func CacheListenerPID(p *Store) uint32 {
	if c := p.cache.Load(); c != nil {
		return c.pid.Load()
	}
	return 0
}

// HandleEventsListenerPID is the backend PID of the store's handle events
// listener (0 before the first connection).
func HandleEventsListenerPID(p *Store) uint32 { return p.eventsPID.Load() }

// MarkContended makes the store's issues for (agent, kind) queue on the
// advisory lock for a second, as a serialization failure would.
func MarkContended(p *Store, agent, kind string) { p.contended.mark(limitKey{agent, kind}) }

// QueueLockKey is the advisory lock key contended issues for (agent, kind) take.
func QueueLockKey(agent, kind string) int64 { return queueLockKey(limitKey{agent, kind}) }

// IssuesQueued is how many issues wait for a free issue slot (issuebatch.go).
func IssuesQueued(p *Store) int {
	p.issues.mu.Lock()
	defer p.issues.mu.Unlock()
	return len(p.issues.queue)
}

// PlanForLookups is what an issue batch sends before its statement.
const PlanForLookups = planForLookups
