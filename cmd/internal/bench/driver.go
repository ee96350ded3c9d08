package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"
)

// worker is one client of a run. Its recorder and random source are its
// own, so recording takes no lock.
type worker struct {
	id  int
	rng *rand.Rand
	rec *recorder
	// owned is the mixed workload's sessions this worker may authenticate
	// and revoke (engine-specific values).
	owned []any
	// intended is, in an open-loop run, when the step now running was
	// scheduled to start: the step's first timed operation counts its
	// latency from there, so time spent queued behind a busy client counts.
	intended time.Time
}

// load is how a run drives its engine: closed loop (every client starts
// its next operation when the previous one ends), or open loop at a fixed
// arrival rate.
type load struct {
	rate     float64 // arrivals per second over all clients; 0: closed loop
	fraction float64 // rate as a fraction of the engine's closed-loop throughput (report only)
	// busy, when set, keeps a duration-bound run going past its deadline
	// for as long as it returns true (issue-prune: until the prune ends).
	busy func() bool
}

// driven is what drive measured.
type driven struct {
	workers []*worker
	elapsed time.Duration
	cpu     time.Duration // this process's CPU time (user + system) during the run
}

// budget decides when a run stops: after a duration, or after a number of
// steps claimed across all workers.
type budget struct {
	deadline time.Time
	ops      int64
	claimed  atomic.Int64
	done     atomic.Int64
	busy     func() bool // see load.busy
}

// open reports whether a duration-bound run may start a step scheduled at t.
func (b *budget) open(t time.Time) bool {
	return t.Before(b.deadline) || (b.busy != nil && b.busy())
}

// next claims one step; false means stop.
func (b *budget) next() bool {
	if b.ops > 0 {
		return b.claimed.Add(1) <= b.ops
	}
	return b.open(time.Now())
}

// drive runs step on clients workers until the budget is spent and
// returns the workers (with their recorders), the elapsed time (from the
// start until the last worker finished its last step) and the CPU time
// this process used meanwhile. Steps in flight when the deadline passes
// finish normally and are counted.
//
// Closed loop (l.rate 0), each worker starts its next step when its last
// one ends. Open loop, arrivals come on a fixed schedule, one every
// 1/rate seconds from the start, and the next free worker takes the next
// arrival, waiting for its time if it is early; a late arrival starts at
// once, and its latency still counts from its scheduled time (see
// worker.intended), so the queueing delay a closed loop omits (coordinated
// omission) is in the figures. Every arrival scheduled before the deadline
// (or the first cfg.Ops arrivals) is served.
func drive(ctx context.Context, cfg Config, label string, clients int, l load, setup func(w *worker), step func(ctx context.Context, w *worker)) driven {
	workers := make([]*worker, clients)
	for i := range workers {
		workers[i] = &worker{id: i, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), rec: newRecorder()}
		if setup != nil {
			setup(workers[i])
		}
	}
	b := &budget{ops: cfg.Ops, busy: l.busy}
	start := time.Now()
	if cfg.Ops == 0 {
		b.deadline = start.Add(cfg.Duration)
	}
	stopBar := startProgress(cfg.Progress, label, cfg, start, b.done.Load)
	cpu0 := processCPU()
	var wg sync.WaitGroup
	var arrivals atomic.Int64
	for _, w := range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if l.rate > 0 {
					i := arrivals.Add(1) - 1
					at := start.Add(time.Duration(float64(i) / l.rate * float64(time.Second)))
					if (b.ops > 0 && i >= b.ops) || (b.ops == 0 && !b.open(at)) {
						return
					}
					if wait := time.Until(at); wait > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(wait):
						}
					}
					w.intended = at
				} else if !b.next() {
					return
				}
				step(ctx, w)
				w.intended = time.Time{}
				b.done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	stopBar()
	return driven{workers: workers, elapsed: elapsed, cpu: cpu}
}

