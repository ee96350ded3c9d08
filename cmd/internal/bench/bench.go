// Package bench measures an agentsessions PostgreSQL store under load, the
// way a deployment runs it: several instances (each its own pgx pool and
// Manager) with several workers each, against one database.
//
// Workloads (see [Workloads]):
//
//   - issue: Issue for random agents out of many (low contention);
//   - issue-hot: Issue for a handful of agents held one below their limit;
//     every successful issue is followed by a revoke of that session, so
//     the next issuers race for the one free slot again;
//   - authenticate: Authenticate pre-issued sessions picked at random;
//   - mixed: 90 % authenticate, 8 % issue, 2 % revoke.
//
// Each workload runs on an emptied table in a schema of its own (created
// per run, dropped afterwards) and ends with an invariant check in SQL: no
// agent may hold more rows than the limit.
//
// With Config.Compare, every workload also runs on two references: pgbench
// replaying the SQL the store sends (recorded from the store itself, see
// [ScriptSet]) with the same client count, and a Redis peer built the way
// users build a session limit there (a Lua script per issue on one sorted
// set per agent). Our throughput is reported as a ratio of pgbench's.
package bench

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/migrations"
)

// Workload names.
const (
	WorkloadIssue        = "issue"
	WorkloadIssueHot     = "issue-hot"
	WorkloadAuthenticate = "authenticate"
	WorkloadMixed        = "mixed"
	// WorkloadIssuePrune is issue while the pruner deletes Config.Expired
	// expired sessions (our engines only; not in the default set).
	WorkloadIssuePrune = "issue-prune"
)

// Engines, as they appear in reports.
const (
	EngineOurs   = "agentsessions"        // the library
	EngineCTE    = "agentsessions-cte"    // the library on pools that default to SERIALIZABLE (no BEGIN/COMMIT around its statement)
	EngineCached = "agentsessions-cached" // the library with its verified-session cache (RunCache) on
	// EngineIdle and EngineCachedIdle are the library and the cached
	// variant with an idle timeout (Config.IdleTimeout).
	EngineIdle       = "agentsessions-idle"
	EngineCachedIdle = "agentsessions-cached-idle"
	// EngineSingleFlight is the library with one Insert per agent in
	// flight per instance (a prototype; see gate.go).
	EngineSingleFlight = "agentsessions-singleflight"
	// EngineUnbatched is the library with every issue in a transaction
	// of its own (pgxstore.Config.IssueBatches = the pool's size).
	EngineUnbatched  = "agentsessions-unbatched"
	EnginePgbench    = "pgbench"     // pgbench replaying the library's statements
	EnginePgbenchCTE = "pgbench-cte" // pgbench replaying what the cte variant sends
	EngineRedis      = "redis"
	// EngineRedisDurable is the Redis peer on a redis-server the bench
	// starts with appendonly yes and appendfsync always.
	EngineRedisDurable = "redis-durable"
	// EngineFloor is pgbench inserting one session row per transaction,
	// committed durably, with no limit check: the cost of writing a session
	// at all on this server (issue workload only).
	EngineFloor = "floor"
)

// Variants of the store's SQL that Config.Variants may name.
const (
	VariantLibrary = "library" // the library's pgxstore.Store
	VariantCTE     = "cte"     // the library on pools that default to SERIALIZABLE
	VariantCached  = "cached"  // the library with pgxstore.Store.RunCache running on every instance
	// The library and the cached variant with Config.IdleTimeout set
	// (Config.IdleTimeout here, --idle-timeout): what recording last uses
	// costs, measured beside the variants without it.
	VariantIdle       = "idle"
	VariantCachedIdle = "cached-idle"
	// VariantSingleFlight queues same-agent issues inside each instance.
	VariantSingleFlight = "singleflight"
	// VariantUnbatched runs every issue in a transaction of its own.
	VariantUnbatched = "unbatched"
)

