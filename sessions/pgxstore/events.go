package pgxstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

const handleGoneChannel = "agentsessions_handle_gone"

// HandleEvent says that a state handle ([sessions.Handles]) is gone, on
// whichever instance it went, so the instance holding the resource behind
// it (a browser, a sandbox, a transaction) can free it.
type HandleEvent struct {
	Kind string // the handle's kind
	ID   string // the handle's ID ([sessions.Handle].ID): the handle without its MAC

	// Reason is "destroyed" (Destroy, or evicted to make room) or
	// "expired" (pruned, or found expired, by the database's clock).
	Reason string

	// Resync is set, with no handle, each time the listener connects:
	// events of handles that went while it was not listening are lost,
	// so reconcile: list the handles whose resources this instance holds
	// (Handles.Resolve or List) and free those that are gone. A TRUNCATE
	// of the table is a Resync too.
	Resync bool
}

// HandleEventsConfig configures [Store.RunHandleEvents].
type HandleEventsConfig struct {
	// OnEvent receives the events, one at a time from one goroutine, in
	// the order the deletions committed. Keep it quick, or hand the event
	// off: the next one waits. Required.
	OnEvent func(HandleEvent)

	// Kinds limits the events to these kinds. Default: every kind.
	Kinds []string

	// Logger receives a warning when the listener connection is lost and
	// an info record when it is back. Default: discards.
	Logger *slog.Logger
}

// RunHandleEvents delivers handle lifecycle events to cfg.OnEvent until
// ctx ends, then returns nil. Run it on the instances that hold resources
// behind handles. Delivery is at least once: each deletion of a handle
// row (Destroy, eviction, the pruner, an expired handle found on Resolve)
// is announced by a trigger of migration 00005 whose NOTIFY reaches a
// dedicated listener connection, and a Resync event after every
// (re)connection covers what was sent while it was away. An expired
// handle is announced when it is deleted: by the pruner ([Store.RunPruner])
// within one pruning interval, or earlier when it is resolved.
//
// It fails at once when the trigger is missing or disabled (apply the
// migrations); after that it reconnects by itself, with backoff.
func (p *Store) RunHandleEvents(ctx context.Context, cfg HandleEventsConfig) error {
	if cfg.OnEvent == nil {
		return &sessions.ConfigError{Field: "HandleEventsConfig.OnEvent", Reason: "must not be nil"}
	}
	for _, k := range cfg.Kinds {
		if err := sessions.ValidateKind(k); err != nil {
			return err
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	enabled, err := p.q.HandleEventsTriggerEnabled(ctx)
	if err != nil {
		return p.wrap(ctx, "handle events check", err)
	}
	if !enabled {
		return &sessions.ConfigError{Field: "RunHandleEvents", Reason: errEventsTriggerOff.Error()}
	}
	if err := p.checkListenable(ctx, "handle events check"); err != nil {
		return err
	}
	keepListening(ctx, cfg.Logger, "sessions: handle events listener lost; reconnecting (a Resync event follows)", func() (bool, error) {
		return p.listenHandleEvents(ctx, cfg)
	})
	return nil
}

var errEventsTriggerOff = errors.New("the trigger agent_sessions_notify_handle_gone of migration 00005 is missing or does not fire always; " +
	"apply the migrations, or after a restore run: ALTER TABLE agent_sessions ENABLE ALWAYS TRIGGER agent_sessions_notify_handle_gone")

// listenHandleEvents runs one listener connection until it fails or ctx
// ends; connected reports whether it got as far as listening.
func (p *Store) listenHandleEvents(ctx context.Context, cfg HandleEventsConfig) (connected bool, err error) {
	conn, err := p.listenerConn(ctx, "agentsessions-handle-events")
	if err != nil {
		return false, err
	}
	defer closeListener(ctx, conn)
	p.eventsPID.Store(conn.PgConn().PID())
	q := db.New(conn)
	if enabled, err := q.HandleEventsTriggerEnabled(ctx); err != nil || !enabled {
		if err == nil {
			err = errEventsTriggerOff
		}
		return false, err
	}
	if err := q.ListenHandleEvents(ctx); err != nil {
		return false, err
	}
	if err := q.ListenFlushes(ctx); err != nil {
		return false, err
	}
	cfg.Logger.InfoContext(ctx, "sessions: handle events listener connected")
	cfg.OnEvent(HandleEvent{Resync: true})
	for {
		waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return true, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			// Silence: make sure the connection is still there (a
			// half-open one would never deliver again).
			pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return true, fmt.Errorf("listener ping: %w", err)
			}
			continue
		case err != nil:
			return true, err
		}
		switch n.Channel {
		case flushChannel:
			cfg.OnEvent(HandleEvent{Resync: true})
		case handleGoneChannel:
			ev, ok := parseHandleEvent(n.Payload)
			if ok && (len(cfg.Kinds) == 0 || slices.Contains(cfg.Kinds, ev.Kind)) {
				cfg.OnEvent(ev)
			}
		}
	}
}

// parseHandleEvent reads the trigger's payload: "kind id reason".
func parseHandleEvent(payload string) (HandleEvent, bool) {
	f := strings.Fields(payload)
	if len(f) != 3 {
		return HandleEvent{}, false
	}
	return HandleEvent{Kind: f[0], ID: f[1], Reason: f[2]}, true
}
