package bench

import (
	"context"
	"sync"

	"github.com/agentsessions/agentsessions/sessions"
)

// The singleflight variant is a prototype for reconnect storms (issue 16,
// part 1), measured beside the library in the same run without changing
// it: each instance lets one Insert per agent (and kind) go to the
// database at a time, and the others wait in the instance for it to end
// instead of all sending their SERIALIZABLE transactions at once, where
// all but one abort and back off. Across instances the database still
// decides, with the same statement and isolation; only the number of
// same-agent transactions racing at once drops from clients to instances.

// agentGate is one instance's per-agent queue: at most one holder per key.
type agentGate struct {
	mu sync.Mutex
	m  map[string]*gateEntry
}

type gateEntry struct {
	slot    chan struct{} // capacity 1: holding it is holding the key
	waiters int           // holders and waiters; the entry goes at 0
}

func newAgentGate() *agentGate { return &agentGate{m: map[string]*gateEntry{}} }

// acquire waits for key's turn; release must be called once it is done.
// A canceled ctx gives up the place in the queue.
func (g *agentGate) acquire(ctx context.Context, key string) (release func(), err error) {
	g.mu.Lock()
	e := g.m[key]
	if e == nil {
		e = &gateEntry{slot: make(chan struct{}, 1)}
		g.m[key] = e
	}
	e.waiters++
	g.mu.Unlock()
	select {
	case e.slot <- struct{}{}:
		return func() { <-e.slot; g.leave(key, e) }, nil
	case <-ctx.Done():
		g.leave(key, e)
		return nil, ctx.Err()
	}
}

func (g *agentGate) leave(key string, e *gateEntry) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e.waiters--; e.waiters == 0 {
		delete(g.m, key)
	}
}

// len is how many keys have a holder or waiter (for tests).
func (g *agentGate) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.m)
}

// gatedStore is the library's store behind an agentGate.
type gatedStore struct {
	libStore
	gate *agentGate
}

func (s gatedStore) Insert(ctx context.Context, sess sessions.Session, req sessions.InsertRequest) (sessions.InsertResult, error) {
	release, err := s.gate.acquire(ctx, sess.Kind+"\x00"+sess.AgentID)
	if err != nil {
		return sessions.InsertResult{}, err
	}
	defer release()
	return s.libStore.Insert(ctx, sess, req)
}