// VariantNames lists the variants in the order they run.
var VariantNames = []string{VariantLibrary, VariantCTE, VariantCached, VariantIdle, VariantCachedIdle, VariantSingleFlight, VariantUnbatched}

// reference names the engine each engine's Ratio is computed against:
// each PostgreSQL engine against pgbench running its own statements, and
// Redis against pgbench running the library's.
var reference = map[string]string{
	EngineOurs: EnginePgbench, EngineCTE: EnginePgbenchCTE, EngineRedis: EnginePgbench,
	EngineCached:       EnginePgbench, // it sends the library's SQL, when the cache misses
	EngineSingleFlight: EnginePgbench, // the library's SQL, fewer at once
	EngineUnbatched:    EnginePgbench, // the library's SQL, one issue per transaction as pgbench runs it
	EngineIdle:         EnginePgbench, // and so do the idle variants (plus batches of last uses)
	EngineCachedIdle:   EnginePgbench,
	EnginePgbench:      EnginePgbench, EnginePgbenchCTE: EnginePgbenchCTE,
	EngineRedisDurable: EnginePgbench, EngineFloor: EnginePgbench,
}

// Workloads lists the default workloads in the order they run.
var Workloads = []string{WorkloadIssue, WorkloadIssueHot, WorkloadAuthenticate, WorkloadMixed}

// AllWorkloads adds the workloads that run only when asked for.
var AllWorkloads = append(slices.Clone(Workloads), WorkloadIssuePrune)

var workloadInfo = map[string]struct {
	desc    string
	counted []string // operations counted in ops/s and the headline latency
}{
	WorkloadIssue:        {"Issue for random agents out of --agents, starting from --sessions stored sessions (low contention)", []string{OpIssue}},
	WorkloadIssueHot:     {"Issue for --hot-agents agents held at limit-1; each success is revoked again (counted: issue attempts)", []string{OpIssue}},
	WorkloadAuthenticate: {"Authenticate --sessions pre-issued sessions, random picks", []string{OpAuthenticate}},
	WorkloadMixed:        {"90% authenticate, 8% issue, 2% revoke on --sessions pre-issued sessions over --agents agents", []string{OpAuthenticate, OpIssue, OpRevoke}},
	WorkloadIssuePrune: {"issue as in issue while Store.Prune deletes --expired expired sessions stored beside the --sessions live ones; runs at least --duration and until the prune is done (our engines only)",
		[]string{OpIssue}},
}

