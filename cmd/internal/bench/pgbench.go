package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// pgbenchRunner runs the workloads' pgbench equivalents: the same client
// count, duration (whole seconds) and starting table, the statements the
// store sends, prepared (-M prepared, as pgx does), retried on
// serialization failures up to MaxAttempts tries (--max-tries).
type pgbenchRunner struct {
	cfg      Config
	ours     *ours // prefills the table the same way as for our run
	path     string
	version  string
	conninfo string
	env      []string
	dir      string
	trace    *Trace
	scripts  *ScriptSet
	// floor makes this the floor engine (EngineFloor): instead of the
	// store's statements, one INSERT of a session row per transaction,
	// committed durably (synchronous_commit as the server has it), with no
	// limit check and no count row: what writing a session costs at all on
	// this server. It runs the issue workload only.
	floor bool
}

// floorScript inserts one session row for a random agent.
const floorScript = "-- agentsessions bench floor: one durable INSERT of a session row, no limit check\n" +
	"\\set aid random(1, :agents)\n" +
	"\\set sid random(1000000000000, 9223372036854775807)\n" +
	"INSERT INTO agent_sessions (id, agent_id, issued_at, expires_at, token_digest) VALUES (:sid, :aid, :now, :exp, :digest);\n"

const scriptFloor = "floor.sql"

// engine is the runner's engine name in reports.
func (p *pgbenchRunner) engine() string {
	if p.floor {
		return EngineFloor
	}
	return p.ours.v.pgEngine
}

// skips reports whether the runner has nothing to run for a workload.
func (p *pgbenchRunner) skips(workload string) bool {
	return (p.floor && workload != WorkloadIssue) || workload == WorkloadIssuePrune
}

// newPgbenchRunner finds pgbench and records the statements o's variant
// of the store sends; it returns nil and the reason when pgbench cannot
// run. The runner uses o to prefill and check the table.
func newPgbenchRunner(ctx context.Context, cfg Config, o *ours) (*pgbenchRunner, string) {
	path, err := lookPath(cfg.PgbenchPath)
	if err != nil {
		return nil, fmt.Sprintf("%s not found on PATH (it ships with PostgreSQL's client tools, e.g. apt-get install postgresql-client)", cfg.PgbenchPath)
	}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return nil, fmt.Sprintf("%s --version: %v", path, err)
	}
	version := strings.TrimSpace(string(out))
	if major := pgbenchMajor(version); major > 0 && major < 15 {
		return nil, fmt.Sprintf("%s is too old for --max-tries (need PostgreSQL 15 or later)", version)
	}
	options := "-csearch_path=" + o.schema
	if o.v.serializable {
		options += " -cdefault_transaction_isolation=serializable"
	}
	conninfo, env, err := libpqConninfo(cfg.DatabaseURL, options)
	if err != nil {
		return nil, err.Error()
	}
	trace, err := RecordTrace(ctx, o.v, o.poolCfg, cfg.TTL)
	if err != nil {
		return nil, err.Error()
	}
	scripts, err := trace.Scripts()
	if err != nil {
		return nil, err.Error()
	}
	scripts.Engine = o.v.engine
	dir, err := os.MkdirTemp("", "agentsessions-pgbench-")
	if err != nil {
		return nil, err.Error()
	}
	return &pgbenchRunner{cfg: cfg, ours: o, path: path, version: version, conninfo: conninfo, env: env,
		dir: dir, trace: trace, scripts: scripts}, ""
}

func (p *pgbenchRunner) close() { _ = os.RemoveAll(p.dir) }

