package pgxstore_test

import (
	"testing"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
	"github.com/agentsessions/agentsessions/sessions/sessionstest"
)

// The store meets the contract every sessions.Store must meet, with the
// count rows checked after each subtest.
func TestStoreContract(t *testing.T) {
	t.Parallel()
	sessionstest.Run(t, newPostgresStore)
}

// Instances on pools of their own, in different phases of a secret
// rotation at once.
func TestRollingRotationPostgres(t *testing.T) {
	d := testdb.New(t)
	sessionstest.RollingRotation(t, func() sessions.Store {
		s, err := pgxstore.New(d.Pool(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// newPostgresStore is a pgxstore.Store with default settings on a fresh,
// migrated schema of its own.
func newPostgresStore(t *testing.T) sessions.Store {
	t.Helper()
	pool := testdb.New(t).Pool(t)
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Whatever the test did, every agent's count row must match its rows.
	t.Cleanup(func() { checkCounts(t, pool) })
	return store
}
