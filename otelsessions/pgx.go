package otelsessions

import (
	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
)

// PgxTracer returns a tracer for a pgx pool's queries, on the providers
// of opts (WithAgentID does not apply): set it as the pool's
// ConnConfig.Tracer before opening the pool. It is
// github.com/exaring/otelpgx's, which follows the stable database
// semantic conventions (db.system.name=postgresql, db.query.text,
// db.operation.name, server.address, ...) and records query arguments
// only if asked, which it is not here: the store's queries carry digests
// and metadata as arguments, never in their text. Its spans (a query, a
// batch, a pool acquire) are children of the span in the query's context:
// the operation's span for a Manager call.
func PgxTracer(opts ...Option) pgx.QueryTracer {
	c := newConfig(opts)
	return otelpgx.NewTracer(otelpgx.WithTracerProvider(c.tp), otelpgx.WithMeterProvider(c.mp))
}
