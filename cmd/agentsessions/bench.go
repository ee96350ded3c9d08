package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/cmd/internal/bench"
)

type benchOpts struct {
	cfg       bench.Config
	workloads string
	variants  string
	openLoop  string
	json      bool
	plot      string
	progress  string
	cpuprof   string
	from      string
	quiet     bool
}

func newBenchCmd(g *globalOpts) *cobra.Command {
	o := &benchOpts{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the PostgreSQL store under load (optionally against pgbench and a Redis peer)",
		Long: "bench simulates --instances instances (each its own pgx pool and Manager) with --workers workers each " +
			"against one database, runs each workload for --duration (or --ops operations) and prints a table: " +
			"ops/s, p50/p95/p99/max latency, errors by class, serialization retries per 1,000 operations and the " +
			"invariant check (agents holding more sessions than the limit: must be 0).\n\n" +
			"Workloads: issue (many agents, low contention), issue-hot (--hot-agents agents at their limit), " +
			"authenticate (pre-issued sessions, random picks), mixed (90% authenticate, 8% issue, 2% revoke).\n\n" +
			"Every run creates a schema of its own in the database (the role needs CREATE) and drops it at the end, " +
			"so it never touches the sessions there. --compare also runs pgbench (the statements the store sends, " +
			"recorded from it, at the same client count; our ops/s is printed as a ratio of pgbench's) and a Redis " +
			"peer (a Lua script per issue on one sorted set per agent), each skipped with a line saying why when " +
			"it cannot run. --variants measures other ways of running the library beside it in the same run: " +
			"cte puts the store on pools whose default isolation is SERIALIZABLE (its limit statement then goes " +
			"out without BEGIN and COMMIT); cached runs the library with its verified-session cache (RunCache) on every instance. " +
			"The exit status is 1 if any agent ended over its limit.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd, g) },
	}
	f := cmd.Flags()
	f.IntVar(&o.cfg.Instances, "instances", 4, "simulated instances: one pgx pool and Manager each")
	f.IntVar(&o.cfg.Workers, "workers", 8, "concurrent workers per instance (also each pool's size)")
	f.DurationVar(&o.cfg.Duration, "duration", 10*time.Second, "how long each workload runs per engine (whole seconds)")
	f.Int64Var(&o.cfg.Ops, "ops", 0, "operations per workload and engine instead of --duration")
	f.IntVar(&o.cfg.Rounds, "rounds", 1, "run each workload this many times per engine, engines taking turns, and report the median round")
	f.StringVar(&o.workloads, "workloads", strings.Join(bench.Workloads, ","), "comma-separated workloads to run, of "+strings.Join(bench.AllWorkloads, ", ")+
		" (issue-prune: issue while the pruner deletes --expired expired sessions; ours only)")
	f.IntVar(&o.cfg.Agents, "agents", 100000, "agents for issue, authenticate and mixed")
	f.IntVar(&o.cfg.HotAgents, "hot-agents", 4, "agents for issue-hot")
	f.IntVar(&o.cfg.Sessions, "sessions", 10000, "sessions stored before each workload but issue-hot (authenticate and mixed pick from them)")
	f.IntVar(&o.cfg.Expired, "expired", 100000, "expired sessions stored beside --sessions for issue-prune")
	f.IntVar(&o.cfg.Limit, "limit", 5, "sessions per agent")
	f.DurationVar(&o.cfg.TTL, "ttl", time.Hour, "session lifetime")
	f.DurationVar(&o.cfg.IdleTimeout, "idle-timeout", time.Minute, "the idle variants' idle timeout (--variants idle,cached-idle; whole seconds)")
	f.IntVar(&o.cfg.MaxAttempts, "max-attempts", 20, "tries per call on serialization failure (store and pgbench --max-tries)")
	f.BoolVar(&o.cfg.Prewarm, "prewarm", false, "load the session table and its indexes into shared buffers (pg_prewarm, PostgreSQL's contrib) before each of our runs, so a short run on a large table measures a warm cache")
	f.BoolVar(&o.cfg.Compare, "compare", false, "also run pgbench and the Redis peer")
	f.StringVar(&o.variants, "variants", bench.VariantLibrary, "comma-separated store variants: "+strings.Join(bench.VariantNames, ", ")+
		" (cte: the library on SERIALIZABLE pools; cached: the library with its verified-session cache on; "+
		"singleflight: a prototype letting one issue per agent per instance reach the database at a time; "+
		"unbatched: every issue in a transaction of its own, as before issue batching)")
	f.StringVar(&o.cfg.RedisURL, "redis-url", "redis://127.0.0.1:6379/0", "Redis for --compare")
	f.StringVar(&o.cfg.PgbenchPath, "pgbench", "pgbench", "pgbench executable for --compare")
	f.BoolVar(&o.cfg.DurableRedis, "durable-redis", true, "with --compare, also run the Redis peer on a redis-server the bench starts on a private port with appendonly yes and appendfsync always")
	f.StringVar(&o.cfg.RedisServerPath, "redis-server", "redis-server", "redis-server executable for --durable-redis")
	f.Float64Var(&o.cfg.Rate, "rate", 0, "open loop: arrivals per second over all clients on a fixed schedule, latency from each arrival's scheduled start (0: closed loop)")
	f.StringVar(&o.openLoop, "open-loop", "", "comma-separated loads in percent (e.g. 50,80): after each workload's closed-loop rounds, run every engine open loop at that share of its own measured throughput")
	f.BoolVar(&o.cfg.Keep, "keep", false, "keep the benchmark schema and Redis keys afterwards")
	f.BoolVar(&o.json, "json", false, "print the results as JSON instead of the table")
	f.StringVar(&o.plot, "plot", "", "also draw throughput and latency to this .png or .svg file")
	f.StringVar(&o.progress, "progress", "auto", "progress bar on stderr: auto (when it is a terminal), always or never")
	f.BoolVarP(&o.quiet, "quiet", "q", false, "no log lines on stderr")
	f.StringVar(&o.from, "from", "", "do not run: print (and --plot) the results a previous --json run saved in this file")
	f.StringVar(&o.cpuprof, "cpuprofile", "", "write a CPU profile of this process (the client side) to this file (go tool pprof)")
	return cmd
}

