package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// fmtDur prints a latency in milliseconds with three significant digits
// or so, so that columns compare at a glance.
func fmtDur(d time.Duration) string {
	v := ms(d)
	switch {
	case v == 0:
		return "0ms"
	case v < 10:
		return fmt.Sprintf("%.2fms", v)
	case v < 100:
		return fmt.Sprintf("%.1fms", v)
	default:
		return fmt.Sprintf("%.0fms", v)
	}
}

// fmtCount prints n with thousands separators.
func fmtCount(n float64) string {
	s := fmt.Sprintf("%.0f", n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// Header describes the run in two lines: when, where, and with what.
func (r Report) Header() string {
	h := r.Host
	cpu := fmt.Sprintf("%d CPUs", h.CPUs)
	if h.CPUModel != "" {
		cpu += " (" + h.CPUModel + ")"
	}
	servers := "PostgreSQL " + h.Postgres
	if h.Pgbench != "" {
		servers += ", " + h.Pgbench
	}
	if h.Redis != "" {
		servers += ", " + h.Redis
	}
	s := r.Settings
	length := s.Duration + " per workload and engine"
	if s.Ops > 0 {
		length = fmt.Sprintf("%d ops per workload and engine", s.Ops)
	}
	if s.Rounds > 1 {
		length += fmt.Sprintf(", %d rounds taking turns (median shown)", s.Rounds)
	}
	return fmt.Sprintf("agentsessions bench · %s · %s/%s, %s, %s · %s\n"+
		"%d instances x %d workers = %d clients · %s · limit %d · %d agents, %d hot, %d pre-issued sessions\n",
		r.Started.Format("2006-01-02 15:04 UTC"), h.OS, h.Arch, cpu, h.GoVersion, servers,
		s.Instances, s.Workers, s.Clients, length, s.Limit, s.Agents, s.HotAgents, s.Sessions)
}

// WriteTable writes the human-readable report: the header, one row per
// workload and engine, the outcomes, and a per-operation breakdown.
func (r Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	b.WriteString(r.Header())
	b.WriteString("\n")
	fmt.Fprintf(&b, "%-13s %-26s %9s %10s %8s %8s %8s %8s %7s %11s %10s %11s\n",
		"workload", "engine", "ops/s", "vs pgbench", "p50", "p95", "p99", "max", "errors", "retries/1k", "over-limit", "cpu us/op")
	for _, wl := range r.Workloads {
		for i, res := range wl.Results {
			name := wl.Name
			if i > 0 {
				name = ""
			}
			ratio := "-"
			if res.Ratio > 0 {
				ratio = fmt.Sprintf("%.2fx", res.Ratio)
			}
			over := "-"
			if res.OverLimitAgents >= 0 {
				over = fmt.Sprint(res.OverLimitAgents)
			}
			fmt.Fprintf(&b, "%-13s %-26s %9s %10s %8s %8s %8s %8s %7d %11.1f %10s %11s\n",
				name, res.Engine, fmtCount(res.OpsPerSec), ratio, fmtDur(res.Latency.P50), fmtDur(res.Latency.P95),
				fmtDur(res.Latency.P99), fmtDur(res.Latency.Max), res.Errors, res.RetriesPer1k, over, fmtCPU(res))
		}
	}
	for _, line := range r.skippedLines() {
		b.WriteString(line + "\n")
	}

	if lines := r.ratioLines(); len(lines) > 0 {
		b.WriteString("\nRatios of ops/s in this run (reference: pgbench running the engine's own statements):\n")
		for _, line := range lines {
			b.WriteString(line + "\n")
		}
	}

	if lines := r.openLoopLines(); len(lines) > 0 {
		b.WriteString("\nOpen loop (arrivals on a fixed schedule at a share of each engine's closed-loop ops/s; latency from the scheduled start):\n")
		fmt.Fprintf(&b, "  %-13s %-26s %6s %9s %9s %8s %8s %8s %8s %7s %11s\n",
			"workload", "engine", "load", "target/s", "ops/s", "p50", "p99", "p99.9", "max", "errors", "cpu us/op")
		for _, line := range lines {
			b.WriteString(line + "\n")
		}
	}

	if lines := r.storageLines(); len(lines) > 0 {
		b.WriteString("\n" + strings.Join(lines, "\n") + "\n")
	}

	b.WriteString("\nOutcomes of the counted operations:\n")
	for _, wl := range r.Workloads {
		for _, res := range wl.Results {
			fmt.Fprintf(&b, "  %-13s %-26s %s\n", wl.Name, res.Engine, fmtOutcomes(res.Outcomes))
			for _, class := range sortedKeys(res.ErrorExamples) {
				fmt.Fprintf(&b, "  %-13s %-26s   first %s: %s\n", "", "", class, truncate(res.ErrorExamples[class], 160))
			}
		}
	}

	b.WriteString("\nBy operation:\n")
	fmt.Fprintf(&b, "  %-13s %-26s %-13s %9s %8s %8s %8s %8s  %s\n", "workload", "engine", "operation", "ops", "p50", "p95", "p99", "max", "outcomes")
	for _, wl := range r.Workloads {
		for _, res := range wl.Results {
			for _, op := range sortedKeys(res.ByOp) {
				o := res.ByOp[op]
				fmt.Fprintf(&b, "  %-13s %-26s %-13s %9d %8s %8s %8s %8s  %s\n", wl.Name, res.Engine, op, o.Ops,
					fmtDur(o.Latency.P50), fmtDur(o.Latency.P95), fmtDur(o.Latency.P99), fmtDur(o.Latency.Max), fmtOutcomes(o.Outcomes))
			}
		}
	}
	b.WriteString("\nops/s: counted operations per second of wall time (pgbench: its tps without connection time).\n" +
		"Latency: nearest-rank percentiles over every operation's wall time as the client saw it (retries included), from a log-bucketed histogram (within 0.8 %); open-loop rows count from each arrival's scheduled start.\n" +
		"errors: outcomes other than ok and limit_exceeded. over-limit: agents holding more sessions than the limit at the end (must be 0).\n" +
		"cpu us/op: CPU time (user + system, getrusage) of the client side per counted operation: this process for our engines and Redis, the pgbench process for pgbench and floor.\n" +
		"floor: pgbench inserting one session row per durable commit, no limit check. redis-durable: Redis with appendonly yes, appendfsync always.\n")
	if v := r.Violations(); v > 0 {
		fmt.Fprintf(&b, "\nINVARIANT BROKEN: %d agents ended over the limit.\n", v)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ratioLines compares each of our engines with its pgbench reference, with
// the library (for the other variants) and with Redis, per workload.
func (r Report) ratioLines() []string {
	var out []string
	for _, wl := range r.Workloads {
		byEngine := map[string]float64{}
		for _, res := range wl.Results {
			byEngine[res.Engine] = res.OpsPerSec
		}
		for _, res := range wl.Results {
			if !strings.HasPrefix(res.Engine, EngineOurs) || res.OpsPerSec <= 0 {
				continue
			}
			var parts []string
			if res.Ratio > 0 {
				parts = append(parts, fmt.Sprintf("%.2fx %s", res.Ratio, res.RatioTo))
			}
			if v := byEngine[EngineOurs]; res.Engine != EngineOurs && v > 0 {
				parts = append(parts, fmt.Sprintf("%.2fx %s", res.OpsPerSec/v, EngineOurs))
			}
			if res.VsFloor > 0 {
				parts = append(parts, fmt.Sprintf("%.2fx %s", res.VsFloor, EngineFloor))
			}
			for _, peer := range []string{EngineRedis, EngineRedisDurable} {
				if v := byEngine[peer]; v > 0 {
					parts = append(parts, fmt.Sprintf("%.2fx %s", res.OpsPerSec/v, peer))
				}
			}
			if v := byEngine[EngineCached]; res.Engine == EngineCachedIdle && v > 0 {
				parts = append(parts, fmt.Sprintf("%.2fx %s", res.OpsPerSec/v, EngineCached))
			}
			if lu := res.LastUse; lu != nil {
				parts = append(parts, fmt.Sprintf("last uses written %.0f/s in %d batches", lu.UsesPerSec, lu.Flushes))
			}
			if res.Cache != nil && res.Cache.Hits+res.Cache.Misses > 0 {
				parts = append(parts, fmt.Sprintf("cache hits %.1f%%", 100*float64(res.Cache.Hits)/float64(res.Cache.Hits+res.Cache.Misses)))
			}
			if len(parts) > 0 {
				out = append(out, fmt.Sprintf("  %-13s %-26s %s", wl.Name, res.Engine, strings.Join(parts, "   ")))
			}
		}
	}
	return out
}

// openLoopLines is one line per open-loop run.
func (r Report) openLoopLines() []string {
	var out []string
	for _, wl := range r.Workloads {
		for _, res := range wl.OpenLoop {
			out = append(out, fmt.Sprintf("  %-13s %-26s %5.0f%% %9s %9s %8s %8s %8s %8s %7d %11s", wl.Name, res.Engine,
				100*res.LoadFraction, fmtCount(res.TargetRate), fmtCount(res.OpsPerSec), fmtDur(res.Latency.P50),
				fmtDur(res.Latency.P99), fmtDur(res.Latency.P999), fmtDur(res.Latency.Max), res.Errors, fmtCPU(res)))
		}
	}
	return out
}

// storageLines says how much disk a stored session takes (from the first
// result that measured it) and what each prune pass did.
func (r Report) storageLines() []string {
	var out []string
	for _, wl := range r.Workloads {
		for _, res := range wl.Results {
			// issue-hot stores a handful of sessions: no per-session figure.
			if res.BytesPerSession > 0 && len(out) == 0 && wl.Name != WorkloadIssueHot {
				out = append(out, fmt.Sprintf("Stored: %.0f bytes per session (table + indexes, pg_total_relation_size over rows) after the prefill of %s",
					res.BytesPerSession, wl.Name))
			}
		}
	}
	for _, wl := range r.Workloads {
		for _, res := range wl.Results {
			if p := res.Prune; p != nil {
				out = append(out, fmt.Sprintf("Prune beside %s (%s): %s of %s expired rows deleted in %d batches (%d passes, %d failed on deadlock) in %.1fs = %s rows/s, %d expired left; issue p99 %s",
					wl.Name, res.Engine, fmtCount(float64(p.Deleted)), fmtCount(float64(p.Expired)), p.Batches, p.Passes, p.FailedPasses, p.Seconds,
					fmtCount(p.RowsPerSec), p.Left, fmtDur(res.Latency.P99)))
			}
		}
	}
	return out
}

// fmtCPU prints the client's CPU time per operation, "-" when unknown.
func fmtCPU(res Result) string {
	if res.ClientCPUPerOpUS <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", res.ClientCPUPerOpUS)
}

func (r Report) skippedLines() []string {
	var out []string
	if r.Settings.Compare {
		if r.Pgbench.Skipped != "" {
			out = append(out, "pgbench: skipped: "+r.Pgbench.Skipped)
		}
		for _, name := range sortedKeys(r.PgbenchPrototypes) {
			if ref := r.PgbenchPrototypes[name]; ref.Skipped != "" {
				out = append(out, name+": skipped: "+ref.Skipped)
			}
		}
		if r.Redis.Skipped != "" {
			out = append(out, "redis: skipped: "+r.Redis.Skipped)
		}
		if r.RedisDurable.Skipped != "" {
			out = append(out, EngineRedisDurable+": skipped: "+r.RedisDurable.Skipped)
		}
		if r.Floor.Skipped != "" {
			out = append(out, EngineFloor+": skipped: "+r.Floor.Skipped)
		}
	}
	return out
}

func fmtOutcomes(m map[string]int64) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
