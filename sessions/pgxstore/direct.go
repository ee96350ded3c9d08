package pgxstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// Three things of the store need a database session of their own, which a
// connection pooler in transaction mode (PgBouncer pool_mode =
// transaction) does not give: it lends a server connection for one
// transaction at a time. LISTEN (the cache and handle events) would run on
// whichever server connection was lent for that statement, and its
// notifications would never reach the client; the pruner's session-level
// advisory lock would stay behind on a server connection of the pooler,
// held for good, so every later pass, from any instance, skips. Those
// three use Config.DirectDatabaseURL when it is set; when it is not, the
// listeners refuse to start behind such a pooler and prune passes fail,
// saying what to set.

// checkDirectURL: Config.DirectDatabaseURL, if set, must parse. It is not
// shown in the error, as it may hold a password.
func (c Config) checkDirectURL() error {
	if c.DirectDatabaseURL == "" {
		return nil
	}
	if _, err := pgx.ParseConfig(c.DirectDatabaseURL); err != nil {
		return &sessions.ConfigError{Field: "Config.DirectDatabaseURL", Reason: "is not a valid connection string"}
	}
	return nil
}

// directConfig is the configuration of a connection of the store's own:
// Config.DirectDatabaseURL if set (with the pool's tracer), else a copy of
// the pool's.
func (p *Store) directConfig() (*pgx.ConnConfig, error) {
	cc := p.pool.Config().ConnConfig.Copy()
	if p.cfg.DirectDatabaseURL == "" {
		return cc, nil
	}
	dc, err := pgx.ParseConfig(p.cfg.DirectDatabaseURL)
	if err != nil {
		return nil, err // checked in New
	}
	dc.Tracer = cc.Tracer
	return dc, nil
}

// sessionProbe bounds how long checkSession waits for its probe
// notification to come back.
const sessionProbe = 2 * time.Second

// checkSession reports, as a [sessions.ConfigError] naming what for, a
// connection that goes through a pooler which does not keep it on one
// server session.
//
// Detection, in two steps. A pooler answers the startup with a backend
// key of its own, so a connection whose reported backend PID differs from
// pg_backend_pid() goes through one (a direct connection's always match).
// Only then, because a pooler in session mode does keep the session, conn
// listens on a random channel and one notification is sent through the
// pool: if it has not come back within sessionProbe, the pooler lends
// server connections per transaction.
//
// Database errors are returned as they are, for the caller to wrap.
func (p *Store) checkSession(ctx context.Context, what string, conn *pgx.Conn) error {
	var serverPID uint32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&serverPID); err != nil {
		return err
	}
	if serverPID == conn.PgConn().PID() {
		return nil // a direct connection
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	channel := "agentsessions_probe_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "UNLISTEN "+channel) }()
	if _, err := p.pool.Exec(ctx, "SELECT pg_notify($1, 'probe')", channel); err != nil {
		return err
	}
	waitCtx, cancel := context.WithTimeout(ctx, sessionProbe)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(waitCtx)
		switch {
		case err == nil && n.Channel == channel:
			return nil // a pooler in session mode
		case err == nil:
			continue
		case ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded):
			return err
		}
		field := "Config.DirectDatabaseURL"
		if p.cfg.DirectDatabaseURL == "" {
			field = "pool"
		}
		return &sessions.ConfigError{Field: field, Reason: fmt.Sprintf("%s needs a database session of its own, but its connection "+
			"goes through a connection pooler (its backend key names PID %d, the server says %d) that lends server connections "+
			"per transaction: a notification sent through the pool did not come back to it within %s, as with PgBouncer in "+
			"pool_mode = transaction. Set pgxstore.Config.DirectDatabaseURL (agentsessions serve: --direct-database-url) to a "+
			"connection string that reaches PostgreSQL directly",
			what, conn.PgConn().PID(), serverPID, sessionProbe)}
	}
}

// checkListenable refuses to start a listener (the cache, handle events)
// whose LISTEN would never hear anything: see checkSession.
func (p *Store) checkListenable(ctx context.Context, op string) error {
	conn, err := p.listenerConn(ctx, "agentsessions-session-check")
	if err != nil {
		return p.wrap(ctx, op, err)
	}
	defer closeListener(ctx, conn)
	err = p.checkSession(ctx, "LISTEN (the cache, handle events)", conn)
	var ce *sessions.ConfigError
	if err != nil && !errors.As(err, &ce) {
		err = p.wrap(ctx, op, err)
	}
	return err
}

// checkPrunerSession: a prune pass on a connection of the pool, when the
// pool goes through a pooler in transaction mode, would leave its lock
// behind on a server connection of the pooler. Checked on the first
// pass's connection; once passed, never again.
func (p *Store) checkPrunerSession(ctx context.Context, conn *pgx.Conn) error {
	if p.pruneOK.Load() {
		return nil
	}
	if err := p.checkSession(ctx, "the pruner's advisory lock", conn); err != nil {
		return err
	}
	p.pruneOK.Store(true)
	return nil
}

// pruneSession is the connection one prune pass holds the prune lock on:
// a connection of the pool, or with Config.DirectDatabaseURL a direct one
// opened for the pass.
type pruneSession struct {
	pooled *pgxpool.Conn
	direct *pgx.Conn
}

func (p *Store) pruneSession(ctx context.Context) (pruneSession, error) {
	if p.cfg.DirectDatabaseURL == "" {
		c, err := p.pool.Acquire(ctx)
		if err != nil {
			return pruneSession{}, err
		}
		if err := p.checkPrunerSession(ctx, c.Conn()); err != nil {
			c.Release()
			return pruneSession{}, err
		}
		return pruneSession{pooled: c}, nil
	}
	cc, err := p.directConfig()
	if err != nil {
		return pruneSession{}, err
	}
	cc.RuntimeParams["application_name"] = "agentsessions-pruner"
	c, err := pgx.ConnectConfig(ctx, cc)
	return pruneSession{direct: c}, err
}

func (s pruneSession) dbtx() db.DBTX {
	if s.direct != nil {
		return s.direct
	}
	return s.pooled
}

func (s pruneSession) conn() *pgx.Conn {
	if s.direct != nil {
		return s.direct
	}
	return s.pooled.Conn()
}

// release gives a pooled connection back (or closes a direct one, which
// releases any lock it still holds).
func (s pruneSession) release(ctx context.Context) {
	if s.direct != nil {
		closeListener(ctx, s.direct)
		return
	}
	s.pooled.Release()
}
