package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// prefillBase is the first pre-issued session ID: pre-issued sessions get
// the decimal IDs prefillBase, prefillBase+1, ... so that pgbench (whose
// variables are integers) can pick them at random with the store's own
// SELECT. Sessions issued during a workload get the library's default
// random IDs.
const prefillBase = 1_000_000

// agentName is agent n's ID (n from 1): plain decimal, so pgbench's
// integer variables name the same agents.
func agentName(n int) string { return strconv.Itoa(n) }

// benchStore is a store the bench drives.
type benchStore interface {
	sessions.Store
	retries() int64 // serialization-failure reruns so far
	pgx() *pgxstore.Store
}

// libStore is the library's pgxstore.Store.
type libStore struct{ *pgxstore.Store }

func (s libStore) retries() int64 { return int64(s.Stats().Retries) }

func (s libStore) pgx() *pgxstore.Store { return s.Store }

// variant is one way of running the store's operations on PostgreSQL:
// the library's, on ordinary or SERIALIZABLE pools, with or without its
// cache.
type variant struct {
	engine       string // our engine name in reports
	pgEngine     string // the pgbench engine replaying its statements ("": none)
	serializable bool   // its pools set default_transaction_isolation=serializable
	cache        bool   // run the library's verified-session cache on each instance
	idle         bool   // managers with Config.IdleTimeout (cfg.IdleTimeout)
	newStore     func(pool *pgxpool.Pool, maxAttempts int) (benchStore, error)
}

var (
	variantLibrary = variant{engine: EngineOurs, pgEngine: EnginePgbench,
		newStore: func(pool *pgxpool.Pool, maxAttempts int) (benchStore, error) {
			ps, err := pgxstore.New(pool, &pgxstore.Config{MaxAttempts: maxAttempts})
			if err != nil {
				return nil, err
			}
			return libStore{ps}, nil
		}}
	// The library again, on pools that default to SERIALIZABLE: its limit
	// statement then goes out alone, without BEGIN and COMMIT.
	variantCTE = variant{engine: EngineCTE, pgEngine: EnginePgbenchCTE, serializable: true, newStore: variantLibrary.newStore}

	// The cached variant has no pgbench reference of its own: on a miss it
	// sends the library's statements, and a hit sends none.
	variantCached = variant{engine: EngineCached, cache: true, newStore: variantLibrary.newStore}

	// The library with one Insert per agent in flight per instance (see
	// gate.go). It sends the library's statements, so it has no pgbench
	// reference of its own either.
	variantSingleFlight = variant{engine: EngineSingleFlight,
		newStore: func(pool *pgxpool.Pool, maxAttempts int) (benchStore, error) {
			st, err := variantLibrary.newStore(pool, maxAttempts)
			if err != nil {
				return nil, err
			}
			return gatedStore{libStore: st.(libStore), gate: newAgentGate()}, nil
		}}

	// The library with as many issue slots as connections, so that an
	// issue never shares its transaction (pgxstore.Config.IssueBatches):
	// what batching adds, in the same run.
	variantUnbatched = variant{engine: EngineUnbatched,
		newStore: func(pool *pgxpool.Pool, maxAttempts int) (benchStore, error) {
			ps, err := pgxstore.New(pool, &pgxstore.Config{MaxAttempts: maxAttempts, IssueBatches: int(pool.Config().MaxConns)})
			if err != nil {
				return nil, err
			}
			return libStore{ps}, nil
		}}

	// The idle variants: the same with an idle timeout, so that the cost
	// of recording uses shows beside the same workload without it.
	variantIdle       = variant{engine: EngineIdle, idle: true, newStore: variantLibrary.newStore}
	variantCachedIdle = variant{engine: EngineCachedIdle, cache: true, idle: true, newStore: variantLibrary.newStore}

	variants = map[string]variant{VariantLibrary: variantLibrary, VariantCTE: variantCTE, VariantCached: variantCached,
		VariantIdle: variantIdle, VariantCachedIdle: variantCachedIdle, VariantSingleFlight: variantSingleFlight, VariantUnbatched: variantUnbatched}
)

// poolConfig returns a copy of base set up for the variant.
func (v variant) poolConfig(base *pgxpool.Config) *pgxpool.Config {
	c := base.Copy()
	if v.serializable {
		serializableDefault(c)
	}
	return c
}

// ours runs the workloads on one variant of the store: one pool, store
// and Manager per instance.
type ours struct {
	cfg     Config
	v       variant
	secret  []byte
	schema  string
	poolCfg *pgxpool.Config // the variant's
	pools   []*pgxpool.Pool
	stores  []benchStore
	mgrs    []*sessions.Manager
	// quiesce, when set, is called after a workload's prefill and before
	// its clock starts: it closes every other engine's connections.
	quiesce func()
	// stopCache ends the instances' RunCache (cached variant).
	stopCache func()
	// table is what the session table holds, shared by every engine on
	// the run's schema.
	table *tableState
}

// tableState remembers the last prefill, so that the next one can reuse
// it: its minted sessions (minting millions takes minutes) and, when the
// workloads since only added sessions, the rows themselves (see
// RestorePrefill), which spares a COPY of millions of rows.
type tableState struct {
	secret   []byte // every engine's Managers share it, so prefilled tokens verify on all
	key      string // the prefill plan the minted sessions are for
	rows     []sessions.Session
	out      []prefilled
	loaded   bool   // the table holds that prefill (plus what workloads added)
	lastLoad string // the workload that ran on it last (set by prefill)
}

func newOurs(ctx context.Context, cfg Config, v variant, poolCfg *pgxpool.Config, schema string, table *tableState) (*ours, error) {
	if table == nil {
		table = newTableState()
	}
	o := &ours{cfg: cfg, v: v, secret: table.secret, schema: schema, poolCfg: v.poolConfig(poolCfg), table: table}
	for range cfg.Instances {
		p, err := openPool(ctx, o.poolCfg.Copy(), int32(cfg.Workers))
		if err != nil {
			o.close()
			return nil, fmt.Errorf("bench: open instance pool: %w", err)
		}
		o.pools = append(o.pools, p)
		st, err := v.newStore(p, cfg.MaxAttempts)
		if err != nil {
			o.close()
			return nil, err
		}
		m, err := o.manager(st, nil)
		if err != nil {
			o.close()
			return nil, err
		}
		o.stores = append(o.stores, st)
		o.mgrs = append(o.mgrs, m)
	}
	return o, nil
}

// startCaches runs pgxstore.Store.RunCache (defaults: 1s staleness bound)
// on every instance until stopCache, and waits until each cache answers.
// Each workload starts its caches empty, after the prefill: the prefill
// empties the table with TRUNCATE, which fires no invalidation trigger.
func (o *ours) startCaches(ctx context.Context) error {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	errs := make(chan error, len(o.stores))
	var wg sync.WaitGroup
	for _, st := range o.stores {
		ps := st.pgx()
		wg.Go(func() {
			if err := ps.RunCache(cctx, pgxstore.CacheConfig{}); err != nil {
				errs <- err
			}
		})
	}
	o.stopCache = func() { cancel(); wg.Wait() }
	deadline := time.Now().Add(10 * time.Second)
	for _, st := range o.stores {
		for !st.pgx().CacheStats().Fresh {
			select {
			case err := <-errs:
				return fmt.Errorf("bench: cache: %w", err)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return errors.New("bench: cache: not answering 10s after RunCache started")
			}
		}
	}
	return nil
}

// cacheCounts adds up the instances' cache counters (cached variant).
func (o *ours) cacheCounts() CacheResult {
	var c CacheResult
	if !o.v.cache {
		return c
	}
	for _, st := range o.stores {
		cs := st.pgx().CacheStats()
		c.Hits += cs.Hits
		c.Misses += cs.Misses
	}
	return c
}

func (o *ours) manager(st sessions.Store, newID func() (string, error)) (*sessions.Manager, error) {
	cfg := sessions.Config{Secret: o.secret, TTL: o.cfg.TTL, Limit: o.cfg.Limit, NewID: newID}
	if o.v.idle {
		cfg.IdleTimeout = o.cfg.IdleTimeout
	}
	return sessions.New(st, cfg)
}