// Config configures a run. DatabaseURL is required; zero values of the
// other fields take the defaults shown.
type Config struct {
	DatabaseURL string // PostgreSQL; the run creates and drops its own schema there

	Instances int           // separate pgx pools + Managers (default 4)
	Workers   int           // workers per instance (default 8)
	Duration  time.Duration // per workload and engine (default 10s); ignored when Ops > 0
	Ops       int64         // operations per workload and engine instead of a duration
	// Rounds runs every workload this many times on every engine, the
	// engines taking turns, and reports each engine's median round: noise
	// from other processes then hits every engine alike (default 1).
	Rounds int

	Workloads []string      // default: all of [Workloads]
	Agents    int           // agent population for issue, authenticate and mixed (default 100000)
	HotAgents int           // agents in issue-hot (default 4)
	Sessions  int           // sessions every workload but issue-hot starts from (default 10000)
	Expired   int           // expired sessions stored beside them for issue-prune (default 100000)
	Limit     int           // sessions per agent (default 5)
	TTL       time.Duration // session lifetime (default 1h: nothing expires during a run)
	// IdleTimeout is the idle variants' Config.IdleTimeout (default 1m:
	// nothing goes idle during a run, so every authenticate takes the
	// common path of recording a use).
	IdleTimeout time.Duration
	// Prewarm loads the session table and its indexes into PostgreSQL's
	// shared buffers (pg_prewarm) after each prefill of our engines,
	// before the clock starts, so that a short run on a large table
	// measures a warm cache instead of its first reads. It needs the
	// pg_prewarm extension (PostgreSQL's contrib) and the right to create
	// it in the bench's schema.
	Prewarm bool

	Compare bool // also run pgbench and Redis references
	// Variants of the store to run (default: library only; see
	// VariantNames). Prototypes are compared with the library in the
	// same run, each with its own pgbench reference under Compare.
	Variants []string
	RedisURL string // default redis://127.0.0.1:6379/0
	// DurableRedis, with Compare, also runs the Redis peer on a
	// redis-server of the bench's own (RedisServerPath, default
	// redis-server on PATH) with appendonly yes and appendfsync always.
	DurableRedis    bool
	RedisServerPath string
	PgbenchPath     string // default: pgbench on PATH
	MaxAttempts     int    // store retries on serialization failure, also pgbench --max-tries (default 20, the store's default)

	// Rate, when > 0, drives every run open loop: arrivals at this many
	// per second over all clients on a fixed schedule, latency counted
	// from each arrival's scheduled start. 0: closed loop.
	Rate float64
	// OpenLoop lists loads in percent (e.g. 50, 80): after a workload's
	// closed-loop rounds, each engine runs it once more open loop at each
	// percentage of its own median closed-loop throughput
	// (Workload.OpenLoop).
	OpenLoop []float64

	OpTimeout time.Duration // per operation (default 10s)
	Keep      bool          // keep the schema (and Redis keys) afterwards

	// Progress, when set, receives a progress bar redrawn in place (give it
	// a terminal). Log, when set, receives one line per event.
	Progress io.Writer
	Log      func(format string, args ...any)
}

// Validate reports what is wrong with the configuration, if anything.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

func (c Config) withDefaults() (Config, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Instances, 4)
	def(&c.Workers, 8)
	def(&c.Agents, 100000)
	def(&c.HotAgents, 4)
	def(&c.Sessions, 10000)
	def(&c.Expired, 100000)
	def(&c.Limit, 5)
	def(&c.MaxAttempts, 20)
	def(&c.Rounds, 1)
	if c.Duration == 0 && c.Ops == 0 {
		c.Duration = 10 * time.Second
	}
	if c.TTL == 0 {
		c.TTL = time.Hour
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = time.Minute
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = 10 * time.Second
	}
	if len(c.Workloads) == 0 {
		c.Workloads = slices.Clone(Workloads)
	}
	if len(c.Variants) == 0 {
		c.Variants = []string{VariantLibrary}
	}
	if c.RedisURL == "" {
		c.RedisURL = "redis://127.0.0.1:6379/0"
	}
	if c.PgbenchPath == "" {
		c.PgbenchPath = "pgbench"
	}
	if c.RedisServerPath == "" {
		c.RedisServerPath = "redis-server"
	}
	if c.Log == nil {
		c.Log = func(string, ...any) {}
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if c.DatabaseURL == "" {
		bad("no database URL")
	}
	for _, w := range c.Workloads {
		if _, ok := workloadInfo[w]; !ok {
			bad("unknown workload %q (want %s)", w, strings.Join(AllWorkloads, ", "))
		}
	}
	for _, v := range c.Variants {
		if _, ok := variants[v]; !ok {
			bad("unknown variant %q (want %s)", v, strings.Join(VariantNames, ", "))
		}
	}
	if c.IdleTimeout < time.Second || c.IdleTimeout%time.Second != 0 {
		bad("idle timeout %s: want whole seconds, at least 1s", c.IdleTimeout)
	}
	if c.Rounds < 1 || c.Rounds > 99 {
		bad("rounds must be between 1 and 99")
	}
	if c.Instances < 1 || c.Workers < 1 || c.Agents < 1 || c.HotAgents < 1 || c.Sessions < 1 || c.Limit < 1 || c.MaxAttempts < 1 {
		bad("instances, workers, agents, hot agents, sessions, limit and max attempts must be >= 1")
	}
	if c.Instances*c.Workers > 512 {
		bad("instances x workers = %d clients; at most 512", c.Instances*c.Workers)
	}
	if c.Rate < 0 {
		bad("rate must not be negative")
	}
	for _, pct := range c.OpenLoop {
		if pct <= 0 || pct > 1000 {
			bad("open-loop loads are percentages of the closed-loop throughput, above 0 and at most 1000, got %v", pct)
		}
	}
	if c.Rate > 0 && len(c.OpenLoop) > 0 {
		bad("--rate and --open-loop exclude each other")
	}
	if c.Duration < 0 || c.Ops < 0 || c.TTL < time.Second || c.OpTimeout < 0 {
		bad("duration and ops must not be negative, TTL must be >= 1s")
	}
	if c.Duration > 0 && c.Duration < time.Second && c.Ops == 0 {
		bad("duration must be at least 1s (pgbench counts whole seconds)")
	}
	if c.Limit < 2 && slices.Contains(c.Workloads, WorkloadIssueHot) {
		bad("issue-hot needs --limit >= 2 (agents are held at limit-1)")
	}
	if int64(c.Sessions) > int64(c.Agents)*int64(c.Limit) {
		bad("--sessions %d do not fit in --agents %d x --limit %d", c.Sessions, c.Agents, c.Limit)
	}
	if slices.Contains(c.Workloads, WorkloadIssuePrune) && int64(c.Sessions)+int64(c.Expired) > int64(c.Agents)*int64(c.Limit) {
		bad("--sessions %d and --expired %d do not fit in --agents %d x --limit %d", c.Sessions, c.Expired, c.Agents, c.Limit)
	}
	if len(problems) > 0 {
		return c, fmt.Errorf("bench: %s", strings.Join(problems, "; "))
	}
	return c, nil
}

