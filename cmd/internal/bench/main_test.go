package bench

import (
	"testing"

	"github.com/agentsessions/agentsessions/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }
