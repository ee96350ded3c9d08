package pgxstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/sessions"
)

// The cache (RunCache) and handle events (RunHandleEvents) each keep a
// LISTEN connection of their own, outside the pool: a pooled connection
// would be handed to other queries, and LISTEN is per connection.

// listenerConn opens such a connection, named app in pg_stat_activity:
// to Config.ListenDatabaseURL if set, else with the pool's settings.
// Close it with closeListener.
func (p *Store) listenerConn(ctx context.Context, app string) (*pgx.Conn, error) {
	cc := p.pool.Config().ConnConfig.Copy()
	if p.cfg.ListenDatabaseURL != "" {
		tracer := cc.Tracer
		var err error
		if cc, err = pgx.ParseConfig(p.cfg.ListenDatabaseURL); err != nil {
			return nil, err // checked in New: does not happen
		}
		cc.Tracer = tracer
	}
	cc.RuntimeParams["application_name"] = app
	cc.OnNotification = nil // pgx buffers notifications for WaitForNotification only without a callback
	return pgx.ConnectConfig(ctx, cc)
}

func closeListener(ctx context.Context, conn *pgx.Conn) {
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = conn.Close(closeCtx)
}

// keepListening runs listen until ctx ends, reconnecting with backoff
// (50ms doubling to 5s, back to 50ms after a connection that got as far
// as listening); each loss is logged as lost (with the error). It
// returns when ctx ends.
func keepListening(ctx context.Context, log *slog.Logger, lost string, listen func() (connected bool, err error)) {
	wait := 50 * time.Millisecond
	for {
		connected, err := listen()
		if ctx.Err() != nil {
			return
		}
		if connected {
			wait = 50 * time.Millisecond
		}
		log.WarnContext(ctx, lost, slog.Any("error", err), slog.Duration("retry_in", wait))
		if sleepCtx(ctx, wait) != nil {
			return
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// checkListenURL: Config.ListenDatabaseURL, if set, must parse. It is not
// shown in the error, as it may hold a password.
func (c Config) checkListenURL() error {
	if c.ListenDatabaseURL == "" {
		return nil
	}
	if _, err := pgx.ParseConfig(c.ListenDatabaseURL); err != nil {
		return &sessions.ConfigError{Field: "Config.ListenDatabaseURL", Reason: "is not a valid connection string"}
	}
	return nil
}

// pooledListenProbe bounds how long checkListenable waits for its probe
// notification to come back.
const pooledListenProbe = 2 * time.Second

// checkListenable refuses a listener connection that goes through a
// connection pooler which cannot carry LISTEN (PgBouncer in transaction
// or statement mode): there the LISTEN runs on whichever server connection
// the pooler lends for that one statement, and the notifications never
// reach this client, so the cache would stay bypassed and handle events
// would never arrive, silently.
//
// Detection, in two steps. A pooler answers the startup with a backend
// key of its own, so a connection whose reported backend PID differs from
// pg_backend_pid() goes through one (a direct connection's always match).
// Only then, because a pooler in session mode does carry LISTEN, it
// listens on a random channel and sends one notification through the
// pool: if it has not come back within pooledListenProbe, RunCache and
// RunHandleEvents refuse to start with a [sessions.ConfigError] that says
// what to set.
func (p *Store) checkListenable(ctx context.Context, op string) error {
	conn, err := p.listenerConn(ctx, "agentsessions-listen-check")
	if err != nil {
		return p.wrap(ctx, op, err)
	}
	defer closeListener(ctx, conn)
	var serverPID uint32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&serverPID); err != nil {
		return p.wrap(ctx, op, err)
	}
	if serverPID == conn.PgConn().PID() {
		return nil // a direct connection
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	channel := "agentsessions_probe_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return p.wrap(ctx, op, err)
	}
	if _, err := p.pool.Exec(ctx, "SELECT pg_notify($1, 'probe')", channel); err != nil {
		return p.wrap(ctx, op, err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, pooledListenProbe)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(waitCtx)
		switch {
		case err == nil && n.Channel == channel:
			return nil // a pooler in session mode: LISTEN works
		case err == nil:
			continue
		case ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded):
			return p.wrap(ctx, op, err)
		}
		field := "Config.ListenDatabaseURL"
		if p.cfg.ListenDatabaseURL == "" {
			field = "pool"
		}
		return &sessions.ConfigError{Field: field, Reason: fmt.Sprintf("the LISTEN connection goes through a connection pooler "+
			"(its backend key names PID %d, the server says %d) that does not deliver notifications: one sent through the pool "+
			"did not come back within %s, as with PgBouncer in pool_mode = transaction. Set pgxstore.Config.ListenDatabaseURL "+
			"(agentsessions serve: --listen-database-url) to a connection string that reaches PostgreSQL directly",
			conn.PgConn().PID(), serverPID, pooledListenProbe)}
	}
}