// Clients is the total number of concurrent clients: Instances x Workers.
func (c Config) Clients() int { return c.Instances * c.Workers }

// Report is the outcome of a run.
type Report struct {
	Started   time.Time  `json:"started"`
	Host      Host       `json:"host"`
	Settings  Settings   `json:"settings"`
	Workloads []Workload `json:"workloads"`
	Pgbench   Reference  `json:"pgbench"`
	Redis     Reference  `json:"redis"`
	// RedisDurable is the Redis peer on the bench's own redis-server with
	// appendfsync always; Floor is the floor engine (pgbench).
	RedisDurable Reference `json:"redis_durable"`
	Floor        Reference `json:"floor"`
	// PgbenchPrototypes is pgbench replaying each other variant's
	// statements, by engine name (with Config.Compare and the cte variant
	// in Variants). The JSON name is kept for reports saved earlier.
	PgbenchPrototypes map[string]*Reference `json:"pgbench_prototypes,omitempty"`
}

// Host describes the machine and servers the run used.
type Host struct {
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	GoVersion string `json:"go_version"`
	Postgres  string `json:"postgres"`
	Pgbench   string `json:"pgbench,omitempty"`
	Redis     string `json:"redis,omitempty"`
}

// Settings echoes the configuration the numbers came from.
type Settings struct {
	Instances   int       `json:"instances"`
	Workers     int       `json:"workers"`
	Clients     int       `json:"clients"`
	Duration    string    `json:"duration,omitempty"`
	Ops         int64     `json:"ops,omitempty"`
	Rounds      int       `json:"rounds"`
	Workloads   []string  `json:"workloads"`
	Agents      int       `json:"agents"`
	HotAgents   int       `json:"hot_agents"`
	Sessions    int       `json:"sessions"`
	Expired     int       `json:"expired,omitempty"`
	Limit       int       `json:"limit"`
	TTL         string    `json:"ttl"`
	MaxAttempts int       `json:"max_attempts"`
	Compare     bool      `json:"compare"`
	Variants    []string  `json:"variants"`
	Rate        float64   `json:"rate,omitempty"`
	OpenLoop    []float64 `json:"open_loop_percent,omitempty"`
	Prewarm     bool      `json:"prewarm,omitempty"`
	Schema      string    `json:"schema"`
}

