package pgxstore

import "errors"

// ErrRetriesExhausted is in the chain of a [sessions.StoreError] when the PostgreSQL
// store gave up on a call that kept failing with serialization failures,
// deadlocks or a full lock table (SQLSTATE 40001/40P01/53200) after its
// configured number of attempts
// ([Config.MaxAttempts]). Callers may retry later; nothing was
// written.
var ErrRetriesExhausted = errors.New("pgxstore: serialization retries exhausted")

// ErrNotMigrated is in the chain of a [sessions.StoreError] when the PostgreSQL
// store found its tables or columns missing (SQLSTATE 42P01 or 42703):
// the database has not been migrated, or only partly. Apply the
// migrations (migrations.Up, or `agentsessions migrate up`); retrying
// without that will not help.
var ErrNotMigrated = errors.New("pgxstore: database schema missing or out of date")
