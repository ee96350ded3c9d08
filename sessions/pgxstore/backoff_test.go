package pgxstore

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestBackoffBounds(t *testing.T) {
	cfg, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p := &Store{cfg: cfg}
	for attempt := 1; attempt < 64; attempt++ {
		// Retry n waits in [Min, min(Max, Min*2^n)], as documented.
		ceil := cfg.MaxBackoff
		if attempt < 30 {
			ceil = min(ceil, cfg.MinBackoff*(1<<attempt))
		}
		seen := map[time.Duration]bool{}
		for range 200 {
			d := p.backoff(attempt)
			if d < cfg.MinBackoff || d > ceil {
				t.Fatalf("retry %d: %v outside [%v, %v]", attempt, d, cfg.MinBackoff, ceil)
			}
			seen[d] = true
		}
		// Jitter on every retry, the first included: transactions that
		// failed together must not retry in lockstep.
		if len(seen) < 50 {
			t.Fatalf("retry %d: only %d distinct waits in 200 draws", attempt, len(seen))
		}
	}
}

// Once a statement that commits by itself was sent, only an ordinary
// server error proves it did not commit; the retry loop must not rerun
// it after a broken connection or a FATAL reply.
func TestMayHaveCommitted(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		rerunnable bool
	}{
		{"network error after sending", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, false},
		{"unexpected EOF", io.ErrUnexpectedEOF, false},
		{"FATAL admin shutdown", &pgconn.PgError{Code: "57P01"}, false},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true},
	}
	for _, c := range cases {
		err := mayHaveCommitted(c.err)
		rerun := brokenBeforeCommit(err) || isSerializationFailure(err)
		if rerun != c.rerunnable {
			t.Errorf("%s: classified as rerunnable=%v, want %v (%v)", c.name, rerun, c.rerunnable, err)
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%s: cause lost: %v", c.name, err)
		}
	}
	if mayHaveCommitted(nil) != nil {
		t.Error("nil error changed")
	}
}