// Reference says whether a reference engine ran, and if not, why.
type Reference struct {
	Ran     bool              `json:"ran"`
	Skipped string            `json:"skipped,omitempty"`
	Scripts map[string]string `json:"scripts,omitempty"` // pgbench: the generated scripts, by file name
}

// Workload holds one workload's results, ours first.
type Workload struct {
	Name        string   `json:"name"`
	Description string   `json:"description"`
	Results     []Result `json:"results"`
	// OpenLoop holds the open-loop runs (Config.OpenLoop): each engine at
	// each load, in that order.
	OpenLoop []Result `json:"open_loop,omitempty"`
}

// Result is one engine's run of one workload.
type Result struct {
	Engine    string  `json:"engine"`
	Clients   int     `json:"clients"`
	ElapsedS  float64 `json:"elapsed_s"`
	Ops       int64   `json:"ops"` // counted operations (see the workload description)
	OpsPerSec float64 `json:"ops_per_sec"`
	// Ratio is OpsPerSec over the OpsPerSec of RatioTo (pgbench running
	// the same statements) for the same workload; 0 when it did not run.
	Ratio   float64 `json:"ratio,omitempty"`
	RatioTo string  `json:"ratio_to,omitempty"`
	// VsFloor is OpsPerSec over the floor engine's (issue, with Compare).
	VsFloor  float64          `json:"vs_floor,omitempty"`
	Latency  Latency          `json:"latency"` // of the counted operations
	Outcomes map[string]int64 `json:"outcomes"`
	Errors   int64            `json:"errors"` // outcomes other than ok and limit_exceeded
	// ErrorExamples holds the first message seen for each error class.
	ErrorExamples map[string]string   `json:"error_examples,omitempty"`
	ByOp          map[string]OpResult `json:"by_op,omitempty"`
	// Retries counts serialization-failure reruns (store: 40001/40P01
	// retries; pgbench: its --max-tries retries; Redis: none exist).
	Retries      int64   `json:"serialization_retries"`
	RetriesPer1k float64 `json:"retries_per_1k_ops"`
	// OverLimitAgents is how many agents hold more than the limit at the
	// end: anything but 0 is a broken invariant. -1: not checked.
	OverLimitAgents int64 `json:"over_limit_agents"`
	Rows            int64 `json:"rows_at_end"` // sessions stored at the end
	// RoundsOpsPerSec is every round's throughput, in the order they ran,
	// when Config.Rounds > 1; the rest of the result is the median round's
	// (OverLimitAgents: the worst round's).
	RoundsOpsPerSec []float64 `json:"rounds_ops_per_sec,omitempty"`
	// Cache counts the verified-session cache's answers (cached variant).
	Cache *CacheResult `json:"cache,omitempty"`
	// TargetRate is the open-loop arrival rate (ops/s) the run was driven
	// at, LoadFraction that rate over the engine's closed-loop throughput
	// in the same run; both 0 for a closed-loop run.
	TargetRate   float64 `json:"target_rate,omitempty"`
	LoadFraction float64 `json:"load_fraction,omitempty"`
	// ClientCPUS is the CPU time (user + system, getrusage) the client
	// side used during the run: this process for our engines and the
	// Redis peer, the pgbench process for pgbench. ClientCPUPerOpUS is
	// that per counted operation, in microseconds.
	ClientCPUS       float64 `json:"client_cpu_s,omitempty"`
	ClientCPUPerOpUS float64 `json:"client_cpu_per_op_us,omitempty"`
	// BytesPerSession is the session table's size with its indexes
	// (pg_total_relation_size) over its rows, after the prefill (our
	// engines).
	BytesPerSession float64 `json:"bytes_per_session,omitempty"`
	// Prune is what the pruner did during issue-prune.
	Prune *PruneRun `json:"prune,omitempty"`
	// LastUse counts the batches of last uses the instances wrote (idle
	// variants), the final Close of each instance included.
	LastUse *LastUseResult `json:"last_use,omitempty"`
}