func pgbenchMajor(version string) int {
	m := regexp.MustCompile(`\b(\d+)(\.\d+)?`).FindStringSubmatch(version)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// libpqParams are the URL query parameters libpq knows; pgx-only ones
// (pool_max_conns, search_path, ...) would make libpq refuse the URL.
var libpqParams = map[string]bool{
	"host": true, "hostaddr": true, "port": true, "dbname": true, "user": true, "passfile": true,
	"connect_timeout": true, "client_encoding": true, "options": true, "application_name": true,
	"sslmode": true, "sslcert": true, "sslkey": true, "sslrootcert": true, "sslcrl": true, "sslpassword": true,
	"sslnegotiation": true, "sslsni": true, "gssencmode": true, "krbsrvname": true, "target_session_attrs": true,
	"channel_binding": true, "keepalives": true, "keepalives_idle": true, "keepalives_interval": true,
	"keepalives_count": true, "tcp_user_timeout": true, "service": true, "load_balance_hosts": true,
}

// libpqConninfo turns the database URL into a libpq connection string
// with options (server settings such as -csearch_path=...) added, and the
// password moved to PGPASSWORD so it is not on pgbench's command line.
func libpqConninfo(databaseURL, options string) (conninfo string, env []string, err error) {
	if strings.HasPrefix(databaseURL, "postgres://") || strings.HasPrefix(databaseURL, "postgresql://") {
		u, err := url.Parse(databaseURL)
		if err != nil {
			return "", nil, fmt.Errorf("bad database url: %w", err)
		}
		if pw, ok := u.User.Password(); ok {
			env = append(env, "PGPASSWORD="+pw)
			u.User = url.User(u.User.Username())
		}
		q := url.Values{}
		for k, v := range u.Query() {
			if libpqParams[k] {
				q[k] = v
			} else if k == "password" {
				env = append(env, "PGPASSWORD="+v[0])
			}
		}
		q.Set("options", strings.TrimSpace(q.Get("options")+" "+options))
		// libpq decodes %XX but not "+": spaces (between options) must be %20.
		u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
		return u.String(), env, nil
	}
	// key=value form: rebuild it from what pgx parsed.
	c, err := pgconn.ParseConfig(databaseURL)
	if err != nil {
		return "", nil, fmt.Errorf("bad database url: %w", err)
	}
	if c.Password != "" {
		env = append(env, "PGPASSWORD="+c.Password)
	}
	quote := func(s string) string { return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'" }
	parts := []string{"host=" + quote(c.Host), "port=" + strconv.Itoa(int(c.Port)), "dbname=" + quote(c.Database),
		"user=" + quote(c.User), "options=" + quote(options)}
	if m := regexp.MustCompile(`sslmode\s*=\s*(\w[\w-]*)`).FindStringSubmatch(databaseURL); m != nil {
		parts = append(parts, "sslmode="+m[1])
	}
	return strings.Join(parts, " "), env, nil
}

// pgbenchSummary is what pgbench prints at the end of a run.
type pgbenchSummary struct {
	Clients   int
	Processed int64
	Failed    int64
	Retried   int64
	Retries   int64
	TPS       float64 // without initial connection time
}

var (
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reRetried   = regexp.MustCompile(`(?m)^number of transactions retried: (\d+)`)
	reRetries   = regexp.MustCompile(`(?m)^total number of retries: (\d+)`)
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	reClients   = regexp.MustCompile(`(?m)^number of clients: (\d+)`)
)

// parsePgbenchSummary reads pgbench's final report. Processed and TPS are
// required; the failure and retry lines appear only with --max-tries.
func parsePgbenchSummary(out string) (pgbenchSummary, error) {
	var s pgbenchSummary
	num := func(re *regexp.Regexp) (int64, bool) {
		m := re.FindStringSubmatch(out)
		if m == nil {
			return 0, false
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		return n, err == nil
	}
	var ok bool
	if s.Processed, ok = num(reProcessed); !ok {
		return s, errors.New("no 'number of transactions actually processed' line")
	}
	m := reTPS.FindStringSubmatch(out)
	if m == nil {
		return s, errors.New("no 'tps = ... (without initial connection time)' line")
	}
	s.TPS, _ = strconv.ParseFloat(m[1], 64)
	s.Failed, _ = num(reFailed)
	s.Retried, _ = num(reRetried)
	s.Retries, _ = num(reRetries)
	c, _ := num(reClients)
	s.Clients = int(c)
	return s, nil
}

// run runs one workload under pgbench.
func (p *pgbenchRunner) run(ctx context.Context, workload string, l load) (Result, error) {
	if _, err := p.ours.prefill(ctx, workload); err != nil {
		return Result{}, err
	}
	if p.ours.quiesce != nil {
		p.ours.quiesce()
	}
	cfg := p.cfg
	clients := cfg.Clients()
	dir, err := os.MkdirTemp(p.dir, workload+"-")
	if err != nil {
		return Result{}, err
	}
	files := p.scripts.Files()
	files[scriptFloor] = floorScript
	var scripts []string // -f arguments
	var kinds []string   // operation of each script, by script number
	add := func(name, op string, weight int) error {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(files[name]), 0o644); err != nil {
			return err
		}
		arg := path
		if weight > 0 {
			arg += "@" + strconv.Itoa(weight)
		}
		scripts = append(scripts, "-f", arg)
		kinds = append(kinds, op)
		return nil
	}
	switch {
	case p.floor:
		err = add(scriptFloor, OpIssue, 0)
	case workload == WorkloadIssue:
		err = add(scriptIssue, OpIssue, 0)
	case workload == WorkloadIssueHot:
		err = add(scriptIssueHot, OpIssue, 0)
	case workload == WorkloadAuthenticate:
		err = add(scriptAuth, OpAuthenticate, 0)
	case workload == WorkloadMixed:
		err = errors.Join(add(scriptAuth, OpAuthenticate, 90), add(scriptIssue, OpIssue, 8), add(scriptRevoke, OpRevoke, 2))
	}
	if err != nil {
		return Result{}, err
	}

	now := time.Now().UTC().Truncate(time.Second)
	sessionsN := cfg.Sessions
	if workload == WorkloadIssueHot {
		sessionsN = cfg.HotAgents * (cfg.Limit - 1)
	}
	vars := map[string]string{
		"agents": strconv.Itoa(cfg.Agents), "hot": strconv.Itoa(cfg.HotAgents), "limit": strconv.Itoa(cfg.Limit),
		"now": now.Format(time.RFC3339), "exp": now.Add(cfg.TTL.Truncate(time.Second)).Format(time.RFC3339),
		"digest": strings.Repeat("ab", 32), "prev_sid": "0",
		"first_sid": strconv.Itoa(prefillBase), "last_sid": strconv.Itoa(prefillBase + max(sessionsN, 1) - 1),
	}
	for _, n := range p.scripts.constNames() {
		vars[n] = p.scripts.Consts[n]
	}
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, runtime.NumCPU())),
		"--max-tries", strconv.Itoa(cfg.MaxAttempts), "--failures-detailed", "-l", "--log-prefix", filepath.Join(dir, "log")}
	if cfg.Ops > 0 {
		args = append(args, "-t", strconv.FormatInt((cfg.Ops+int64(clients)-1)/int64(clients), 10))
	} else {
		args = append(args, "-T", strconv.Itoa(int(math.Ceil(cfg.Duration.Seconds()))))
	}
	if l.rate > 0 {
		// Open loop: pgbench's -R schedules arrivals at that total rate and
		// counts each transaction's latency from its scheduled start.
		args = append(args, "-R", strconv.FormatFloat(l.rate, 'f', 1, 64))
	}
	for _, k := range sortedKeys(vars) {
		args = append(args, "-D", k+"="+vars[k])
	}
	args = append(args, scripts...)
	args = append(args, p.conninfo)

	cmd := exec.CommandContext(ctx, p.path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), p.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	stopBar := startProgress(p.cfg.Progress, workload+" · "+p.engine(), p.cfg, start, func() int64 { return 0 })
	err = cmd.Run()
	stopBar()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return Result{}, ctx.Err()
	}
	if err != nil {
		return Result{}, fmt.Errorf("bench: pgbench %s: %w\n%s%s", workload, err, lastLines(stderr.String(), 15), lastLines(stdout.String(), 5))
	}
	sum, err := parsePgbenchSummary(stdout.String())
	if err != nil {
		return Result{}, fmt.Errorf("bench: pgbench %s: %w\n%s", workload, err, stdout.String())
	}
	if strings.Contains(stderr.String(), "client ") && strings.Contains(stderr.String(), "aborted") {
		return Result{}, fmt.Errorf("bench: pgbench %s: clients aborted:\n%s", workload, lastLines(stderr.String(), 15))
	}
	recs, err := readPgbenchLogs(dir, kinds)
	if err != nil {
		return Result{}, fmt.Errorf("bench: pgbench %s logs: %w", workload, err)
	}
	res := result(p.engine(), workload, []*worker{{rec: recs}}, elapsed)
	res.Clients = clients
	res.setLoad(l)
	// pgbench's own figures: transactions processed over the time after
	// all clients connected.
	res.Ops = sum.Processed + sum.Failed
	res.OpsPerSec = sum.TPS
	if sum.TPS > 0 {
		res.ElapsedS = float64(sum.Processed) / sum.TPS
	}
	res.setRetries(sum.Retries)
	if ps := cmd.ProcessState; ps != nil {
		res.setCPU(ps.UserTime() + ps.SystemTime())
	}
	if err := checkTable(ctx, p.ours.pools[0], cfg.Limit, &res); err != nil {
		return res, err
	}
	if p.floor {
		res.OverLimitAgents = -1 // it checks no limit, so there is none to hold
	}
	p.cfg.Log("%s · %s: %s", workload, p.engine(), oneLine(res))
	return res, nil
}

