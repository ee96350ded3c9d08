// Command agentsessions operates an agentsessions session store and serves
// its HTTP API.
//
//	agentsessions migrate up|down|status|version
//	agentsessions prune [--batch-size N]
//	agentsessions issue --agent A [--metadata k=v ...]
//	agentsessions verify [--agent A] --token T|-
//	agentsessions refresh --agent A --token T|-
//	agentsessions revoke --session ID | --agent A
//	agentsessions list --agent A
//	agentsessions limits set --agent A --limit N | get --agent A | delete --agent A | list
//	agentsessions serve [--addr 127.0.0.1:8080]
//	agentsessions bench [--compare] ...
//
// The database URL comes from --database-url, else $DATABASE_URL. The
// signing secret comes from --secret-file PATH, else $AGENTSESSIONS_SECRET,
// never from a flag value; verify-only secrets (rotation, SECURITY.md) from
// --verify-secret-file PATH, repeatable. Files are read with
// sessions.LoadSecretFile. Commands that print data take --json. Exit
// status: 0 on success, 1 when the operation failed (including a rejected
// token), 2 on a usage error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
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
	ctx, stop := signalContext()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// signalContext returns a context that ends on the first SIGINT or
// SIGTERM: serve then drains and exits 0, other commands stop their
// database calls. The signals' default action is restored as soon as the
// first arrives, so a second one kills the process at once.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

// run executes the CLI with args and returns the exit status; tests call it
// in-process. Standard input is the process's.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runIO(ctx, args, os.Stdin, stdout, stderr)
}

// runIO is run with the standard input given (read by --token -).
func runIO(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "agentsessions:", err)
	var ue usageError
	// cobra reports an unknown subcommand with a plain error.
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command ") {
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
		Use:   "agentsessions",
		Short: "Operate an agentsessions session store",
		Long: "agentsessions issues, checks and revokes AI-agent sessions in the PostgreSQL store shared by every " +
			"instance of an agent service, manages its schema and per-agent limits, and serves it over HTTP (serve).\n\n" +
			"Database: --database-url or $DATABASE_URL. Signing secret: --secret-file or $AGENTSESSIONS_SECRET " +
			"(never a flag value). Exit status: 0 ok, 1 failed (including a rejected token), 2 usage error.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{flagHint(cmd, err)} })
	// The default is read at use, not shown in --help: it may hold a password.
	root.PersistentFlags().StringVar(&opts.databaseURL, "database-url", "",
		"PostgreSQL connection URL (default $DATABASE_URL)")
	root.AddCommand(newMigrateCmd(opts), newPruneCmd(opts),
		newIssueCmd(opts), newVerifyCmd(opts), newRefreshCmd(opts), newRevokeCmd(opts), newRevokeOthersCmd(opts), newListCmd(opts),
		newLimitsCmd(opts), newServeCmd(opts), newBenchCmd(opts))
	return root
}

// secretFlagHints maps flags a user may guess for passing a secret to the
// file flag (and environment variable) the command takes instead.
var secretFlagHints = map[string]struct{ fileFlag, env string }{
	"secret":          {"secret-file", envSecret},
	"secret-key":      {"secret-file", envSecret},
	"signing-secret":  {"secret-file", envSecret},
	"previous-secret": {"verify-secret-file", ""},
	"verify-secret":   {"verify-secret-file", ""},
	"admin-key":       {"admin-key-file", envAdminKey},
}

// flagHint adds to cobra's "unknown flag: --secret" the flag to use
// instead, when the command has it: secrets are read from files or the
// environment, never from flag values.
func flagHint(cmd *cobra.Command, err error) error {
	name, ok := strings.CutPrefix(err.Error(), "unknown flag: --")
	if !ok {
		return err
	}
	h, ok := secretFlagHints[name]
	if !ok || cmd.Flags().Lookup(h.fileFlag) == nil {
		return err
	}
	how := "--" + h.fileFlag + " PATH"
	if h.env != "" {
		how += " or set $" + h.env
	}
	return fmt.Errorf("%w: secrets are never given as flag values (they would show in ps and shell history); "+
		"put it in a file readable only by you (chmod 600) and pass %s", err, how)
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
	return o.openPoolWith(ctx, nil)
}

// openPoolWith is openPool with configure, if not nil, applied to the
// parsed pool config first (serve sets its query tracer there).
func (o *globalOpts) openPoolWith(ctx context.Context, configure func(*pgxpool.Config)) (*pgxpool.Pool, error) {
	url, err := o.requireDatabaseURL()
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, usageError{fmt.Errorf("bad database url: %w", err)}
	}
	if configure != nil {
		configure(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
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