// LastUseResult is what the managers wrote of last uses during a run.
type LastUseResult struct {
	Flushes      uint64  `json:"flushes"`        // batches (one UPDATE per 5,000 uses each)
	Uses         uint64  `json:"uses"`           // rows written in them
	UsesPerSec   float64 `json:"uses_per_sec"`   // Uses over the run's elapsed time
	IdleTimeoutS float64 `json:"idle_timeout_s"` // Config.IdleTimeout
	IntervalS    float64 `json:"interval_s"`     // how often each instance writes (IdleTimeout/10)
}

// PruneRun is Store.Prune run beside issue traffic until a pass deletes
// nothing.
type PruneRun struct {
	Expired int   `json:"expired"` // expired sessions stored before the run
	Deleted int64 `json:"deleted"` // rows the pruner deleted (issues delete their agent's expired rows too)
	Batches int   `json:"batches"` // DELETE statements
	Passes  int   `json:"passes"`  // Store.Prune calls that completed, the last of which deleted nothing
	// FailedPasses is the calls that failed with a deadlock (40P01) or
	// serialization failure against the issues' count-row updates, and
	// were run again.
	FailedPasses int     `json:"failed_passes"`
	Seconds      float64 `json:"seconds"`      // the pass's duration
	RowsPerSec   float64 `json:"rows_per_sec"` // Deleted / Seconds
	Left         int64   `json:"expired_left"` // expired rows still stored at the end (must be 0)
}

// CacheResult is what the verified-session caches did during a run.
type CacheResult struct {
	Hits   uint64 `json:"hits"`   // Get answered from memory
	Misses uint64 `json:"misses"` // Get sent to the database
}

// Violations returns the number of broken invariants over every result.
func (r Report) Violations() int64 {
	var n int64
	for _, w := range r.Workloads {
		for _, res := range w.Results {
			if res.OverLimitAgents > 0 {
				n += res.OverLimitAgents
			}
		}
	}
	return n
}

