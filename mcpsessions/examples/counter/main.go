// Command counter is an example MCP server (go-sdk, Stateless, protocol
// 2026-07-28) keeping cross-call state in state handles: create_counter
// returns a counter ID, increment and read take it, list_counters and
// destroy_counter manage the caller's counters. Run any number of copies
// behind a plain load balancer: the handles and the values are in
// PostgreSQL, and each copy listens for handle events to delete the values
// of destroyed or expired counters.
//
// Usage:
//
//	export DATABASE_URL=postgres://... AGENTSESSIONS_SECRET=...   # the same for every copy
//	counter -addr :8080
//
// Clients send "Authorization: Bearer <token>" with a token issued to their
// agent (agentsessions issue --agent AGENT); each agent sees only its own
// counters, at most -limit at once (per agent, across every copy; override
// per agent with agentsessions limits set --agent AGENT --kind counter
// --limit N).
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsessions/agentsessions/mcpsessions/gosdkauth"
	"github.com/agentsessions/agentsessions/migrations"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	ttl := flag.Duration("ttl", time.Hour, "how long a counter lives")
	limit := flag.Int("limit", 10, "most counters one agent holds at once")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, *ttl, *limit, log); err != nil {
		log.Error("counter", slog.Any("error", err))
		os.Exit(1)
	}
}

func run(addr string, ttl time.Duration, limit int, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	secret := os.Getenv("AGENTSESSIONS_SECRET")
	if secret == "" {
		return errors.New("set AGENTSESSIONS_SECRET (the same on every copy)")
	}
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := migrations.Up(ctx, pool); err != nil {
		return err
	}
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		return err
	}
	handler, counters, err := newInstance(ctx, pool, store, []byte(secret), sessions.HandleKind{Name: Kind, TTL: ttl, Limit: limit}, log)
	if err != nil {
		return err
	}
	go func() {
		if err := store.RunHandleEvents(ctx, pgxstore.HandleEventsConfig{
			OnEvent: counters.OnEvent(ctx), Kinds: []string{Kind}, Logger: log,
		}); err != nil {
			log.Error("handle events", slog.Any("error", err))
			stop()
		}
	}()
	go func() { _ = store.RunPruner(ctx, pgxstore.PruneConfig{Interval: time.Minute, Logger: log}) }()

	srv := &http.Server{Addr: addr, Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Info("counter: serving MCP", slog.String("addr", addr))
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// newInstance wires one copy of the server on store: its manager, the
// counter handles, the MCP server behind gosdkauth.RequireBearerToken. The
// caller runs store.RunHandleEvents with counters.OnEvent.
func newInstance(ctx context.Context, pool *pgxpool.Pool, store *pgxstore.Store, secret []byte, kind sessions.HandleKind,
	log *slog.Logger) (http.Handler, *Counters, error) {
	mgr, err := sessions.New(store, sessions.Config{Secret: secret, TTL: 24 * time.Hour, Limit: 100})
	if err != nil {
		return nil, nil, err
	}
	h, err := sessions.NewHandles(mgr, kind)
	if err != nil {
		return nil, nil, err
	}
	counters, err := NewCounters(ctx, pool, h, log)
	if err != nil {
		return nil, nil, err
	}
	s, err := counters.Server()
	if err != nil {
		return nil, nil, err
	}
	requireToken, err := gosdkauth.RequireBearerToken(mgr, gosdkauth.Options{})
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", requireToken(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s },
		&mcp.StreamableHTTPOptions{Stateless: true})))
	return mux, counters, nil
}
