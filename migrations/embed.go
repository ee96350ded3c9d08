// Package migrations holds the goose migrations that create the session
// store's schema, embedded in the binary, and a way to run them.
//
// A service that links agentsessions can migrate at start-up:
//
//	if err := migrations.Up(ctx, pool); err != nil { ... }
//
// Up takes a PostgreSQL session-level advisory lock for the duration of the
// run, so several instances starting at once migrate one after the other
// instead of racing. The migration history is kept in its own table,
// [VersionTable], so it never mixes with a service's own goose history.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var embedded embed.FS

// FS holds the migration files (00001_*.sql, ...), in goose's SQL format.
var FS fs.FS = embedded

// VersionTable is the table goose records applied migrations in. It is not
// goose's default so that a service using goose for its own schema in the
// same database keeps a separate history.
const VersionTable = "agentsessions_goose_db_version"

// LockID is the PostgreSQL advisory lock key held while migrating. It is
// distinct from goose's default key so that migrating agentsessions does not
// wait on (or block) a service's own goose migrations.
const LockID int64 = 0x6167_656e_7473_6573 // "agentses"

// NewProvider returns a goose provider over [FS] for db, locked with a
// PostgreSQL session advisory lock ([LockID]; polled every second for up to
// five minutes) and recording history in [VersionTable]. Extra goose options
// are appended after these. The caller owns db.
func NewProvider(db *sql.DB, opts ...goose.ProviderOption) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(LockID),
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		return nil, fmt.Errorf("migrations: session locker: %w", err)
	}
	base := []goose.ProviderOption{
		goose.WithSessionLocker(locker),
		goose.WithTableName(VersionTable),
		// A linking service may register its own Go migrations globally;
		// they must never run as part of ours.
		goose.WithDisableGlobalRegistry(true),
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, FS, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return p, nil
}

// Versions lists the versions of the migrations in [FS], in order: what a
// database must have applied for this code.
func Versions() ([]int64, error) {
	names, err := fs.Glob(FS, "*.sql")
	if err != nil {
		return nil, err
	}
	out := make([]int64, 0, len(names))
	for _, n := range names {
		v, err := goose.NumericComponent(n)
		if err != nil {
			return nil, fmt.Errorf("migrations: %s: %w", n, err)
		}
		out = append(out, v)
	}
	slices.Sort(out)
	return out, nil
}

// Up applies every pending migration using a connection from pool. It is
// safe to call from many instances at once.
func Up(ctx context.Context, pool *pgxpool.Pool) error {
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	p, err := NewProvider(sqlDB)
	if err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrations: up: %w", err)
	}
	return nil
}
