// Command agentsessions operates an agentsessions PostgreSQL session store.
//
//	agentsessions migrate up|down|status|version [--database-url URL]
//	agentsessions prune [--batch-size N] [--database-url URL]
//
// The database URL defaults to $DATABASE_URL. Exit status: 0 on success, 1
// when the operation failed, 2 on a usage error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
)

// Exit statuses.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks errors in how the command was called.
type usageError struct{ error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the CLI with args and returns the exit status; tests call it
// in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "agentsessions:", err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "Run 'agentsessions --help' for usage.")
		return exitUsage
	}
	return exitError
}

type globalOpts struct {
	databaseURL string
}

func newRootCmd() *cobra.Command {
	opts := &globalOpts{}
	root := &cobra.Command{
		Use:           "agentsessions",
		Short:         "Operate an agentsessions session store",
		Long:          "agentsessions manages the PostgreSQL session store shared by every instance of an agent service.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	// The default is read at use, not shown in --help: it may hold a password.
	root.PersistentFlags().StringVar(&opts.databaseURL, "database-url", "",
		"PostgreSQL connection URL (default $DATABASE_URL)")
	root.AddCommand(newMigrateCmd(opts), newPruneCmd(opts))
	return root
}

// requireDatabaseURL returns the URL or a usage error saying how to give one.
func (o *globalOpts) requireDatabaseURL() (string, error) {
	if o.databaseURL == "" {
		o.databaseURL = os.Getenv("DATABASE_URL")
	}
	if o.databaseURL == "" {
		return "", usageError{errors.New("no database: pass --database-url or set DATABASE_URL " +
			"(e.g. postgres://postgres@127.0.0.1:5432/agentsessions?sslmode=disable)")}
	}
	return o.databaseURL, nil
}

// openPool connects to the database URL, checking it is reachable, so
// every command fails the same clear way when it is not.
func (o *globalOpts) openPool(ctx context.Context) (*pgxpool.Pool, error) {
	url, err := o.requireDatabaseURL()
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, usageError{fmt.Errorf("bad database url: %w", err)}
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot reach the database: %w", err)
	}
	return pool, nil
}

// exactArgs is cobra.ExactArgs reporting a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
