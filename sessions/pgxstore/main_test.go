package pgxstore_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/agentsessions/agentsessions/internal/testdb"
)

// TestMain fails the run if any goroutine outlives the tests: every pool,
// pruner and retry loop must stop when its test is done, including the
// fault tests.
func TestMain(m *testing.M) {
	code := testdb.Run(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