// Run runs the configured workloads and returns the report. A report with
// what finished so far comes back with the error when the run is
// interrupted.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return rep, err
	}
	rep.Started = time.Now().UTC()
	rep.Host = Host{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), CPUModel: cpuModel(), GoVersion: runtime.Version()}

	base, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return rep, fmt.Errorf("bench: bad database url: %w", err)
	}
	admin, err := openPool(ctx, base.Copy(), 2)
	if err != nil {
		return rep, fmt.Errorf("bench: cannot reach the database: %w", err)
	}
	defer admin.Close()
	if err := admin.QueryRow(ctx, "SHOW server_version").Scan(&rep.Host.Postgres); err != nil {
		return rep, fmt.Errorf("bench: %w", err)
	}

	schema := "agentsessions_bench_" + randomHex(6)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return rep, fmt.Errorf("bench: create schema %s (the role needs CREATE on the database): %w", schema, err)
	}
	defer func() {
		if cfg.Keep {
			cfg.Log("kept schema %s (drop it with: DROP SCHEMA %s CASCADE)", schema, schema)
			return
		}
		if _, derr := admin.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+schema+" CASCADE"); derr != nil {
			err = errors.Join(err, fmt.Errorf("bench: drop schema %s: %w", schema, derr))
		}
	}()
	cfg.Log("schema %s on PostgreSQL %s", schema, rep.Host.Postgres)

	rep.Settings = Settings{
		Instances: cfg.Instances, Workers: cfg.Workers, Clients: cfg.Clients(), Ops: cfg.Ops, Rounds: cfg.Rounds,
		Workloads: cfg.Workloads, Agents: cfg.Agents, HotAgents: cfg.HotAgents, Sessions: cfg.Sessions,
		Limit: cfg.Limit, TTL: cfg.TTL.String(), MaxAttempts: cfg.MaxAttempts, Compare: cfg.Compare, Variants: cfg.Variants, Schema: schema,
		Rate: cfg.Rate, OpenLoop: cfg.OpenLoop, Prewarm: cfg.Prewarm,
	}
	if slices.Contains(cfg.Workloads, WorkloadIssuePrune) {
		rep.Settings.Expired = cfg.Expired
	}
	if cfg.Ops == 0 {
		rep.Settings.Duration = cfg.Duration.String()
	}

	poolCfg := base.Copy()
	poolCfg.ConnConfig.RuntimeParams["search_path"] = schema
	// Every engine runs alone: before one starts, all others' connections
	// are closed (they reconnect when next used).
	var engines []*ours
	table := newTableState()
	quiesce := func() {
		for _, o := range engines {
			o.idle()
		}
	}
	for _, name := range VariantNames {
		if !slices.Contains(cfg.Variants, name) {
			continue
		}
		o, err := newOurs(ctx, cfg, variants[name], poolCfg, schema, table)
		if err != nil {
			return rep, err
		}
		defer o.close()
		o.quiesce = quiesce
		engines = append(engines, o)
	}
	if err := migrations.Up(ctx, engines[0].pools[0]); err != nil {
		return rep, fmt.Errorf("bench: %w", err)
	}

	var pgs []*pgbenchRunner
	var rd, rdd *redisPeer
	if !cfg.Compare {
		for _, ref := range []*Reference{&rep.Pgbench, &rep.Redis, &rep.RedisDurable, &rep.Floor} {
			ref.Skipped = "not requested (--compare)"
		}
	} else {
		for _, o := range engines {
			if o.v.pgEngine == "" {
				continue
			}
			ref := &rep.Pgbench
			if o.v.engine != EngineOurs {
				if rep.PgbenchPrototypes == nil {
					rep.PgbenchPrototypes = map[string]*Reference{}
				}
				ref = &Reference{}
				rep.PgbenchPrototypes[o.v.pgEngine] = ref
			}
			var pg *pgbenchRunner
			pg, ref.Skipped = newPgbenchRunner(ctx, cfg, o)
			if pg == nil {
				cfg.Log("%s: skipped: %s", o.v.pgEngine, ref.Skipped)
				continue
			}
			defer pg.close()
			ref.Ran = true
			ref.Scripts = pg.scripts.Files()
			rep.Host.Pgbench = pg.version
			pgs = append(pgs, pg)
		}
		if fl, why := newPgbenchRunner(ctx, cfg, engines[0]); fl != nil {
			defer fl.close()
			fl.floor = true
			rep.Floor.Ran = true
			pgs = append(pgs, fl)
		} else {
			rep.Floor.Skipped = why
			cfg.Log("%s: skipped: %s", EngineFloor, why)
		}
		rd, rep.Redis.Skipped = newRedisPeer(ctx, cfg)
		if rd != nil {
			rep.Redis.Ran = true
			rep.Host.Redis = rd.version
			rd.quiesce = quiesce
			defer rd.close()
		} else {
			cfg.Log("redis: skipped: %s", rep.Redis.Skipped)
		}
		if !cfg.DurableRedis {
			rep.RedisDurable.Skipped = "not requested (--durable-redis)"
		} else if srv, why := startRedisServer(ctx, cfg.RedisServerPath); srv == nil {
			rep.RedisDurable.Skipped = why
			cfg.Log("%s: skipped: %s", EngineRedisDurable, why)
		} else {
			defer srv.stop() // after the peer's close (defers run last first)
			dcfg := cfg
			dcfg.RedisURL = srv.url()
			if rdd, rep.RedisDurable.Skipped = newRedisPeer(ctx, dcfg); rdd != nil {
				rdd.engine = EngineRedisDurable
				rdd.quiesce = quiesce
				rep.RedisDurable.Ran = true
				rep.Host.Redis = rdd.version
				defer rdd.close()
			}
		}
	}

	var runners []runner
	for _, o := range engines {
		runners = append(runners, o)
	}
	for _, pg := range pgs {
		runners = append(runners, pg)
	}
	if rd != nil {
		runners = append(runners, rd)
	}
	if rdd != nil {
		runners = append(runners, rdd)
	}
	for _, name := range cfg.Workloads {
		w := Workload{Name: name, Description: workloadInfo[name].desc}
		var active []runner
		for _, r := range runners {
			if s, ok := r.(interface{ skips(string) bool }); !ok || !s.skips(name) {
				active = append(active, r)
			}
		}
		rounds := make([][]Result, len(active))
		for round := range cfg.Rounds {
			if cfg.Rounds > 1 {
				cfg.Log("%s: round %d of %d", name, round+1, cfg.Rounds)
			}
			for i, r := range active {
				res, err := r.run(ctx, name, load{rate: cfg.Rate})
				if err != nil {
					return rep, err
				}
				rounds[i] = append(rounds[i], res)
			}
		}
		for _, rs := range rounds {
			w.Results = append(w.Results, medianRound(rs))
		}
		setRatios(w.Results)
		// Open loop at fractions of each engine's own closed-loop rate.
		for _, pct := range cfg.OpenLoop {
			for i, r := range active {
				l := load{rate: w.Results[i].OpsPerSec * pct / 100, fraction: pct / 100}
				if l.rate <= 0 {
					continue
				}
				cfg.Log("%s · %s: open loop at %.0f%% = %.0f/s", name, w.Results[i].Engine, pct, l.rate)
				res, err := r.run(ctx, name, l)
				if err != nil {
					return rep, err
				}
				w.OpenLoop = append(w.OpenLoop, res)
			}
		}
		rep.Workloads = append(rep.Workloads, w)
	}
	return rep, nil
}

