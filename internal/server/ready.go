package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"

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

// PostgresReady returns a readiness check for [Options.Ready]: the database
// answers, and every migration embedded in this binary ([migrations.FS])
// is recorded as applied in [migrations.VersionTable].
//
// It reads goose's version table with one SELECT instead of calling
// goose's Provider.HasPending, because HasPending first creates the version
// table when it is missing: a readiness probe must not run DDL, and the
// least-privilege runtime role (SECURITY.md) cannot. The runtime role
// needs SELECT on the version table; without it the check fails with a
// message saying so. A failure because migrations are missing is a
// [NotReadyError] with Pending set; agentsessions serve runs the check
// once at start and refuses to start on such a database.
func PostgresReady(pool *pgxpool.Pool) (func(context.Context) error, error) {
	want, err := embeddedVersions()
	if err != nil {
		return nil, err
	}
	query := "SELECT version_id, is_applied FROM " + migrations.VersionTable + " ORDER BY id"
	return func(ctx context.Context) error {
		if err := pool.Ping(ctx); err != nil {
			return &NotReadyError{Public: "the database is unreachable", Err: err}
		}
		rows, err := pool.Query(ctx, query)
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
	}, nil
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

// embeddedVersions lists the versions of the migrations in this binary.
func embeddedVersions() ([]int64, error) {
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		return nil, err
	}
	var out []int64
	for _, n := range names {
		v, err := goose.NumericComponent(n)
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", n, err)
		}
		out = append(out, v)
	}
	slices.Sort(out)
	return out, nil
}

// PostgresLiveSessions returns a counter for [Options.LiveSessions]: the
// number of rows in agent_sessions that have not expired by clock (the
// managers' clock, as the library uses; nil means time.Now).
//
// This is the one query the server runs outside the library, so it is
// kept here, in one function:
//
//	SELECT count(*) FROM agent_sessions WHERE expires_at > $1
//
// It scans every live row (an index-only scan where the planner can), so
// the server caches the result (Options.LiveSessionsCacheTTL) rather than
// counting on every scrape.
func PostgresLiveSessions(pool *pgxpool.Pool, clock func() time.Time) func(context.Context) (int64, error) {
	if clock == nil {
		clock = time.Now
	}
	return func(ctx context.Context) (int64, error) {
		var n int64
		err := pool.QueryRow(ctx, "SELECT count(*) FROM agent_sessions WHERE expires_at > $1", clock()).Scan(&n)
		return n, err
	}
}
