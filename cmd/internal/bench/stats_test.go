package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

func ms100(vals ...int) []time.Duration {
	out := make([]time.Duration, len(vals))
	for i, v := range vals {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestPercentileNearestRank(t *testing.T) {
	// 1..100 ms: the p-th percentile is exactly p ms.
	var s []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose: Summarize sorts
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	l := Summarize(s)
	want := Latency{N: 100, Mean: 50500 * time.Microsecond, P50: 50 * time.Millisecond, P95: 95 * time.Millisecond,
		P99: 99 * time.Millisecond, P999: 100 * time.Millisecond, Max: 100 * time.Millisecond}
	if l != want {
		t.Fatalf("Summarize(1..100ms) = %+v, want %+v", l, want)
	}

	for _, c := range []struct {
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{nil, 50, 0},
		{ms100(7), 1, 7 * time.Millisecond},
		{ms100(7), 100, 7 * time.Millisecond},
		// Nearest rank: ceil(0.5*4) = 2nd sample, no interpolation.
		{ms100(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ms100(1, 2, 3, 4), 51, 3 * time.Millisecond},
		{ms100(1, 2, 3, 4), 99, 4 * time.Millisecond},
		// A single slow outlier in 1000 shows at p99.9 but not p99.
		{append(ms100(make([]int, 999)...), time.Second), 99, 0},
	} {
		if got := Percentile(c.sorted, c.p); got != c.want {
			t.Errorf("Percentile(%v, %v) = %v, want %v", c.sorted, c.p, got, c.want)
		}
	}
	if got := Summarize(nil); got != (Latency{}) {
		t.Errorf("Summarize(nil) = %+v", got)
	}
}

func TestLatencyJSONRoundTrip(t *testing.T) {
	l := Summarize(ms100(1, 2, 3, 250))
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"samples":4,"mean_ms":64,"p50_ms":2,"p95_ms":250,"p99_ms":250,"p99_9_ms":250,"max_ms":250}`
	if string(b) != want {
		t.Fatalf("json %s, want %s", b, want)
	}
	var back Latency
	if err := json.Unmarshal(b, &back); err != nil || back != l {
		t.Fatalf("round trip %+v (%v), want %+v", back, err, l)
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ClassOK},
		{fmt.Errorf("issue: %w", &sessions.LimitError{AgentID: "a", Limit: 5}), ClassLimit},
		{&sessions.StoreError{Op: "insert", Err: fmt.Errorf("%w after 20 attempts", pgxstore.ErrRetriesExhausted)}, ClassRetriesExhausted},
		{&sessions.StoreError{Op: "get", Err: context.DeadlineExceeded}, ClassTimeout},
		{&sessions.StoreError{Op: "get", Err: errors.New("connection refused")}, ClassStore},
		{context.Canceled, ClassCanceled},
		{sessions.ErrSessionExpired, ClassExpired},
		{errors.New("something else"), ClassOther},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %q, want %q", c.err, got, c.want)
		}
	}
	if IsError(ClassOK) || IsError(ClassLimit) || !IsError(ClassRetriesExhausted) || !IsError(ClassFailed) {
		t.Error("IsError: ok and limit_exceeded are expected outcomes, everything else an error")
	}
}

func TestMergeRecorders(t *testing.T) {
	a, b := newRecorder(), newRecorder()
	a.record(OpIssue, ClassOK, 1*time.Millisecond, nil)
	a.record(OpIssue, ClassLimit, 2*time.Millisecond, &sessions.LimitError{AgentID: "a", Limit: 1})
	b.record(OpIssue, ClassStore, 3*time.Millisecond, errors.New("first store error"))
	b.record(OpIssue, ClassStore, 4*time.Millisecond, errors.New("second store error"))
	b.record(OpRevoke, ClassOK, 100*time.Millisecond, nil)

	byOp, lat, outcomes, examples := merge([]*recorder{a, b}, []string{OpIssue})
	if lat.N != 4 || lat.Max != 4*time.Millisecond {
		t.Errorf("counted latency %+v: want the 4 issues only", lat)
	}
	if want := map[string]int64{ClassOK: 1, ClassLimit: 1, ClassStore: 2}; fmt.Sprint(outcomes) != fmt.Sprint(want) {
		t.Errorf("outcomes %v, want %v", outcomes, want)
	}
	if errorCount(outcomes) != 2 {
		t.Errorf("errorCount = %d, want 2 (limit_exceeded is not an error)", errorCount(outcomes))
	}
	if examples[ClassStore] != "first store error" || len(examples) != 1 {
		t.Errorf("examples %v: want the first store error only", examples)
	}
	if r := byOp[OpRevoke]; r.Ops != 1 || r.Latency.P50 != 100*time.Millisecond {
		t.Errorf("revoke %+v", r)
	}
}

func TestResultRatesAndRatios(t *testing.T) {
	w := &worker{rec: newRecorder()}
	for range 30 {
		w.rec.record(OpIssue, ClassOK, time.Millisecond, nil)
	}
	r := result(EngineOurs, WorkloadIssue, []*worker{w}, 2*time.Second)
	r.setRetries(3)
	if r.Ops != 30 || r.OpsPerSec != 15 || r.RetriesPer1k != 100 || r.OverLimitAgents != -1 {
		t.Fatalf("result %+v", r)
	}
	results := []Result{
		{Engine: EngineOurs, OpsPerSec: 900},
		{Engine: EngineCTE, OpsPerSec: 1200},
		{Engine: EnginePgbench, OpsPerSec: 1000},
		{Engine: EnginePgbenchCTE, OpsPerSec: 1500},
		{Engine: "agentsessions-unreferenced", OpsPerSec: 10}, // no reference engine
		{Engine: EngineRedis, OpsPerSec: 5000},
	}
	setRatios(results)
	for i, want := range []struct {
		ratio float64
		to    string
	}{{0.9, EnginePgbench}, {0.8, EnginePgbenchCTE}, {1, EnginePgbench}, {1, EnginePgbenchCTE}, {0, ""}, {5, EnginePgbench}} {
		if results[i].Ratio != want.ratio || results[i].RatioTo != want.to {
			t.Errorf("%s: ratio %v to %q, want %v to %q", results[i].Engine, results[i].Ratio, results[i].RatioTo, want.ratio, want.to)
		}
	}
}

func TestProgressLine(t *testing.T) {
	got := progressLine("issue · agentsessions", Config{Duration: 10 * time.Second}, 5*time.Second, 2500)
	want := "issue · agentsessions        [############------------]  50%  5.0s/10s  2500 ops  500/s"
	if got != want {
		t.Errorf("duration bar:\n got %q\nwant %q", got, want)
	}
	got = progressLine("mixed · redis", Config{Ops: 1000}, 2*time.Second, 1500)
	want = "mixed · redis                [########################] 100%  1500/1000 ops  750/s"
	if got != want {
		t.Errorf("ops bar (overshoot clamps at 100%%):\n got %q\nwant %q", got, want)
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{DatabaseURL: "postgres://x"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	c, _ := ok.withDefaults()
	if c.Instances != 4 || c.Workers != 8 || c.Duration != 10*time.Second || c.Sessions != 10000 || len(c.Workloads) != 4 ||
		len(c.Variants) != 1 || c.Variants[0] != VariantLibrary {
		t.Errorf("defaults %+v", c)
	}
	for _, c := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.DatabaseURL = "" }, "no database URL"},
		{func(c *Config) { c.Workloads = []string{"issue", "sideways"} }, `unknown workload "sideways"`},
		{func(c *Config) { c.Variants = []string{"magic"} }, `unknown variant "magic"`},
		{func(c *Config) { c.Instances, c.Workers = 32, 32 }, "at most 512"},
		{func(c *Config) { c.Duration = 500 * time.Millisecond }, "at least 1s"},
		{func(c *Config) { c.Limit = 1 }, "issue-hot needs --limit >= 2"},
		{func(c *Config) { c.Agents, c.Sessions = 10, 100 }, "do not fit"},
	} {
		cfg := ok
		c.mod(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate() = %v, want %q", err, c.want)
		}
	}
}

func TestMedianRound(t *testing.T) {
	rs := []Result{
		{OpsPerSec: 300, OverLimitAgents: 0, Errors: 3},
		{OpsPerSec: 100, OverLimitAgents: 2},
		{OpsPerSec: 200, OverLimitAgents: 0, Errors: 7},
	}
	m := medianRound(rs)
	if m.OpsPerSec != 200 || m.Errors != 7 || m.OverLimitAgents != 2 || fmt.Sprint(m.RoundsOpsPerSec) != "[300 100 200]" {
		t.Errorf("median of 3: %+v", m)
	}
	if m := medianRound(rs[:2]); m.OpsPerSec != 100 {
		t.Errorf("median of 2 is the lower middle: %+v", m)
	}
	if m := medianRound(rs[:1]); m.RoundsOpsPerSec != nil || m.OpsPerSec != 300 {
		t.Errorf("one round: %+v", m)
	}
}
