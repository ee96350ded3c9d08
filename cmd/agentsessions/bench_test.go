package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/cmd/internal/bench"
	"github.com/agentsessions/agentsessions/internal/testdb"
)

// benchCLI runs the bench command on its own (main.go registers it under
// the root command; calling the constructor keeps this test independent
// of that) and returns its exit status and output, as run does.
func benchCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	g := &globalOpts{}
	cmd := newBenchCmd(g)
	cmd.PersistentFlags().StringVar(&g.databaseURL, "database-url", "", "")
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	err := cmd.ExecuteContext(context.Background())
	code := exitOK
	if err != nil {
		errOut.WriteString("agentsessions: " + err.Error() + "\n")
		code = exitError
		if _, ok := err.(usageError); ok {
			code = exitUsage
		}
	}
	return code, out.String(), errOut.String()
}

func TestBenchTableJSONAndPlot(t *testing.T) {
	d := testdb.NewEmpty(t)
	small := []string{"--database-url", d.URL, "--instances", "2", "--workers", "2", "--ops", "40",
		"--agents", "30", "--sessions", "30", "--hot-agents", "2", "--limit", "3", "--progress", "never"}

	prof := filepath.Join(t.TempDir(), "cpu.prof")
	code, out, errOut := benchCLI(t, append(small, "--workloads", "issue,authenticate", "--cpuprofile", prof)...)
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if st, err := os.Stat(prof); err != nil || st.Size() == 0 {
		t.Errorf("--cpuprofile: %v", err)
	}
	for _, want := range []string{"2 instances x 2 workers = 4 clients · 40 ops per workload and engine",
		"\nissue         agentsessions ", "\nauthenticate  agentsessions ", "over-limit"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "issue-hot") || !strings.Contains(errOut, "bench: schema agentsessions_bench_") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, errOut)
	}

	plot := filepath.Join(t.TempDir(), "bench.svg")
	code, out, errOut = benchCLI(t, append(small, "--workloads", "mixed", "--rounds", "2", "--json", "--quiet", "--plot", plot)...)
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if len(rep.Workloads) != 1 || rep.Workloads[0].Name != "mixed" || rep.Workloads[0].Results[0].OverLimitAgents != 0 ||
		rep.Settings.Clients != 4 || rep.Pgbench.Ran || len(rep.Workloads[0].Results[0].RoundsOpsPerSec) != 2 {
		t.Errorf("report %+v", rep)
	}
	if errOut != "" {
		t.Errorf("--quiet still logged: %q", errOut)
	}
	if b, err := os.ReadFile(plot); err != nil || !bytes.HasPrefix(b, []byte("<svg")) {
		t.Errorf("plot: %v %.40q", err, b)
	}

	// --from renders a saved report without a database.
	saved := filepath.Join(t.TempDir(), "bench.json")
	if err := os.WriteFile(saved, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = benchCLI(t, "--from", saved, "--plot", filepath.Join(t.TempDir(), "again.png"))
	if code != exitOK || out != table.String() {
		t.Fatalf("--from: exit %d, stderr %q\n got:\n%s\nwant:\n%s", code, errOut, out, table.String())
	}
	if code, _, errOut = benchCLI(t, "--from", plot); code != exitError || !strings.Contains(errOut, "not a bench --json report") {
		t.Errorf("--from an SVG: exit %d, %q", code, errOut)
	}
}

func TestBenchCompareSkipsRedisWithAClearLine(t *testing.T) {
	d := testdb.NewEmpty(t)
	code, out, errOut := benchCLI(t, "--database-url", d.URL, "--instances", "1", "--workers", "2", "--ops", "20",
		"--agents", "20", "--sessions", "20", "--workloads", "authenticate", "--compare", "--redis-url", "redis://127.0.0.1:1/0",
		"--pgbench", "/nonexistent/pgbench", "--progress", "never")
	if code != exitOK {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"\npgbench: skipped: /nonexistent/pgbench not found on PATH",
		"\nredis: skipped: no Redis reachable at 127.0.0.1:1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchUsageErrors(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "pass --database-url or set DATABASE_URL"},
		{[]string{"--database-url", "postgres://x", "--workloads", "issue,sideways"}, `unknown workload "sideways"`},
		{[]string{"--database-url", "postgres://x", "--variants", "magic"}, `unknown variant "magic"`},
		{[]string{"--database-url", "postgres://x", "--workloads", ","}, "--workloads is empty"},
		{[]string{"--database-url", "postgres://x", "--plot", "out.gif"}, "want a file name ending in .png or .svg"},
		{[]string{"--database-url", "postgres://x", "--progress", "sometimes"}, "--progress must be auto, always or never"},
		{[]string{"--database-url", "postgres://x", "--instances", "0"}, "--instances must be >= 1, got 0"},
		{[]string{"--database-url", "postgres://x", "--ops", "0"}, "--ops must be >= 1"},
		{[]string{"--database-url", "postgres://x", "--open-loop", "50,lots"}, `--open-loop: "lots" is not a percentage`},
		{[]string{"--database-url", "postgres://x", "--open-loop", "0"}, "open-loop loads are percentages"},
		{[]string{"--database-url", "postgres://x", "--open-loop", "50", "--rate", "100"}, "--rate and --open-loop exclude each other"},
		{[]string{"--database-url", "postgres://x", "--rate", "-1"}, "rate must not be negative"},
		{[]string{"--database-url", "postgres://x", "--workloads", "issue-prune", "--agents", "10", "--sessions", "10", "--expired", "100"},
			"--sessions 10 and --expired 100 do not fit"},
		{[]string{"--nope"}, "unknown flag"},
	} {
		code, _, errOut := benchCLI(t, c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, code, errOut, exitUsage, c.want)
		}
	}
}
