package bench

import (
	"context"
	"testing"
	"time"
)

// Open loop, latency counts from each arrival's scheduled start: one
// client and an operation that takes at least 10ms, driven at 200/s (twice
// what it can serve), falls further behind with every arrival, so arrival
// i waits at least i x 5ms before it starts and its latency is at least
// 10ms + i x 5ms. Closed loop, the same operation counts only its own
// time. The bounds below follow from the sleep alone, not the machine.
func TestOpenLoopCountsQueueingDelay(t *testing.T) {
	cfg, err := Config{DatabaseURL: "unused", Ops: 40}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	slow := func(ctx context.Context, w *worker) {
		_ = timed(ctx, cfg, w, OpIssue, func(context.Context) error { time.Sleep(10 * time.Millisecond); return nil })
	}
	open := drive(context.Background(), cfg, "open", 1, load{rate: 200}, nil, slow)
	lat := result(EngineOurs, WorkloadIssue, open.workers, open.elapsed).Latency
	if lat.N != 40 {
		t.Fatalf("%d operations, want the 40 arrivals", lat.N)
	}
	if lat.Max < 10*time.Millisecond+39*5*time.Millisecond {
		t.Errorf("open loop above capacity: max latency %v, want >= 205ms (the last arrival queued >= 195ms)", lat.Max)
	}
	if lat.P50 < 10*time.Millisecond+19*5*time.Millisecond {
		t.Errorf("open loop above capacity: median %v, want >= 105ms", lat.P50)
	}

	closed := drive(context.Background(), cfg, "closed", 1, load{}, nil, slow)
	cl := result(EngineOurs, WorkloadIssue, closed.workers, closed.elapsed).Latency
	if cl.N != 40 || cl.P50 < 10*time.Millisecond || cl.Mean >= lat.Mean {
		t.Errorf("closed loop %+v: want 40 operations of >= 10ms each, on average faster than open loop's %v", cl, lat.Mean)
	}
}

// Below capacity, arrivals keep to the schedule: they never start early,
// so 20 arrivals at 100/s take at least 190ms.
func TestOpenLoopKeepsTheSchedule(t *testing.T) {
	cfg, err := Config{DatabaseURL: "unused", Ops: 20}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	var starts []time.Time
	// The schedule starts inside drive, at or after this, so arrival i
	// may not start before it plus i intervals. (Measuring from the first
	// arrival's start instead fails when that one starts late.)
	before := time.Now()
	d := drive(context.Background(), cfg, "open", 1, load{rate: 100}, nil, func(ctx context.Context, w *worker) {
		_ = timed(ctx, cfg, w, OpIssue, func(context.Context) error { starts = append(starts, time.Now()); return nil })
	})
	if len(starts) != 20 || d.elapsed < 190*time.Millisecond {
		t.Fatalf("%d arrivals in %v, want 20 in >= 190ms", len(starts), d.elapsed)
	}
	for i := 1; i < len(starts); i++ {
		if gap := starts[i].Sub(before); gap < time.Duration(i)*10*time.Millisecond {
			t.Errorf("arrival %d started %v after the run began, before its scheduled %v", i, gap, time.Duration(i)*10*time.Millisecond)
		}
	}
	res := resultOf(EngineOurs, WorkloadIssue, d, load{rate: 100, fraction: 0.5})
	if res.TargetRate != 100 || res.LoadFraction != 0.5 || res.ClientCPUS < 0 {
		t.Errorf("result %+v", res)
	}
}
