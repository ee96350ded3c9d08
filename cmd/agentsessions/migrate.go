package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/migrations"
)

func newMigrateCmd(opts *globalOpts) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, roll back or inspect the store's schema migrations",
		Long: "migrate runs the migrations embedded in this binary. It takes a database-wide advisory lock, " +
			"so several instances may run it at once.",
		Args: cobra.ArbitraryArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown migrate subcommand %q (want up, down, status or version)", args[0])}
			}
			return usageError{fmt.Errorf("migrate needs a subcommand: up, down, status or version")}
		},
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "up",
			Short: "Apply every pending migration",
			Args:  exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				return withProvider(cmd.Context(), opts, func(p *goose.Provider) error {
					res, err := p.Up(cmd.Context())
					printResults(cmd.OutOrStdout(), res)
					if err == nil && len(res) == 0 {
						fmt.Fprintln(cmd.OutOrStdout(), "no pending migrations")
					}
					return err
				})
			},
		},
		newMigrateDownCmd(opts),
		&cobra.Command{
			Use:   "status",
			Short: "List migrations and whether each is applied",
			Args:  exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				return withProvider(cmd.Context(), opts, func(p *goose.Provider) error {
					st, err := p.Status(cmd.Context())
					if err != nil {
						return err
					}
					w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "VERSION\tSTATE\tAPPLIED AT\tFILE")
					for _, s := range st {
						at := "-"
						if !s.AppliedAt.IsZero() {
							at = s.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
						}
						fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", s.Source.Version, s.State, at, s.Source.Path)
					}
					return w.Flush()
				})
			},
		},
		&cobra.Command{
			Use:   "version",
			Short: "Print the schema version the database is at",
			Args:  exactArgs(0),
			RunE: func(cmd *cobra.Command, _ []string) error {
				return withProvider(cmd.Context(), opts, func(p *goose.Provider) error {
					v, err := p.GetDBVersion(cmd.Context())
					if err != nil {
						return err
					}
					fmt.Fprintln(cmd.OutOrStdout(), v)
					return nil
				})
			},
		},
	)
	return cmd
}

func newMigrateDownCmd(opts *globalOpts) *cobra.Command {
	var to int64
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Roll back the latest migration, or down to --to VERSION (0 drops everything)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to < 0 {
				return usageError{fmt.Errorf("--to must be >= 0, got %d", to)}
			}
			return withProvider(cmd.Context(), opts, func(p *goose.Provider) error {
				if cmd.Flags().Changed("to") {
					res, err := p.DownTo(cmd.Context(), to)
					printResults(cmd.OutOrStdout(), res)
					return err
				}
				res, err := p.Down(cmd.Context())
				if res != nil {
					printResults(cmd.OutOrStdout(), []*goose.MigrationResult{res})
				}
				return err
			})
		},
	}
	cmd.Flags().Int64Var(&to, "to", 0, "roll back to this version instead of by one (0 removes all tables)")
	return cmd
}

func withProvider(ctx context.Context, opts *globalOpts, fn func(*goose.Provider) error) error {
	pool, err := opts.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := migrations.NewProvider(db)
	if err != nil {
		return err
	}
	return fn(p)
}

func printResults(w io.Writer, res []*goose.MigrationResult) {
	for _, r := range res {
		if r.Error != nil {
			continue // the returned error says it
		}
		fmt.Fprintf(w, "%-4s %s (%s)\n", r.Direction, r.Source.Path, r.Duration.Round(1e5))
	}
}
