package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/otelsessions"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

const (
	envAddr         = "AGENTSESSIONS_ADDR"
	defaultAddr     = "127.0.0.1:8080"
	memoryPruneTick = time.Minute
)

// envDirectDatabaseURL is the environment fallback of serve's
// --direct-database-url.
const envDirectDatabaseURL = "AGENTSESSIONS_DIRECT_DATABASE_URL"

type serveOpts struct {
	addr            string
	adminKeyFile    string
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	migrate         bool
	pruneInterval   time.Duration
	cacheStaleness  time.Duration
	directURL       string
	sec             secretOpts
	mo              managerOpts
}

func newServeCmd(g *globalOpts) *cobra.Command {
	o := &serveOpts{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the HTTP JSON API (see api/openapi.yaml)",
		Long: "serve runs the HTTP API. With a database (--database-url or $DATABASE_URL) it uses the PostgreSQL store, " +
			"shared by every instance, and runs the pruner; without one it keeps sessions in memory: one instance only, " +
			"lost on restart. The database must hold every migration in this binary (agentsessions migrate up), " +
			"or serve refuses to start; --migrate applies them first.\n\n" +
			"Secrets come from files or the environment, never from flags: the signing secret from --secret-file or " +
			"$" + envSecret + " (required with a database; random and ephemeral without one), the admin key from " +
			"--admin-key-file or $" + envAdminKey + " (without one: in memory mode a random key is generated and printed " +
			"once on standard error; with a database the admin routes answer 401). " +
			"SIGINT or SIGTERM stops accepting connections and drains in-flight requests for up to --shutdown-timeout.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd, g) },
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", "", "listen address (default $"+envAddr+", else "+defaultAddr+")")
	f.StringVar(&o.adminKeyFile, "admin-key-file", "", "file holding the admin bearer key, >= 32 bytes (default $"+envAdminKey+")")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long to drain in-flight requests on SIGINT/SIGTERM")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.BoolVar(&o.migrate, "migrate", false, "apply pending migrations at start, under the migrations' advisory lock so "+
		"instances starting together take turns (needs a role allowed to run DDL); without it serve refuses to start "+
		"on a database that is not fully migrated")
	f.DurationVar(&o.pruneInterval, "prune-interval", time.Minute, "how often the pruner deletes expired sessions")
	f.DurationVar(&o.cacheStaleness, "cache-max-staleness", 0,
		"with a database: cache verified sessions in this instance, accepting a revoked token for at most this long "+
			"after the revocation (LISTEN/NOTIFY; e.g. 1s, at least 20ms); 0 disables the cache")
	f.StringVar(&o.directURL, "direct-database-url", "",
		"with a database: a connection string reaching PostgreSQL directly, for the cache's LISTEN connection and the "+
			"pruner's advisory lock, when --database-url goes through a pooler in transaction mode (PgBouncer); "+
			"default $"+envDirectDatabaseURL+", else the --database-url settings")
	o.sec.addFlags(cmd)
	o.mo.addTTL(cmd)
	o.mo.addLimit(cmd)
	o.mo.addPolicy(cmd)
	o.mo.addMaxLifetime(cmd)
	o.mo.addIdleTimeout(cmd)
	return cmd
}