// processCPU is the user + system CPU time this process has used so far
// (getrusage RUSAGE_SELF); 0 where that is not available.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startOf is when an operation of w starting now counts from: the
// scheduled start of an open-loop step (for its first operation only),
// else now.
func (w *worker) startOf() time.Time {
	if !w.intended.IsZero() {
		at := w.intended
		w.intended = time.Time{}
		return at
	}
	return time.Now()
}

// timed runs fn with the per-operation timeout and records its latency
// and outcome as op.
func timed(ctx context.Context, cfg Config, w *worker, op string, fn func(ctx context.Context) error) error {
	opCtx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	start := w.startOf()
	err := fn(opCtx)
	d := time.Since(start)
	cancel()
	class := Classify(err)
	if err != nil && ctx.Err() != nil {
		class = ClassCanceled
	}
	w.rec.record(op, class, d, err)
	return err
}

func recorders(ws []*worker) []*recorder {
	out := make([]*recorder, len(ws))
	for i, w := range ws {
		out[i] = w.rec
	}
	return out
}

// result builds an engine's Result from what drive measured.
func resultOf(engine, workload string, d driven, l load) Result {
	r := result(engine, workload, d.workers, d.elapsed)
	r.setLoad(l)
	r.setCPU(d.cpu)
	return r
}

func (r *Result) setLoad(l load) {
	if l.rate > 0 {
		r.TargetRate, r.LoadFraction = l.rate, l.fraction
	}
}

// setCPU records the client's CPU time for the run.
func (r *Result) setCPU(cpu time.Duration) {
	r.ClientCPUS = cpu.Seconds()
	if r.Ops > 0 {
		r.ClientCPUPerOpUS = float64(cpu.Microseconds()) / float64(r.Ops)
	}
}

// result builds an engine's Result from its workers.
func result(engine, workload string, ws []*worker, elapsed time.Duration) Result {
	byOp, lat, outcomes, examples := merge(recorders(ws), workloadInfo[workload].counted)
	var ops int64
	for _, n := range outcomes {
		ops += n
	}
	r := Result{
		Engine: engine, Clients: len(ws), ElapsedS: elapsed.Seconds(), Ops: ops,
		Latency: lat, Outcomes: outcomes, Errors: errorCount(outcomes), ByOp: byOp, OverLimitAgents: -1,
	}
	if len(examples) > 0 {
		r.ErrorExamples = examples
	}
	if elapsed > 0 {
		r.OpsPerSec = float64(ops) / elapsed.Seconds()
	}
	return r
}

func (r *Result) setRetries(n int64) {
	r.Retries = n
	if r.Ops > 0 {
		r.RetriesPer1k = float64(n) * 1000 / float64(r.Ops)
	}
}

// startProgress redraws a one-line progress bar on out every 200ms until
// the returned function is called; out nil draws nothing. done reports
// completed steps.
func startProgress(out io.Writer, label string, cfg Config, start time.Time, done func() int64) (stop func()) {
	if out == nil {
		return func() {}
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				fmt.Fprint(out, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprint(out, "\r\033[K"+progressLine(label, cfg, time.Since(start), done()))
			}
		}
	})
	return func() { close(quit); wg.Wait() }
}

// progressLine renders "label [#####-----]  50%  2.5s/5s  1234 ops  493/s".
func progressLine(label string, cfg Config, elapsed time.Duration, done int64) string {
	var frac float64
	var total string
	if cfg.Ops > 0 {
		frac = float64(done) / float64(cfg.Ops)
		total = fmt.Sprintf("%d/%d ops", done, cfg.Ops)
	} else {
		frac = elapsed.Seconds() / cfg.Duration.Seconds()
		total = fmt.Sprintf("%.1fs/%s  %d ops", elapsed.Seconds(), cfg.Duration, done)
	}
	frac = max(0, min(1, frac))
	const width = 24
	filled := int(frac * width)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
	}
	if n := utf8.RuneCountInString(label); n < 28 {
		label += strings.Repeat(" ", 28-n) // %-28s would count bytes
	}
	return fmt.Sprintf("%s [%s%s] %3.0f%%  %s  %.0f/s", label,
		strings.Repeat("#", filled), strings.Repeat("-", width-filled), frac*100, total, rate)
}