// lastUses adds up the instances' writes of last uses (idle variants).
func (o *ours) lastUses() sessions.LastUseStats {
	var sum sessions.LastUseStats
	for _, m := range o.mgrs {
		st := m.LastUseStats()
		sum.Flushes += st.Flushes
		sum.Uses += st.Uses
		sum.Failures += st.Failures
	}
	return sum
}

func (o *ours) close() {
	if o.stopCache != nil {
		o.stopCache()
	}
	for _, p := range o.pools {
		p.Close()
	}
}

// idle closes the pools' connections (they reconnect when next used), so
// that an engine that is not running holds no server connections.
func (o *ours) idle() {
	for _, p := range o.pools {
		p.Reset()
	}
}

// warm opens every pool's connections before a run starts, so that
// connecting is not timed (pgbench's figure leaves it out too).
func (o *ours) warm(ctx context.Context) error {
	for _, p := range o.pools {
		conns := make([]*pgxpool.Conn, 0, p.Config().MaxConns)
		var err error
		for range p.Config().MaxConns {
			var c *pgxpool.Conn
			if c, err = p.Acquire(ctx); err != nil {
				break
			}
			conns = append(conns, c)
		}
		for _, c := range conns {
			c.Release()
		}
		if err != nil {
			return fmt.Errorf("bench: connect: %w", err)
		}
	}
	return nil
}

