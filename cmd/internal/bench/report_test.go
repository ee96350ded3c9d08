package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sampleReport() Report {
	lat := Latency{N: 100, Mean: 2 * time.Millisecond, P50: 1500 * time.Microsecond, P95: 12 * time.Millisecond,
		P99: 45600 * time.Microsecond, Max: 250 * time.Millisecond}
	r := Report{
		Started: time.Date(2026, 11, 24, 18, 30, 0, 0, time.UTC),
		Host:    Host{OS: "linux", Arch: "amd64", CPUs: 2, CPUModel: "AMD EPYC", GoVersion: "go1.26", Postgres: "15.20"},
		Settings: Settings{Instances: 4, Workers: 8, Clients: 32, Duration: "10s", Workloads: []string{WorkloadIssue},
			Agents: 10000, HotAgents: 4, Sessions: 10000, Limit: 5, Compare: true, Variants: []string{VariantLibrary}},
		Pgbench: Reference{Ran: true},
		Redis:   Reference{Skipped: "no Redis reachable at 127.0.0.1:6379"},
		Workloads: []Workload{{Name: WorkloadIssue, Results: []Result{
			{Engine: EngineOurs, OpsPerSec: 1234.4, Ratio: 0.9012, RatioTo: EnginePgbench, Latency: lat, Errors: 2,
				Outcomes: map[string]int64{ClassOK: 12000, ClassRetriesExhausted: 2}, RetriesPer1k: 0.25, OverLimitAgents: 0, ClientCPUPerOpUS: 41.6, VsFloor: 0.5,
				ErrorExamples: map[string]string{ClassRetriesExhausted: "sessions: store: insert: retries exhausted\nafter 20"},
				ByOp:          map[string]OpResult{OpIssue: {Ops: 12002, Latency: lat, Outcomes: map[string]int64{ClassOK: 12000, ClassRetriesExhausted: 2}}}},
			{Engine: EnginePgbench, OpsPerSec: 1369.8, Ratio: 1, RatioTo: EnginePgbench, Latency: lat,
				Outcomes: map[string]int64{ClassOK: 13700}, RetriesPer1k: 12.5, OverLimitAgents: 0},
		}, OpenLoop: []Result{
			{Engine: EngineOurs, TargetRate: 617.2, LoadFraction: 0.5, OpsPerSec: 615, Latency: Latency{N: 10, P50: time.Millisecond,
				P99: 8 * time.Millisecond, P999: 20 * time.Millisecond, Max: 31 * time.Millisecond}, ClientCPUPerOpUS: 55},
		}}},
	}
	return r
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"agentsessions bench · 2026-11-24 18:30 UTC · linux/amd64, 2 CPUs (AMD EPYC), go1.26 · PostgreSQL 15.20\n",
		"4 instances x 8 workers = 32 clients · 10s per workload and engine · limit 5 · 10000 agents, 4 hot, 10000 pre-issued sessions\n",
		"workload      engine                         ops/s vs pgbench      p50      p95      p99      max  errors  retries/1k over-limit   cpu us/op\n",
		"issue         agentsessions                  1,234      0.90x   1.50ms   12.0ms   45.6ms    250ms       2         0.2          0          42\n",
		"              pgbench                        1,370      1.00x   1.50ms   12.0ms   45.6ms    250ms       0        12.5          0           -\n",
		"  issue         agentsessions                 50%       617       615   1.00ms   8.00ms   20.0ms   31.0ms       0          55\n",
		"redis: skipped: no Redis reachable at 127.0.0.1:6379\n",
		"\nRatios of ops/s in this run (reference: pgbench running the engine's own statements):\n  issue         agentsessions              0.90x pgbench   0.50x floor\n\n",
		"  issue         agentsessions              ok 12000, retries_exhausted 2\n",
		"first retries_exhausted: sessions: store: insert: retries exhausted after 20\n", // newline flattened
		"  issue         agentsessions              issue             12002   1.50ms   12.0ms   45.6ms    250ms  ok 12000, retries_exhausted 2\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q\n%s", want, out)
		}
	}
	if strings.Contains(out, "INVARIANT BROKEN") || strings.Contains(out, "pgbench: skipped") {
		t.Errorf("unexpected lines:\n%s", out)
	}

	r := sampleReport()
	r.Workloads[0].Results[0].OverLimitAgents = 3
	r.Workloads[0].Results[1].OverLimitAgents = -1 // not checked: shown as "-", not counted
	b.Reset()
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if r.Violations() != 3 || !strings.Contains(b.String(), "\nINVARIANT BROKEN: 3 agents ended over the limit.\n") {
		t.Errorf("violations %d, table:\n%s", r.Violations(), b.String())
	}
}

