package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/agentsessions/agentsessions/internal/testdb"
)

// A whole run, small and bounded by operation count (no timing in tests):
// every workload on every variant and reference, the invariant checked
// after each, and the run's schema gone afterwards.
func TestRunEveryWorkloadAndEngine(t *testing.T) {
	d := testdb.NewEmpty(t)
	var logs bytes.Buffer
	cfg := Config{
		DatabaseURL: d.URL, Instances: 2, Workers: 2, Ops: 60, Agents: 40, HotAgents: 2, Sessions: 40, Limit: 3,
		Variants: VariantNames, Compare: true, RedisURL: redisURL(), DurableRedis: true, Progress: &bytes.Buffer{},
		Log: func(format string, args ...any) { fmt.Fprintf(&logs, format+"\n", args...) },
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v\nlog:\n%s", err, logs.String())
	}
	if !rep.Pgbench.Ran {
		t.Logf("pgbench skipped: %s", rep.Pgbench.Skipped)
	}
	wantEngines := []string{EngineOurs, EngineCTE, EngineCached, EngineIdle, EngineCachedIdle, EngineSingleFlight, EngineUnbatched}
	if rep.Pgbench.Ran {
		wantEngines = append(wantEngines, EnginePgbench, EnginePgbenchCTE)
	}
	if rep.Redis.Ran {
		wantEngines = append(wantEngines, EngineRedis)
	}
	if rep.RedisDurable.Ran {
		wantEngines = append(wantEngines, EngineRedisDurable)
	} else {
		t.Logf("durable Redis skipped: %s", rep.RedisDurable.Skipped)
	}
	if len(rep.Workloads) != len(Workloads) {
		t.Fatalf("%d workloads, want %d", len(rep.Workloads), len(Workloads))
	}
	for _, w := range rep.Workloads {
		var engines []string
		for _, r := range w.Results {
			engines = append(engines, r.Engine)
			if r.OverLimitAgents != 0 && r.Engine != EngineFloor {
				t.Errorf("%s/%s: %d agents over the limit", w.Name, r.Engine, r.OverLimitAgents)
			}
			if r.Ops < 60 || r.OpsPerSec <= 0 || r.Latency.N == 0 || r.Latency.P50 > r.Latency.P99 || r.Latency.P99 > r.Latency.Max {
				t.Errorf("%s/%s: ops %d, %.0f/s, latency %+v", w.Name, r.Engine, r.Ops, r.OpsPerSec, r.Latency)
			}
			// Our engines back off between retries; pgbench does not, so on
			// a hot agent it may give up (counted, not fatal).
			if !strings.HasPrefix(r.Engine, "pgbench") && r.Engine != EngineFloor && r.Errors != 0 {
				t.Errorf("%s/%s: errors %v %v", w.Name, r.Engine, r.Outcomes, r.ErrorExamples)
			}
			if rep.Pgbench.Ran && r.Ratio <= 0 {
				t.Errorf("%s/%s: no ratio", w.Name, r.Engine)
			}
		}
		want := wantEngines
		if w.Name == WorkloadIssue && rep.Floor.Ran { // the floor runs issue only, after the other pgbench runs
			i := slices.Index(want, EnginePgbenchCTE) + 1
			want = slices.Insert(slices.Clone(want), i, EngineFloor)
		}
		if strings.Join(engines, ",") != strings.Join(want, ",") {
			t.Errorf("%s: engines %v, want %v", w.Name, engines, want)
		}
		if w.Name == WorkloadMixed {
			// 10 % of picks are writes: over one engine's 60 ops none comes
			// up once in ~550 runs, so count over every engine with a
			// per-op breakdown (all of ours: ~0.9^240).
			var auth, writes int64
			for _, r := range w.Results {
				auth += r.ByOp[OpAuthenticate].Ops
				writes += r.ByOp[OpIssue].Ops + r.ByOp[OpRevoke].Ops
			}
			if auth == 0 || writes == 0 {
				t.Errorf("mixed ran %d authentications and %d writes over all engines", auth, writes)
			}
		}
		if c := w.Results[slices.Index(engines, EngineCached)].Cache; c == nil || w.Name == WorkloadAuthenticate && (c.Hits == 0 || c.Misses == 0) {
			t.Errorf("%s: cached engine's cache counts %+v: want hits (repeats) and misses (first looks)", w.Name, c)
		}
		for _, e := range []string{EngineIdle, EngineCachedIdle} {
			// Every authenticate records a use; each session used is
			// written once per batch, so never more rows than uses.
			r := w.Results[slices.Index(engines, e)]
			lu := r.LastUse
			if lu == nil || (w.Name == WorkloadAuthenticate || w.Name == WorkloadMixed) && (lu.Uses == 0 || lu.Flushes == 0 || lu.Uses > uint64(r.Ops)) {
				t.Errorf("%s/%s: last uses %+v, want between 1 and %d (the ops) written", w.Name, e, lu, r.Ops)
			}
		}
		if w.Results[0].LastUse != nil {
			t.Errorf("%s: the library without an idle timeout wrote last uses %+v", w.Name, w.Results[0].LastUse)
		}
		if w.Name == WorkloadIssueHot && w.Results[0].ByOp[OpRevoke].Ops == 0 {
			t.Errorf("issue-hot revoked nothing: %v", w.Results[0].ByOp)
		}
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", b.String())

	var n int
	if err := d.Pool(t).QueryRow(context.Background(), "SELECT count(*) FROM pg_namespace WHERE nspname = $1", rep.Settings.Schema).Scan(&n); err != nil || n != 0 {
		t.Fatalf("schema %s still there (%d, %v)", rep.Settings.Schema, n, err)
	}
}

// The floor engine inserts one row per operation it reports (and checks
// no limit), and --open-loop runs every engine again at the given share of
// its own closed-loop rate, latency from the schedule.
func TestRunFloorAndOpenLoop(t *testing.T) {
	d := testdb.NewEmpty(t)
	cfg := Config{
		DatabaseURL: d.URL, Instances: 2, Workers: 2, Ops: 80, Agents: 1000, Sessions: 50, Limit: 3,
		Workloads: []string{WorkloadIssue}, Compare: true, RedisURL: redisURL(), OpenLoop: []float64{50},
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Floor.Ran {
		t.Skipf("floor needs pgbench: %s", rep.Floor.Skipped)
	}
	w := rep.Workloads[0]
	byEngine := map[string]Result{}
	for _, r := range w.Results {
		byEngine[r.Engine] = r
	}
	fl, ok := byEngine[EngineFloor]
	if !ok {
		t.Fatalf("no floor result in %v", w.Results)
	}
	if fl.Ops < 80 || fl.Rows != int64(cfg.Sessions)+fl.Ops || fl.Errors != 0 || fl.OverLimitAgents != -1 {
		t.Errorf("floor: %d ops reported, %d rows at the end after %d prefilled, errors %d, over-limit %d; want one row per op and no limit check",
			fl.Ops, fl.Rows, cfg.Sessions, fl.Errors, fl.OverLimitAgents)
	}
	if ours := byEngine[EngineOurs]; ours.VsFloor <= 0 || ours.VsFloor != ours.OpsPerSec/fl.OpsPerSec {
		t.Errorf("ours vs floor %v, want %v", ours.VsFloor, ours.OpsPerSec/fl.OpsPerSec)
	}
	if len(w.OpenLoop) != len(w.Results) {
		t.Fatalf("%d open-loop results for %d engines", len(w.OpenLoop), len(w.Results))
	}
	for i, r := range w.OpenLoop {
		closed := w.Results[i]
		if r.Engine != closed.Engine || r.LoadFraction != 0.5 || math.Abs(r.TargetRate-closed.OpsPerSec/2) > 1e-6*closed.OpsPerSec || r.Ops < 80 || r.Latency.N == 0 {
			t.Errorf("open loop %s: load %v, rate %v (closed %v), ops %d", r.Engine, r.LoadFraction, r.TargetRate, closed.OpsPerSec, r.Ops)
		}
		if r.ClientCPUPerOpUS <= 0 {
			t.Errorf("%s: no client CPU time recorded", r.Engine)
		}
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil || !strings.Contains(b.String(), "Open loop") || !strings.Contains(b.String(), "x floor") {
		t.Errorf("table without the open-loop section or the floor ratio (%v):\n%s", err, b.String())
	}
}

// issue-prune stores expired sessions beside the live ones and runs one
// prune pass after another beside issue traffic: every expired row is gone at the end
// (the pruner's, or an issue's own cleanup of its agent), the pruner's
// rate is reported, and the references skip the workload.
func TestRunIssuePrune(t *testing.T) {
	d := testdb.NewEmpty(t)
	cfg := Config{
		DatabaseURL: d.URL, Instances: 1, Workers: 2, Ops: 30, Agents: 100, Sessions: 50, Expired: 3000, Limit: 40,
		Workloads: []string{WorkloadIssuePrune}, Compare: true, RedisURL: redisURL(),
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := rep.Workloads[0]
	if len(w.Results) != 1 || w.Results[0].Engine != EngineOurs {
		t.Fatalf("results %v: want ours only", w.Results)
	}
	r := w.Results[0]
	p := r.Prune
	if p == nil || p.Expired != 3000 || p.Left != 0 || p.Deleted <= 0 || p.Deleted > 3000 || p.Batches < 2 || p.Passes < 2 || p.RowsPerSec <= 0 {
		// (Batches counts the passes that completed: a pass that deadlocked
		// with an issue and was run again is not in it.)
		t.Fatalf("prune %+v: want all 3,000 expired rows gone, most by the pruner in batches of 1,000", p)
	}
	if r.OverLimitAgents != 0 || r.Errors != 0 || r.Rows < 50 || r.Rows > 50+r.Ops {
		t.Errorf("result %+v", r)
	}
	// 3,050 rows of ~200 bytes and three indexes: between 100 B and 2 kB each.
	if r.BytesPerSession < 100 || r.BytesPerSession > 2000 {
		t.Errorf("bytes per session %.0f", r.BytesPerSession)
	}
}

// An interrupted run returns what it has and still drops its schema.
func TestRunCanceled(t *testing.T) {
	d := testdb.NewEmpty(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep, err := Run(ctx, Config{DatabaseURL: d.URL, Instances: 1, Workers: 1, Ops: 10, Agents: 10, Sessions: 10})
	if err == nil {
		t.Fatalf("canceled run returned no error: %+v", rep)
	}
	if _, err := Run(context.Background(), Config{DatabaseURL: "postgres://postgres@127.0.0.1:1/x?connect_timeout=2"}); err == nil ||
		!strings.Contains(err.Error(), "cannot reach the database") {
		t.Fatalf("unreachable database: %v", err)
	}
}

// --prewarm loads the session tables into shared buffers before the clock
// starts, and says how many blocks it read.
func TestRunPrewarm(t *testing.T) {
	d := testdb.NewEmpty(t)
	var logs bytes.Buffer
	cfg := Config{
		DatabaseURL: d.URL, Instances: 1, Workers: 2, Ops: 20, Agents: 100, Sessions: 500, Limit: 10,
		Workloads: []string{WorkloadAuthenticate}, Prewarm: true, Progress: &bytes.Buffer{},
		Log: func(format string, args ...any) { fmt.Fprintf(&logs, format+"\n", args...) },
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v\nlog:\n%s", err, logs.String())
	}
	if !rep.Settings.Prewarm {
		t.Error("settings do not say prewarm")
	}
	var blocks int
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if _, err := fmt.Sscanf(line, "prewarmed %d blocks", &blocks); err == nil {
			break
		}
	}
	if blocks <= 0 {
		t.Errorf("no blocks prewarmed; log:\n%s", logs.String())
	}
}
