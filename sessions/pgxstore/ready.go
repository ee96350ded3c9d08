package pgxstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/agentsessions/agentsessions/migrations"
)

// NotReadyError is a readiness failure. /readyz answers with Public; Err,
// which may name hosts, only goes to the log.
type NotReadyError struct {
	Public string
	Err    error

	// Pending lists, in order, the versions of the migrations embedded in
	// this binary that the database has not applied (all of them when it
	// has no version table). It is empty when the failure is something
	// else (unreachable, no permission): then waiting may help, while a
	// pending migration only goes away when someone migrates.
	Pending []int64
}

func (e *NotReadyError) Error() string {
	if e.Err == nil {
		return e.Public
	}
	return e.Public + ": " + e.Err.Error()
}

func (e *NotReadyError) Unwrap() error { return e.Err }

// Is reports whether target is [ErrNotMigrated] and migrations are
// pending.
func (e *NotReadyError) Is(target error) bool { return target == ErrNotMigrated && len(e.Pending) > 0 }

// Ready reports whether the store can serve: the database answers, and
// every migration embedded in this module ([migrations.Versions]) is
// recorded as applied in [migrations.VersionTable]. It returns nil or a
// [*NotReadyError]; one with Pending set matches [ErrNotMigrated].
//
// It reads goose's version table with one SELECT instead of calling
// goose's Provider.HasPending, because HasPending first creates the version
// table when it is missing: a readiness probe must not run DDL, and the
// least-privilege runtime role (SECURITY.md) cannot. The runtime role
// needs SELECT on the version table; without it the check fails with a
// message saying so.
func (p *Store) Ready(ctx context.Context) error {
	want, err := migrations.Versions()
	if err != nil {
		return &NotReadyError{Public: "this build's migrations are unreadable", Err: err}
	}
	if err := p.pool.Ping(ctx); err != nil {
		return &NotReadyError{Public: "the database is unreachable", Err: err}
	}
	// The table name is goose's, a constant: not a query for sqlc,
	// which knows only the schema the migrations create.
	rows, err := p.pool.Query(ctx, "SELECT version_id, is_applied FROM "+migrations.VersionTable+" ORDER BY id")
	if err != nil {
		return versionTableError(err, want)
	}
	applied := map[int64]bool{}
	for rows.Next() {
		var v int64
		var ok bool
		if err := rows.Scan(&v, &ok); err != nil {
			rows.Close()
			return &NotReadyError{Public: "cannot read the migration history", Err: err}
		}
		applied[v] = ok // the latest row for a version wins
	}
	if err := rows.Err(); err != nil {
		return versionTableError(err, want)
	}
	var pending []int64
	for _, v := range want {
		if !applied[v] {
			pending = append(pending, v)
		}
	}
	if len(pending) > 0 {
		return &NotReadyError{Public: fmt.Sprintf(
			"%d of %d migrations are not applied (first: %d): run 'agentsessions migrate up'",
			len(pending), len(want), pending[0]), Pending: pending}
	}
	return nil
}

func versionTableError(err error, want []int64) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "42P01": // undefined_table
			return &NotReadyError{Public: "no migrations are applied: run 'agentsessions migrate up'", Err: err,
				Pending: slices.Clone(want)}
		case "42501": // insufficient_privilege
			return &NotReadyError{Public: "cannot read the migration history: GRANT SELECT ON " +
				migrations.VersionTable + " to the service's database role", Err: err}
		}
	}
	return &NotReadyError{Public: "cannot read the migration history", Err: err}
}

// LiveSessions counts the sessions that have not expired by now (use the
// managers' clock). It scans every live row (an index-only scan where the
// planner can), so cache the result rather than count on every metrics
// scrape.
func (p *Store) LiveSessions(ctx context.Context, now time.Time) (n int64, err error) {
	err = p.read(ctx, "count live", func() error {
		n, err = p.q.CountLiveSessions(ctx, now)
		return err
	})
	return n, err
}
