package pgxstore

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// The cache (RunCache) and handle events (RunHandleEvents) each keep a
// LISTEN connection of their own, outside the pool: a pooled connection
// would be handed to other queries, and LISTEN is per connection.

// listenerConn opens such a connection, named app in pg_stat_activity:
// to Config.DirectDatabaseURL if set, else with the pool's settings.
// Close it with closeListener.
func (p *Store) listenerConn(ctx context.Context, app string) (*pgx.Conn, error) {
	cc, err := p.directConfig()
	if err != nil {
		return nil, err
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