// readPgbenchLogs reads pgbench's per-transaction logs (-l): each line is
// "client_id transaction_no time script_no time_epoch time_us [retries]",
// time in microseconds, or "failed" (with --failures-detailed, the kind of
// failure) for a transaction that failed after its tries.
func readPgbenchLogs(dir string, kinds []string) (*recorder, error) {
	files, err := filepath.Glob(filepath.Join(dir, "log.*"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, errors.New("pgbench wrote no transaction log")
	}
	rec := newRecorder()
	for _, f := range files {
		if err := readPgbenchLog(f, kinds, rec); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

func readPgbenchLog(path string, kinds []string, rec *recorder) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		script, err := strconv.Atoi(fields[3])
		if err != nil || script < 0 || script >= len(kinds) {
			return fmt.Errorf("%s: bad line %q", path, sc.Text())
		}
		op := kinds[script]
		us, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			// "serialization" or "deadlock" (--failures-detailed): it
			// failed --max-tries times, or the run ended while it waited
			// to retry; the store reports the first as retries_exhausted.
			class := ClassFailed
			if fields[2] == "serialization" || fields[2] == "deadlock" {
				class = ClassRetriesExhausted
			}
			rec.count(op, class, fmt.Errorf("pgbench transaction failed: %s", fields[2])) // no latency for a failure
			continue
		}
		rec.record(op, ClassOK, time.Duration(us)*time.Microsecond, nil)
	}
	return sc.Err()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}