// run validates everything before it listens, then serves until the
// command's context ends (SIGINT/SIGTERM in main), then drains.
func (o *serveOpts) run(cmd *cobra.Command, g *globalOpts) error {
	ctx := cmd.Context()
	cfg, err := o.mo.config()
	if err != nil {
		return err
	}
	switch {
	case o.shutdownTimeout <= 0:
		return usageError{fmt.Errorf("--shutdown-timeout must be > 0, got %s", o.shutdownTimeout)}
	case o.pruneInterval <= 0:
		return usageError{fmt.Errorf("--prune-interval must be > 0, got %s", o.pruneInterval)}
	case o.cacheStaleness != 0 && o.cacheStaleness < 20*time.Millisecond:
		return usageError{fmt.Errorf("--cache-max-staleness must be 0 (off) or at least 20ms, got %s", o.cacheStaleness)}
	}
	log, err := newLogger(cmd.ErrOrStderr(), o.logFormat, o.logLevel)
	if err != nil {
		return err
	}
	addr := o.addr
	if addr == "" {
		addr = os.Getenv(envAddr)
	}
	if addr == "" {
		addr = defaultAddr
	}
	if err := checkAddr(addr); err != nil {
		return err
	}
	dbURL := g.databaseURL
	if dbURL == "" {
		dbURL = os.Getenv("DATABASE_URL")
	}
	ls, err := o.sec.load(dbURL != "")
	if err != nil {
		return err
	}
	adminKey, adminWarnings, err := loadAdminKey(o.adminKeyFile)
	if err != nil {
		return err
	}
	for _, w := range append(ls.warnings, adminWarnings...) {
		log.Warn(w)
	}
	cfg.Secret, cfg.VerifySecrets, cfg.Logger = ls.secret, ls.verify, log
	opts := server.Options{Logger: log}

	// OpenTelemetry, only when the OTEL_* environment asks for it.
	tel, err := newTelemetry(ctx, os.Getenv)
	if err != nil {
		return fmt.Errorf("OpenTelemetry (OTEL_* environment): %w", err)
	}
	var configurePool func(*pgxpool.Config)
	var storeObserver pgxstore.Observer
	if tel != nil {
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := tel.close(sctx); err != nil {
				log.Warn("flushing OpenTelemetry exporters failed", slog.Any("error", err))
			}
		}()
		cfg.Observer, storeObserver = tel.obs, tel.obs
		configurePool = func(pc *pgxpool.Config) {
			pc.ConnConfig.Tracer = otelsessions.PgxTracer(otelsessions.WithTracerProvider(tel.tp), otelsessions.WithMeterProvider(tel.mp))
		}
		log.Info("OpenTelemetry export on (OTEL_* environment)")
	}

	var (
		store     sessions.Store
		runPruner func(context.Context)
		srv       *server.Server // set before the pruner starts
	)
	onPrune := func(r pgxstore.PruneResult, err error) { srv.ObservePrune(r, err) }
	if dbURL != "" {
		g.databaseURL = dbURL
		pool, err := g.openPoolWith(ctx, configurePool)
		if err != nil {
			return err
		}
		defer pool.Close()
		if o.migrate {
			if err := migrations.Up(ctx, pool); err != nil {
				return fmt.Errorf("--migrate: %w", err)
			}
			log.Info("migrations applied")
		}
		directURL := o.directURL
		if directURL == "" {
			directURL = os.Getenv(envDirectDatabaseURL)
		}
		pg, err := pgxstore.New(pool, &pgxstore.Config{Observer: storeObserver, DirectDatabaseURL: directURL})
		if err != nil {
			return err
		}
		if tel != nil {
			reg, err := tel.obs.ObserveStore(pg)
			if err != nil {
				return err
			}
			defer func() { _ = reg.Unregister() }()
		}
		store = pg
		opts.Ready = pg.Ready
		if err := refuseUnmigrated(ctx, opts.Ready, log); err != nil {
			return err
		}
		opts.StoreStats = pg.Stats
		opts.LiveSessions = func(ctx context.Context) (int64, error) { return pg.LiveSessions(ctx, time.Now()) }
		runPruner = func(ctx context.Context) {
			_ = pg.RunPruner(ctx, pgxstore.PruneConfig{Interval: o.pruneInterval, IdleTimeout: cfg.IdleTimeout, Logger: log, OnPrune: onPrune})
		}
		if o.cacheStaleness > 0 {
			opts.CacheStats = pg.CacheStats
			runPruner = withCache(runPruner, pg, pgxstore.CacheConfig{MaxStaleness: o.cacheStaleness, Logger: log}, log)
		}
	} else {
		mem := sessions.NewMemoryStore()
		store = mem
		log.Warn("NO DATABASE: sessions are kept in this process's memory. They are lost on restart, and the " +
			"per-agent limit holds only within this one instance: do not run more than one. " +
			"Pass --database-url or set DATABASE_URL for the shared PostgreSQL store.")
		if ls.secret == nil {
			cfg.Secret = randomSecret()
			log.Warn("no signing secret given: using a random one for this process only; tokens stop " +
				"working when it exits. Pass --secret-file or set " + envSecret + ".")
		}
		runPruner = func(ctx context.Context) {
			t := time.NewTicker(min(o.pruneInterval, memoryPruneTick))
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case now := <-t.C:
					n := mem.PruneExpired(now)
					if cfg.IdleTimeout > 0 {
						n += mem.PruneIdle(sessions.IdleDeleteCutoff(now, cfg.IdleTimeout, cfg.LastUseInterval))
					}
					if n > 0 {
						onPrune(pgxstore.PruneResult{Deleted: int64(n), Batches: 1}, nil)
					}
				}
			}
		}
	}
	// Listen before generating (and printing) an admin key: a bad or busy
	// address must not leave a printed key behind.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s (--addr / %s): %w", addr, envAddr, err)
	}
	defer ln.Close() // Run closes it; this covers the returns before Run
	switch {
	case adminKey == nil && dbURL == "":
		// A fresh machine: make `agentsessions serve` usable at once. The
		// key lives as long as this process and its in-memory sessions;
		// it is printed once, on standard error, never through the logger.
		adminKey = []byte(base64.RawURLEncoding.EncodeToString(randomSecret()))
		fmt.Fprintf(cmd.ErrOrStderr(), "\nagentsessions: memory mode: generated an admin key for this process only "+
			"(set %s or pass --admin-key-file to choose one):\n\n    %s\n\n", envAdminKey, adminKey)
	case adminKey == nil:
		log.Warn("no admin key: the admin routes (issue, revoke, list, limits) answer 401. " +
			"Pass --admin-key-file or set " + envAdminKey + " (>= 32 bytes: head -c 32 /dev/urandom | base64).")
	}
	opts.AdminKey = adminKey

	m, err := sessions.New(store, cfg)
	if err != nil {
		return usageError{fmt.Errorf("session manager: %s", clean(err))}
	}
	// After the drain: the last uses of this instance reach the store, so
	// other instances do not take the sessions it served for idle.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := m.Close(cctx); err != nil {
			log.Warn("writing the last uses of sessions failed", slog.Any("error", err))
		}
	}()
	srv, err = server.New(m, opts)
	if err != nil {
		return err
	}

	storeName := "memory"
	if dbURL != "" {
		storeName = "postgres"
	}
	log.Info("listening", "addr", ln.Addr().String(), "store", storeName, "ttl", cfg.TTL, "limit", cfg.Limit,
		"policy", cfg.Policy.String(), "idle_timeout", cfg.IdleTimeout, "admin_routes", adminKey != nil, "verify_secrets", len(cfg.VerifySecrets))
	var handler http.Handler = srv
	if tel != nil {
		handler = tel.handler(srv)
	}
	err = server.Run(ctx, ln, handler, server.RunOptions{ShutdownTimeout: o.shutdownTimeout, Logger: log, Background: runPruner})
	if errors.Is(err, server.ErrShutdownTimeout) {
		return fmt.Errorf("in-flight requests did not finish within --shutdown-timeout %s; closed them", o.shutdownTimeout)
	}
	return err
}