func (o *benchOpts) run(cmd *cobra.Command, g *globalOpts) error {
	cfg := o.cfg
	flags := cmd.Flags()
	if flags.Changed("ops") && !flags.Changed("duration") {
		cfg.Duration = 0
	}
	if o.from != "" {
		return o.render(cmd)
	}
	// The library reads 0 as "the default"; here 0 was typed, so refuse it.
	for name, v := range map[string]int{"--instances": cfg.Instances, "--workers": cfg.Workers, "--agents": cfg.Agents,
		"--hot-agents": cfg.HotAgents, "--sessions": cfg.Sessions, "--expired": cfg.Expired, "--limit": cfg.Limit, "--max-attempts": cfg.MaxAttempts,
		"--rounds": cfg.Rounds} {
		if v < 1 {
			return usageError{fmt.Errorf("%s must be >= 1, got %d", name, v)}
		}
	}
	if cfg.Ops < 0 || (flags.Changed("ops") && cfg.Ops == 0) {
		return usageError{fmt.Errorf("--ops must be >= 1, got %d", cfg.Ops)}
	}
	if o.plot != "" {
		if ext := strings.ToLower(o.plot[strings.LastIndexByte(o.plot, '.')+1:]); !strings.Contains(o.plot, ".") || (ext != "png" && ext != "svg") {
			return usageError{fmt.Errorf("--plot %q: want a file name ending in .png or .svg", o.plot)}
		}
	}
	if cfg.Workloads = splitList(o.workloads); len(cfg.Workloads) == 0 {
		return usageError{errors.New("--workloads is empty")}
	}
	if cfg.Variants = splitList(o.variants); len(cfg.Variants) == 0 {
		return usageError{errors.New("--variants is empty")}
	}
	for _, item := range splitList(o.openLoop) {
		pct, err := strconv.ParseFloat(strings.TrimSuffix(item, "%"), 64)
		if err != nil {
			return usageError{fmt.Errorf("--open-loop: %q is not a percentage", item)}
		}
		cfg.OpenLoop = append(cfg.OpenLoop, pct)
	}
	stderr := cmd.ErrOrStderr()
	switch o.progress {
	case "always":
		cfg.Progress = stderr
	case "auto":
		if isTerminal(stderr) {
			cfg.Progress = stderr
		}
	case "never":
	default:
		return usageError{fmt.Errorf("--progress must be auto, always or never, got %q", o.progress)}
	}
	if !o.quiet {
		cfg.Log = func(format string, args ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", args...) }
	}
	url, err := g.requireDatabaseURL()
	if err != nil {
		return err
	}
	cfg.DatabaseURL = url
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}

	if o.cpuprof != "" {
		f, err := os.Create(o.cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rep, runErr := bench.Run(cmd.Context(), cfg)
	if runErr != nil && len(rep.Workloads) == 0 {
		return runErr
	}
	out := cmd.OutOrStdout()
	if o.json {
		err = rep.WriteJSON(out)
	} else {
		err = rep.WriteTable(out)
	}
	if err != nil {
		return errors.Join(runErr, err)
	}
	if o.plot != "" {
		if err := bench.WritePlot(o.plot, rep); err != nil {
			return errors.Join(runErr, err)
		}
		if !o.quiet {
			fmt.Fprintf(stderr, "bench: plot written to %s\n", o.plot)
		}
	}
	if runErr != nil {
		return runErr
	}
	if v := rep.Violations(); v > 0 {
		return fmt.Errorf("invariant broken: %d agents ended over their limit", v)
	}
	return nil
}

// render prints the report saved in o.from, and plots it with --plot.
func (o *benchOpts) render(cmd *cobra.Command) error {
	b, err := os.ReadFile(o.from)
	if err != nil {
		return err
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("%s: not a bench --json report: %w", o.from, err)
	}
	if o.json {
		err = rep.WriteJSON(cmd.OutOrStdout())
	} else {
		err = rep.WriteTable(cmd.OutOrStdout())
	}
	if err == nil && o.plot != "" {
		err = bench.WritePlot(o.plot, rep)
	}
	return err
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