// prewarm reads the session tables and their indexes into shared
// buffers (Config.Prewarm). The statements are constant: the extension
// goes into the bench's schema (the pool's search_path), so it is dropped
// with it.
func prewarm(ctx context.Context, pool *pgxpool.Pool) (blocks int64, err error) {
	if _, err := pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_prewarm"); err != nil {
		return 0, fmt.Errorf("bench: --prewarm: create extension pg_prewarm (PostgreSQL's contrib; needs the right to create it): %w", err)
	}
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(pg_prewarm(c.oid)), 0)::bigint FROM pg_class c
		WHERE c.relnamespace = current_schema()::regnamespace AND c.relname LIKE 'agent_session%' AND c.relkind IN ('r', 'i')`).Scan(&blocks); err != nil {
		return 0, fmt.Errorf("bench: --prewarm: %w", err)
	}
	return blocks, nil
}

// instance returns the manager worker w belongs to: workers are split
// evenly, Workers per instance.
func (o *ours) instance(w *worker) *sessions.Manager { return o.mgrs[w.id/o.cfg.Workers] }

func (o *ours) retries() int64 {
	var n int64
	for _, s := range o.stores {
		n += s.retries()
	}
	return n
}

func newTableState() *tableState {
	t := &tableState{secret: make([]byte, 32)}
	_, _ = rand.Read(t.secret)
	return t
}

// reset empties the session table.
func (o *ours) reset(ctx context.Context) error {
	return resetTables(ctx, o.pools[0])
}

// resetTables empties the session table and the agents' counts.
func resetTables(ctx context.Context, pool *pgxpool.Pool) error {
	if err := db.New(pool).TruncateSessions(ctx); err != nil {
		return fmt.Errorf("bench: truncate: %w", err)
	}
	return nil
}

// prefilled is a pre-issued session.
type prefilled struct {
	token, agent, id string
}

// prefill resets the table and stores the sessions the workload starts
// from, with IDs prefillBase+i: for issue-hot, limit-1 sessions for each
// hot agent; for the others, Sessions sessions spread round-robin over
// the agents (for issue they are the population a running deployment
// has: an empty table would put every agent on one index page, where
// SERIALIZABLE's page-level predicate locks make unrelated agents
// conflict). See mintSessions for how.
func (o *ours) prefill(ctx context.Context, workload string) ([]prefilled, error) {
	t := o.table
	n, agentOf := prefillPlan(o.cfg, workload)
	key := "sessions"
	switch workload {
	case WorkloadIssueHot:
		key = "hot"
	case WorkloadIssuePrune:
		key = "prune"
	}
	last := t.lastLoad
	t.lastLoad = workload
	// Only issue (adds rows) and authenticate (changes nothing) leave the
	// prefilled rows as they were; issue-prune's expired rows go.
	if t.loaded && t.key == key && key == "sessions" && (last == WorkloadIssue || last == WorkloadAuthenticate) {
		deleted, err := db.New(o.pools[0]).RestorePrefill(ctx, db.RestorePrefillParams{FirstID: prefillBase, LastID: int64(prefillBase + n - 1)})
		if err != nil {
			return nil, fmt.Errorf("bench: restore prefill: %w", err)
		}
		size, err := db.New(o.pools[0]).SessionTableBytes(ctx)
		if err == nil && size.Rows == int64(n) {
			if deleted > 0 {
				if err := db.New(o.pools[0]).VacuumSessions(ctx); err != nil {
					return nil, fmt.Errorf("bench: prefill: %w", err)
				}
			}
			return t.out, nil
		}
		// Not what was loaded: load it again.
	}
	t.loaded = false
	if err := o.reset(ctx); err != nil {
		return nil, err
	}
	if t.key != key {
		rows, out, err := mintSessions(o.secret, o.cfg, n, agentOf, prefillBase, nil)
		if err != nil {
			return nil, err
		}
		if workload == WorkloadIssuePrune {
			// Expired sessions beside the live ones, on the agents after
			// theirs (round-robin), issued two TTLs ago.
			expired, _, err := mintSessions(o.secret, o.cfg, o.cfg.Expired, func(i int) string { return agentName((n+i)%o.cfg.Agents + 1) },
				prefillBase+n, func() time.Time { return time.Now().Add(-2 * o.cfg.TTL) })
			if err != nil {
				return nil, err
			}
			rows = append(rows, expired...)
		}
		t.key, t.rows, t.out = key, rows, out
	}
	if err := copySessions(ctx, o.pools[0], t.rows, o.cfg.Agents); err != nil {
		t.key = "" // Import may have failed half-way; mint again next time
		return nil, err
	}
	t.loaded = true
	return t.out, nil
}

// prefillPlan says how many sessions a workload starts from, and whose.
func prefillPlan(cfg Config, workload string) (n int, agentOf func(i int) string) {
	if workload == WorkloadIssueHot {
		return cfg.HotAgents * (cfg.Limit - 1), func(i int) string { return agentName(i%cfg.HotAgents + 1) }
	}
	return cfg.Sessions, func(i int) string { return agentName(i%cfg.Agents + 1) }
}

// mintSessions issues n sessions through a Manager with the run's secret,
// TTL and limit on a store that only collects them, so the tokens are the
// library's own; copySessions then stores the rows in one COPY. That takes
// milliseconds where issuing through PostgreSQL would take seconds, and
// agentOf spreads the sessions so that no agent exceeds the limit.
// The IDs start at firstID; clock, if set, is the Manager's clock.
func mintSessions(secret []byte, cfg Config, n int, agentOf func(i int) string, firstID int, clock func() time.Time) ([]sessions.Session, []prefilled, error) {
	st := &collectStore{rows: make([]sessions.Session, 0, n)}
	next := firstID
	m, err := sessions.New(st, sessions.Config{Secret: secret, TTL: cfg.TTL, Limit: cfg.Limit, Clock: clock,
		NewID: func() (string, error) { next++; return strconv.Itoa(next - 1), nil }})
	if err != nil {
		return nil, nil, err
	}
	out := make([]prefilled, n)
	for i := range n {
		iss, err := m.Issue(context.Background(), agentOf(i))
		if err != nil {
			return nil, nil, fmt.Errorf("bench: mint session %d: %w", i, err)
		}
		out[i] = prefilled{token: iss.Token, agent: iss.Session.AgentID, id: iss.Session.ID}
	}
	return st.rows, out, nil
}

// copySessions stores rows with COPY, gives every agent from 1 to agents
// its count row (migration 00004) holding what COPY stored for it, and
// refreshes the planner's statistics, so the workload runs against what a
// deployment that has been up a while holds: agents that were issued
// sessions before, with the plans such tables get. (An agent's very first
// session costs one more short transaction, which creates that row.)
func copySessions(ctx context.Context, pool *pgxpool.Pool, rows []sessions.Session, agents int) error {
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		return err
	}
	if _, err := store.Import(ctx, rows); err != nil {
		return fmt.Errorf("bench: prefill: %w", err)
	}
	q := db.New(pool)
	if err := q.EnsureAgentCounts(ctx, int32(agents)); err != nil {
		return fmt.Errorf("bench: prefill: %w", err)
	}
	if err := q.VacuumSessions(ctx); err != nil {
		return fmt.Errorf("bench: prefill: %w", err)
	}
	return nil
}

// collectStore is a sessions.Store that keeps what is inserted and
// nothing else; mintSessions uses it to make tokens without a database.
type collectStore struct{ rows []sessions.Session }

func (c *collectStore) Get(context.Context, string) (sessions.Session, bool, error) {
	return sessions.Session{}, false, nil
}
func (c *collectStore) Delete(context.Context, string) (bool, error) { return false, nil }
func (c *collectStore) DeleteExpired(context.Context, string, string, time.Time) error {
	return nil
}
func (c *collectStore) Insert(_ context.Context, s sessions.Session, req sessions.InsertRequest) (sessions.InsertResult, error) {
	c.rows = append(c.rows, s)
	return sessions.InsertResult{Inserted: true, Limit: req.Limit}, nil
}

// run runs one workload on the library.
func (o *ours) run(ctx context.Context, workload string, l load) (Result, error) {
	pre, err := o.prefill(ctx, workload)
	if err != nil {
		return Result{}, err
	}
	cfg := o.cfg
	clients := cfg.Clients()
	var setup func(w *worker)
	var step func(ctx context.Context, w *worker)
	switch workload {
	case WorkloadIssue, WorkloadIssuePrune:
		step = func(ctx context.Context, w *worker) {
			a := agentName(w.rng.IntN(cfg.Agents) + 1)
			_ = timed(ctx, cfg, w, OpIssue, func(ctx context.Context) error {
				_, err := o.instance(w).Issue(ctx, a)
				return err
			})
		}
	case WorkloadIssueHot:
		step = func(ctx context.Context, w *worker) {
			m := o.instance(w)
			a := agentName(w.rng.IntN(cfg.HotAgents) + 1)
			var iss sessions.Issued
			err := timed(ctx, cfg, w, OpIssue, func(ctx context.Context) (err error) {
				iss, err = m.Issue(ctx, a)
				return err
			})
			if err == nil {
				_ = timed(ctx, cfg, w, OpRevoke, func(ctx context.Context) error { _, err := m.Revoke(ctx, iss.Session.ID); return err })
			}
		}
	case WorkloadAuthenticate:
		step = func(ctx context.Context, w *worker) {
			s := pre[w.rng.IntN(len(pre))]
			_ = timed(ctx, cfg, w, OpAuthenticate, func(ctx context.Context) error {
				_, err := o.instance(w).Authenticate(ctx, s.token, s.agent)
				return err
			})
		}
	case WorkloadMixed:
		setup = func(w *worker) {
			for i := w.id; i < len(pre); i += clients {
				w.owned = append(w.owned, pre[i])
			}
		}
		step = func(ctx context.Context, w *worker) { o.mixedStep(ctx, w) }
	}
	bytesPerSession, err := sessionBytes(ctx, o.pools[0])
	if err != nil {
		return Result{}, err
	}
	if o.quiesce != nil {
		o.quiesce()
	}
	if err := o.warm(ctx); err != nil {
		return Result{}, err
	}
	if o.cfg.Prewarm {
		blocks, err := prewarm(ctx, o.pools[0])
		if err != nil {
			return Result{}, err
		}
		o.cfg.Log("prewarmed %d blocks of the session tables", blocks)
	}
	var prune *pruneJob
	if workload == WorkloadIssuePrune {
		prune = o.startPrune(ctx)
		l.busy = prune.running
	}
	if o.v.cache {
		if err := o.startCaches(ctx); err != nil {
			return Result{}, err
		}
		defer func() { o.stopCache(); o.stopCache = nil }()
	}
	if o.v.idle && len(pre) > 0 {
		// The prefill is minted once for every engine and round, so by
		// now it may be older than the idle timeout: mark it in use, as a
		// deployment's sessions are, before the clock starts.
		uses := make([]sessions.Use, len(pre))
		now := time.Now().UTC().Truncate(time.Second)
		for i, p := range pre {
			uses[i] = sessions.Use{ID: p.id, At: now}
		}
		if err := o.stores[0].(libStore).Touch(ctx, uses); err != nil {
			return Result{}, fmt.Errorf("bench: marking the prefill used: %w", err)
		}
	}
	before, cacheBefore, usesBefore := o.retries(), o.cacheCounts(), o.lastUses()
	d := drive(ctx, cfg, workload+" · "+o.v.engine, clients, l, setup, step)
	res := resultOf(o.v.engine, workload, d, l)
	res.BytesPerSession = bytesPerSession
	if prune != nil {
		if res.Prune, err = prune.wait(ctx); err != nil {
			return res, err
		}
	}
	res.setRetries(o.retries() - before)
	if o.v.idle {
		// What is still pending is written now, outside the timed run,
		// and counted: the run's uses all reach the database.
		for _, m := range o.mgrs {
			if err := m.Close(ctx); err != nil {
				return res, fmt.Errorf("bench: writing last uses: %w", err)
			}
		}
		after := o.lastUses()
		lu := &LastUseResult{Flushes: after.Flushes - usesBefore.Flushes, Uses: after.Uses - usesBefore.Uses,
			IdleTimeoutS: o.cfg.IdleTimeout.Seconds(), IntervalS: sessions.DefaultLastUseInterval(o.cfg.IdleTimeout).Seconds()}
		if d.elapsed > 0 {
			lu.UsesPerSec = float64(lu.Uses) / d.elapsed.Seconds()
		}
		res.LastUse = lu
	}
	if o.v.cache {
		after := o.cacheCounts()
		res.Cache = &CacheResult{Hits: after.Hits - cacheBefore.Hits, Misses: after.Misses - cacheBefore.Misses}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := o.check(ctx, &res); err != nil {
		return res, err
	}
	o.cfg.Log("%s · %s: %s", workload, o.v.engine, oneLine(res))
	return res, nil
}

// sessionBytes is the session table's size with its indexes over its rows.
func sessionBytes(ctx context.Context, pool *pgxpool.Pool) (float64, error) {
	row, err := db.New(pool).SessionTableBytes(ctx)
	if err != nil {
		return 0, fmt.Errorf("bench: table size: %w", err)
	}
	if row.Rows == 0 {
		return 0, nil
	}
	return float64(row.Bytes) / float64(row.Rows), nil
}

// pruneJob is one Store.Prune pass running beside a workload.
type pruneJob struct {
	o       *ours
	done    chan struct{}
	res     pgxstore.PruneResult // summed over the passes
	passes  int
	failed  int // passes that ended in a deadlock or serialization failure
	err     error
	elapsed time.Duration
}

// startPrune runs prune passes (the library's defaults: batches of
// 1,000) on the first instance's store, in the background, back to back
// until one deletes nothing. One pass is not enough under issue traffic:
// a pass ends at the first batch that deletes fewer rows than the batch
// size, and a batch does when issues have meanwhile deleted some of the
// rows it picked (each issue deletes its agent's expired rows).
func (o *ours) startPrune(ctx context.Context) *pruneJob {
	j := &pruneJob{o: o, done: make(chan struct{})}
	store := o.stores[0].pgx()
	go func() {
		defer close(j.done)
		start := time.Now()
		defer func() { j.elapsed = time.Since(start) }()
		for {
			res, err := store.Prune(ctx, pgxstore.PruneConfig{})
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001") && j.failed < 1000 {
				// A batch's count-row updates can deadlock with issues
				// (found by this workload): the pass fails, RunPruner
				// would try again at its next interval; here, at once.
				j.failed++
				j.res.Deleted += res.Deleted
				continue
			}
			if err != nil {
				j.err = err
				return
			}
			j.passes++
			j.res.Deleted += res.Deleted
			j.res.Batches += res.Batches
			if res.Deleted == 0 {
				return
			}
		}
	}()
	return j
}

func (j *pruneJob) running() bool {
	select {
	case <-j.done:
		return false
	default:
		return true
	}
}

// wait returns the pass's figures, with the expired rows left afterwards.
func (j *pruneJob) wait(ctx context.Context) (*PruneRun, error) {
	<-j.done
	if j.err != nil {
		return nil, fmt.Errorf("bench: prune: %w", j.err)
	}
	pr := &PruneRun{Expired: j.o.cfg.Expired, Deleted: j.res.Deleted, Batches: j.res.Batches, Passes: j.passes, FailedPasses: j.failed, Seconds: j.elapsed.Seconds()}
	if pr.Seconds > 0 {
		pr.RowsPerSec = float64(pr.Deleted) / pr.Seconds
	}
	var err error
	if pr.Left, err = db.New(j.o.pools[0]).CountExpiredSessions(ctx); err != nil {
		return nil, fmt.Errorf("bench: prune: count what is left: %w", err)
	}
	return pr, nil
}

// mixedStep: 90 % authenticate one of the worker's own sessions, 8 %
// issue (for a random agent; the session joins the worker's own), 2 %
// revoke one of its own. A worker with no sessions left issues.
func (o *ours) mixedStep(ctx context.Context, w *worker) {
	cfg := o.cfg
	m := o.instance(w)
	p := w.rng.IntN(100)
	switch {
	case p < 90 && len(w.owned) > 0:
		s := w.owned[w.rng.IntN(len(w.owned))].(prefilled)
		_ = timed(ctx, cfg, w, OpAuthenticate, func(ctx context.Context) error {
			_, err := m.Authenticate(ctx, s.token, s.agent)
			return err
		})
	case p < 98 || len(w.owned) == 0:
		a := agentName(w.rng.IntN(cfg.Agents) + 1)
		var iss sessions.Issued
		if timed(ctx, cfg, w, OpIssue, func(ctx context.Context) (err error) {
			iss, err = m.Issue(ctx, a)
			return err
		}) == nil {
			w.owned = append(w.owned, prefilled{token: iss.Token, agent: a, id: iss.Session.ID})
		}
	default:
		i := w.rng.IntN(len(w.owned))
		s := w.owned[i].(prefilled)
		if timed(ctx, cfg, w, OpRevoke, func(ctx context.Context) error { _, err := m.Revoke(ctx, s.id); return err }) == nil {
			w.owned[i] = w.owned[len(w.owned)-1]
			w.owned = w.owned[:len(w.owned)-1]
		}
	}
}

// check runs the invariant check on the session table: how many agents
// hold more rows (live or not) than the limit, and how many rows there are.
func (o *ours) check(ctx context.Context, res *Result) error {
	return checkTable(ctx, o.pools[0], o.cfg.Limit, res)
}

func checkTable(ctx context.Context, pool *pgxpool.Pool, limit int, res *Result) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	row, err := db.New(pool).CheckLimit(ctx, int32(limit))
	res.OverLimitAgents, res.Rows = row.OverLimitAgents, row.Rows
	if err != nil {
		return fmt.Errorf("bench: invariant check: %w", err)
	}
	return nil
}

// oneLine is a short summary for log lines.
func oneLine(r Result) string {
	return fmt.Sprintf("%d ops in %.1fs = %.0f ops/s, p50 %s p99 %s, errors %d, retries/1k %.1f, over-limit agents %d",
		r.Ops, r.ElapsedS, r.OpsPerSec, fmtDur(r.Latency.P50), fmtDur(r.Latency.P99), r.Errors, r.RetriesPer1k, r.OverLimitAgents)
}

// serializableDefault makes every transaction on connections from cfg
// SERIALIZABLE unless it asks otherwise (the "cte" variant: the library
// then sends its limit statement without BEGIN and COMMIT).
func serializableDefault(cfg *pgxpool.Config) {
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "serializable"
}
