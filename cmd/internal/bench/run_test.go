package bench

import (
	"bytes"
	"context"
	"fmt"
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
		Variants: VariantNames, Compare: true, RedisURL: redisURL(), Progress: &bytes.Buffer{},
		Log: func(format string, args ...any) { fmt.Fprintf(&logs, format+"\n", args...) },
	}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v\nlog:\n%s", err, logs.String())
	}
	if !rep.Pgbench.Ran {
		t.Logf("pgbench skipped: %s", rep.Pgbench.Skipped)
	}
	wantEngines := []string{EngineOurs, EngineCTE, EngineCached, EngineIdle, EngineCachedIdle}
	if rep.Pgbench.Ran {
		wantEngines = append(wantEngines, EnginePgbench, EnginePgbenchCTE)
	}
	if rep.Redis.Ran {
		wantEngines = append(wantEngines, EngineRedis)
	}
	if len(rep.Workloads) != len(Workloads) {
		t.Fatalf("%d workloads, want %d", len(rep.Workloads), len(Workloads))
	}
	for _, w := range rep.Workloads {
		var engines []string
		for _, r := range w.Results {
			engines = append(engines, r.Engine)
			if r.OverLimitAgents != 0 {
				t.Errorf("%s/%s: %d agents over the limit", w.Name, r.Engine, r.OverLimitAgents)
			}
			if r.Ops < 60 || r.OpsPerSec <= 0 || r.Latency.N == 0 || r.Latency.P50 > r.Latency.P99 || r.Latency.P99 > r.Latency.Max {
				t.Errorf("%s/%s: ops %d, %.0f/s, latency %+v", w.Name, r.Engine, r.Ops, r.OpsPerSec, r.Latency)
			}
			// Our engines back off between retries; pgbench does not, so on
			// a hot agent it may give up (counted, not fatal).
			if !strings.HasPrefix(r.Engine, "pgbench") && r.Errors != 0 {
				t.Errorf("%s/%s: errors %v %v", w.Name, r.Engine, r.Outcomes, r.ErrorExamples)
			}
			if rep.Pgbench.Ran && r.Ratio <= 0 {
				t.Errorf("%s/%s: no ratio", w.Name, r.Engine)
			}
		}
		if strings.Join(engines, ",") != strings.Join(wantEngines, ",") {
			t.Errorf("%s: engines %v, want %v", w.Name, engines, wantEngines)
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
