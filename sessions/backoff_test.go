package sessions

import (
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	cfg, err := PostgresConfig{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p := &PostgresStore{cfg: cfg}
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