// runner runs one workload on one engine.
type runner interface {
	run(ctx context.Context, workload string, l load) (Result, error)
}

// medianRound returns the round with the median throughput (the lower
// middle one for an even count), with every round's throughput in
// RoundsOpsPerSec and the worst invariant check of any round.
func medianRound(rs []Result) Result {
	if len(rs) == 1 {
		return rs[0]
	}
	sorted := slices.Clone(rs)
	slices.SortStableFunc(sorted, func(a, b Result) int { return cmp.Compare(a.OpsPerSec, b.OpsPerSec) })
	m := sorted[(len(sorted)-1)/2]
	for _, r := range rs {
		m.RoundsOpsPerSec = append(m.RoundsOpsPerSec, r.OpsPerSec)
		m.OverLimitAgents = max(m.OverLimitAgents, r.OverLimitAgents)
	}
	return m
}

// setRatios fills Ratio with each engine's throughput over its
// reference's (see reference), when that ran.
func setRatios(results []Result) {
	byEngine := map[string]float64{}
	for _, r := range results {
		byEngine[r.Engine] = r.OpsPerSec
	}
	for i := range results {
		ref := reference[results[i].Engine]
		if v := byEngine[ref]; v > 0 {
			results[i].Ratio = results[i].OpsPerSec / v
			results[i].RatioTo = ref
		}
		if v := byEngine[EngineFloor]; v > 0 && results[i].Engine != EngineFloor {
			results[i].VsFloor = results[i].OpsPerSec / v
		}
	}
}

func openPool(ctx context.Context, cfg *pgxpool.Config, maxConns int32) (*pgxpool.Pool, error) {
	cfg.MaxConns = maxConns
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := p.Ping(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// cpuModel reads the CPU model name on Linux; "" elsewhere.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// lookPath finds an executable, for the references' "skipped" lines.
func lookPath(name string) (string, error) { return exec.LookPath(name) }
