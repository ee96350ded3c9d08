package pgxstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// serializableRow is a [db.DBTX] for single-row queries that runs each one
// in its own SERIALIZABLE transaction, with BEGIN, the query and COMMIT
// sent as one pipelined batch: one network round trip instead of three,
// and no change to the session state of the caller's pooled connections
// (setting default_transaction_isolation on them would get the same round
// trip but change every other query run on the pool).
type serializableRow struct {
	rowOnly
	pool *pgxpool.Pool
	// before, if set, is sent between BEGIN and the query (see
	// planForLookups).
	before string
}

func (s serializableRow) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return &pipelinedRow{ctx: ctx, pool: s.pool, before: s.before, sql: sql, args: args}
}

// planForLookups makes the rest of its transaction plan joins as index
// lookups: nested loops only, no sequential scans. A set-based statement
// (IssueSessionBatch) joins its few input rows to agent_session_counts,
// which the planner, expecting many inputs or seeing a small table, would
// otherwise hash-join over a sequential scan; at SERIALIZABLE that scan
// takes a predicate lock on the whole table, and every concurrent issue
// would then conflict with it. Local to the transaction, so the pool's
// connections keep their settings.
const planForLookups = "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true), " +
	"set_config('enable_mergejoin', 'off', true)"

// rowOnly is the rest of a [db.DBTX] that runs single-row queries only
// (serializableRow, queuedRow): every other call is errors.ErrUnsupported.
type rowOnly struct{}

func (rowOnly) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	return pgconn.CommandTag{}, errors.ErrUnsupported
}

func (rowOnly) Query(context.Context, string, ...any) (pgx.Rows, error) {
	return nil, errors.ErrUnsupported
}

func (rowOnly) SendBatch(context.Context, *pgx.Batch) pgx.BatchResults {
	return unsupportedBatch{}
}

// unsupportedBatch answers every call with errors.ErrUnsupported.
type unsupportedBatch struct{}

func (unsupportedBatch) Exec() (pgconn.CommandTag, error) {
	return pgconn.CommandTag{}, errors.ErrUnsupported
}
func (unsupportedBatch) Query() (pgx.Rows, error) { return nil, errors.ErrUnsupported }
func (unsupportedBatch) QueryRow() pgx.Row        { return errRow{} }
func (unsupportedBatch) Close() error             { return errors.ErrUnsupported }
func (unsupportedBatch) Tx() pgx.Tx               { return nil }

type errRow struct{}

func (errRow) Scan(...any) error { return errors.ErrUnsupported }

type pipelinedRow struct {
	ctx    context.Context
	pool   *pgxpool.Pool
	before string
	sql    string
	args   []any
}

// Scan sends the batch and scans the query's row (see sendSerializable).
func (r *pipelinedRow) Scan(dest ...any) (err error) {
	conn, err := r.pool.Acquire(r.ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	_, err = sendSerializable(r.ctx, conn, r.before, r.sql, r.args, dest, "")
	return err
}

// sendSerializable sends BEGIN ISOLATION LEVEL SERIALIZABLE, before (""
// for none), sql, COMMIT and then after (with afterArgs; "" for none) as
// one batch on conn, and
// scans sql's row into dest. afterOK reports whether after ran without
// error; the server skips it when anything before it failed. Errors
// follow the retry loop's rules: a server error means nothing was
// committed (the server skips the rest of a failed batch, COMMIT
// included); any other failure after sending is a commitError, as the
// COMMIT went out with it. A failed batch leaves conn in an aborted
// transaction; it is rolled back here, so the pool can reuse conn.
func sendSerializable(ctx context.Context, conn *pgxpool.Conn, before, sql string, args, dest []any, after string, afterArgs ...any) (afterOK bool, err error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL SERIALIZABLE")
	if before != "" {
		b.Queue(before)
	}
	b.Queue(sql, args...)
	b.Queue("COMMIT")
	if after != "" {
		b.Queue(after, afterArgs...)
	}
	br := conn.SendBatch(ctx, b)
	_, err = br.Exec()
	if err == nil && before != "" {
		_, err = br.Exec()
	}
	if err == nil {
		err = br.QueryRow().Scan(dest...)
		if err == nil {
			if _, err = br.Exec(); err != nil {
				err = &commitError{err}
			} else if after != "" {
				_, aerr := br.Exec()
				afterOK = aerr == nil
			}
		}
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = &commitError{cerr}
	}
	if err != nil && conn.Conn().PgConn().TxStatus() != 'I' && !conn.Conn().IsClosed() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_, _ = conn.Exec(rctx, "ROLLBACK")
		cancel()
	}
	var pgErr *pgconn.PgError
	if err != nil && !errors.As(err, &pgErr) && !pgconn.SafeToRetry(err) {
		if ce := (*commitError)(nil); !errors.As(err, &ce) {
			err = &commitError{err}
		}
	}
	return afterOK, err
}