func TestFmt(t *testing.T) {
	for _, c := range []struct {
		got, want string
	}{
		{fmtCount(0), "0"}, {fmtCount(999.6), "1,000"}, {fmtCount(1234567), "1,234,567"}, {fmtCount(-4321), "-4,321"},
		{fmtDur(0), "0ms"}, {fmtDur(41 * time.Microsecond), "0.04ms"}, {fmtDur(12340 * time.Microsecond), "12.3ms"},
		{fmtDur(1500 * time.Millisecond), "1500ms"},
		{compact(1234), "1.2k"}, {compact(2_000_000), "2M"}, {compact(0.5), "0.5"}, {compact(42), "42"}, {compact(0.001), "0.001"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	got := back.Workloads[0].Results[0]
	if got.OpsPerSec != 1234.4 || got.Ratio != 0.9012 || got.RatioTo != EnginePgbench || got.Latency.P99 != 45600*time.Microsecond ||
		got.Outcomes[ClassRetriesExhausted] != 2 || back.Redis.Skipped == "" {
		t.Errorf("round trip lost data: %+v", got)
	}
	for _, key := range []string{`"ops_per_sec": 1234.4`, `"p99_ms": 45.6`, `"over_limit_agents": 0`, `"retries_per_1k_ops": 0.25`} {
		if !strings.Contains(b.String(), key) {
			t.Errorf("JSON lacks %s", key)
		}
	}
}

func TestWritePlot(t *testing.T) {
	dir := t.TempDir()
	r := sampleReport()
	svg := filepath.Join(dir, "bench.svg")
	if err := WritePlot(svg, r); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "<svg ") || !strings.HasSuffix(string(b), "</svg>\n") || !strings.Contains(string(b), ">1.2k (0.90x)</text>") {
		t.Errorf("svg:\n%s", b)
	}
	pngPath := filepath.Join(dir, "bench.png")
	if err := WritePlot(pngPath, r); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if img.Bounds().Dx() != plotW || img.Bounds().Dy() != plotH {
		t.Errorf("png is %v", img.Bounds())
	}
	if err := WritePlot(filepath.Join(dir, "bench.jpg"), r); err == nil {
		t.Error("WritePlot accepted a .jpg")
	}
}

// recCanvas records the texts drawn.
type recCanvas struct{ texts []drawnText }

type drawnText struct {
	x, y, size float64
	s          string
	a          anchor
}

func (c *recCanvas) rect(x, y, w, h float64, fill color.RGBA) {}
func (c *recCanvas) text(x, y float64, s string, size float64, col color.RGBA, a anchor) {
	c.texts = append(c.texts, drawnText{x, y, size, s, a})
}

// With many engines per workload the bar labels still do not overlap,
// and a latency axis past a second reads "1s", not "1kms".
func TestPlotLabelsDoNotOverlap(t *testing.T) {
	all := []string{EngineOurs, EngineCached, EnginePgbench, EngineFloor, EngineRedis, EngineRedisDurable, EngineCTE}
	for _, n := range []int{3, 4, 7} { // 4 and fewer: labels carry the ratio
		t.Run(fmt.Sprint(n), func(t *testing.T) { checkPlotLabels(t, all[:n]) })
	}
}

func checkPlotLabels(t *testing.T, engines []string) {
	r := sampleReport()
	r.Workloads = nil
	for wi, name := range Workloads {
		w := Workload{Name: name}
		for ei, e := range engines {
			w.Results = append(w.Results, Result{Engine: e, OpsPerSec: 1234.5 * float64(1+ei+wi), Ratio: 1.2345,
				Latency: Latency{P50: time.Millisecond, P95: 100 * time.Millisecond, P99: time.Duration(1+ei) * 850 * time.Millisecond}})
		}
		r.Workloads = append(r.Workloads, w)
	}
	c := &recCanvas{}
	drawReport(c, r)
	var labels []drawnText
	for _, tx := range c.texts {
		if strings.Contains(tx.s, "kms") {
			t.Errorf("tick %q", tx.s)
		}
		if tx.size == plotLabelSize {
			labels = append(labels, tx)
		}
	}
	if len(labels) != 2*len(Workloads)*len(engines) {
		t.Fatalf("%d bar labels, want %d", len(labels), 2*len(Workloads)*len(engines))
	}
	box := func(tx drawnText) (x0, x1, y0, y1 float64) {
		w := labelWidth(tx.s, tx.size)
		return tx.x - w/2, tx.x + w/2, tx.y - tx.size, tx.y
	}
	for i := range labels {
		for j := i + 1; j < len(labels); j++ {
			ax0, ax1, ay0, ay1 := box(labels[i])
			bx0, bx1, by0, by1 := box(labels[j])
			if ax0 < bx1 && bx0 < ax1 && ay0 < by1 && by0 < ay1 {
				t.Errorf("labels %q at (%.0f,%.0f) and %q at (%.0f,%.0f) overlap", labels[i].s, labels[i].x, labels[i].y, labels[j].s, labels[j].x, labels[j].y)
			}
		}
	}
	found := false
	for _, tx := range c.texts {
		found = found || tx.s == "1s" || tx.s == "10s"
	}
	if !found {
		t.Error("no seconds tick on the latency axis")
	}
}
