package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// DefaultShutdownTimeout is [RunOptions.ShutdownTimeout]'s default.
const DefaultShutdownTimeout = 15 * time.Second

// ErrShutdownTimeout is returned by [Run] when in-flight requests were
// still running when the shutdown timeout ended; they were then cut off.
var ErrShutdownTimeout = errors.New("server: in-flight requests did not finish within the shutdown timeout")

// RunOptions configures [Run]. The zero value gives the defaults.
type RunOptions struct {
	// ShutdownTimeout is how long Run waits for in-flight requests once
	// ctx ends. Default: DefaultShutdownTimeout (15s).
	ShutdownTimeout time.Duration

	// Logger receives start, shutdown and http.Server error records.
	// Default: discards.
	Logger *slog.Logger

	// Background, if set, runs in its own goroutine while the server
	// serves (e.g. the pruner). Its context ends after the in-flight
	// requests have drained, and Run waits for it to return.
	Background func(context.Context)
}

// Run serves h on ln until ctx ends, then shuts down gracefully: it stops
// accepting connections, closes idle ones, and waits up to
// ShutdownTimeout for in-flight requests to finish. Ending ctx does not
// cancel the requests being drained: each keeps its own context. Run
// closes ln. It returns nil after a clean shutdown, an error matching
// ErrShutdownTimeout when requests had to be cut off, or the error that
// made the server stop serving.
//
// The http.Server has conservative timeouts: 5s to read headers, 15s to
// read a request, 30s to write a response, 60s idle, 64 KiB of headers.
func Run(ctx context.Context, ln net.Listener, h http.Handler, opts RunOptions) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := opts.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if opts.Background != nil {
		bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() {
			defer close(done)
			opts.Background(bgCtx)
		}()
		defer func() {
			stopBackground()
			<-done
		}()
	}

	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("server: http: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: no new connections; draining in-flight requests", "timeout", timeout)
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		_ = hs.Close()
		<-served
		return fmt.Errorf("%w (%s); closed them", ErrShutdownTimeout, timeout)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("server: http: %w", err)
	}
	log.Info("stopped")
	return nil
}
