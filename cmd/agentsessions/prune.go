package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

func newPruneCmd(opts *globalOpts) *cobra.Command {
	var (
		batch int
		idle  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Delete expired (and, with --idle-timeout, idle) sessions once (for cron); skips if another instance is pruning",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if batch < 1 || batch > 1<<20 {
				return usageError{fmt.Errorf("--batch-size must be between 1 and %d, got %d", 1<<20, batch)}
			}
			if idle < 0 {
				return usageError{fmt.Errorf("--idle-timeout must be 0 (off) or positive, got %s", idle)}
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
			res, err := store.Prune(ctx, pgxstore.PruneConfig{BatchSize: batch, IdleTimeout: idle})
			if err != nil {
				return err
			}
			if res.Skipped {
				fmt.Fprintln(cmd.OutOrStdout(), "skipped: another instance holds the prune lock")
				return nil
			}
			if idle > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "deleted %d expired and %d idle sessions in %d batches\n", res.Deleted-res.Idle, res.Idle, res.Batches)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %d expired sessions in %d batches\n", res.Deleted, res.Batches)
			return nil
		},
	}
	cmd.Flags().IntVar(&batch, "batch-size", 1000, "rows per DELETE statement")
	cmd.Flags().DurationVar(&idle, "idle-timeout", 0, "also delete sessions not used for this long (the instances' --idle-timeout); 0: expired ones only")
	return cmd
}
