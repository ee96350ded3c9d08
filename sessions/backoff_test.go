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
		ceil := min(cfg.MaxBackoff, cfg.MinBackoff<<min(attempt-1, 30))
		var most time.Duration
		for range 200 {
			d := p.backoff(attempt)
			if d < cfg.MinBackoff || d > ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, cfg.MinBackoff, ceil)
			}
			most = max(most, d)
		}
		// Jitter: over 200 draws the spread reaches well into the range.
		if ceil > 2*cfg.MinBackoff && most < cfg.MinBackoff+(ceil-cfg.MinBackoff)/2 {
			t.Fatalf("attempt %d: max of 200 draws %v, expected jitter up to %v", attempt, most, ceil)
		}
	}
}
