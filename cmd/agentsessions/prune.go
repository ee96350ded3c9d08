package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

func newPruneCmd(opts *globalOpts) *cobra.Command {
	var batch int
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Delete expired sessions once (for cron); skips if another instance is pruning",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if batch < 1 || batch > 1<<20 {
				return usageError{fmt.Errorf("--batch-size must be between 1 and %d, got %d", 1<<20, batch)}
			}
			ctx := cmd.Context()
			pool, err := opts.openPool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			store, err := pgxstore.New(pool, nil)
			if err != nil {
				return err
			}
			res, err := store.Prune(ctx, pgxstore.PruneConfig{BatchSize: batch})
			if err != nil {
				return err
			}
			if res.Skipped {
				fmt.Fprintln(cmd.OutOrStdout(), "skipped: another instance holds the prune lock")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %d expired sessions in %d batches\n", res.Deleted, res.Batches)
			return nil
		},
	}
	cmd.Flags().IntVar(&batch, "batch-size", 1000, "rows per DELETE statement")
	return cmd
}