// checkAddr refuses a listen address that cannot be one (no port, a port
// that is not a number or service name) before anything connects.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = net.LookupPort("tcp", port)
	}
	if err == nil && strings.ContainsAny(host, " /") {
		err = errors.New("invalid host")
	}
	if err != nil {
		return usageError{fmt.Errorf("--addr / $%s %q is not a listen address HOST:PORT (e.g. %s, or :8080 for every interface): %v",
			envAddr, addr, defaultAddr, err)}
	}
	return nil
}

// refuseUnmigrated runs the readiness check once at start and refuses to
// serve when migrations embedded in this binary are not applied: /readyz
// would answer 503 until someone migrates, so say now what to run. Other
// readiness failures (e.g. no SELECT on the version table) are logged and
// left to /readyz.
func refuseUnmigrated(ctx context.Context, ready func(context.Context) error, log *slog.Logger) error {
	err := ready(ctx)
	var nr *pgxstore.NotReadyError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &nr) && len(nr.Pending) > 0:
		return fmt.Errorf("the database is not migrated: %d %s embedded in this binary not yet applied "+
			"(first: %d), so serve would only answer 503. Apply them, with the same database URL, by running\n\n"+
			"    agentsessions migrate up --database-url \"$DATABASE_URL\"\n\n"+
			"(in a source checkout: make migrate), or start serve with --migrate to apply them at start "+
			"(needs a role allowed to run DDL)",
			len(nr.Pending), plural(len(nr.Pending), "migration"), nr.Pending[0])
	}
	log.Warn("the database is not ready yet; /readyz answers 503 until it is", slog.Any("error", err))
	return nil
}

// newLogger returns a slog logger writing format ("text" or "json") to w.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level must be debug, info, warn or error, got %q", level)}
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format must be text or json, got %q", format)}
}

// withCache runs the store's verified-session cache next to background.
// A cache that cannot start (no invalidation trigger) is logged and the
// service goes on uncached: every lookup then reaches the database.
func withCache(background func(context.Context), pg *pgxstore.Store, cfg pgxstore.CacheConfig, log *slog.Logger) func(context.Context) {
	return func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := pg.RunCache(ctx, cfg); err != nil {
				log.Error("verified-session cache not started; serving uncached", slog.Any("error", err))
			}
		})
		background(ctx)
		wg.Wait()
	}
}
