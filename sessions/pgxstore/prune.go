package pgxstore

import (
	"context"
	"log/slog"
	"time"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// PruneLockID is the default PostgreSQL advisory lock key that makes one
// pruner at a time, cluster-wide, do the work.
const PruneLockID int64 = 0x6167_656e_7470_726e // "agentprn"

// PruneConfig configures [Store.Prune] and [Store.RunPruner].
// The zero value gives the defaults.
type PruneConfig struct {
	// BatchSize is the most rows one DELETE removes. Small batches keep
	// each statement short. Default: 1000; at most 1<<20.
	BatchSize int

	// Interval is the wait between passes in RunPruner. Default: 1 minute.
	Interval time.Duration

	// Clock decides what has expired. Use the managers' clock. Default:
	// time.Now.
	Clock func() time.Time

	// LockID is the advisory lock key pruners take (pg_try_advisory_lock);
	// a pass that finds it held by another session skips. Default:
	// PruneLockID. Deployments sharing one database but not one table
	// should use different keys.
	LockID int64

	// IdleTimeout, when set, also deletes the agent sessions last used at
	// or before sessions.IdleDeleteCutoff(Clock(), IdleTimeout,
	// LastUseInterval): idle, with a margin of 2*LastUseInterval for the
	// uses instances have yet to write. Use the managers'
	// Config.IdleTimeout and Config.LastUseInterval.
	// Last use is not indexed (writing it is then a HOT update), so each
	// batch of idle rows scans the table until it has found them: a pass
	// reads the whole table once when nothing is idle. Default: 0, none.
	IdleTimeout time.Duration

	// LastUseInterval is the managers' Config.LastUseInterval. Default:
	// sessions.DefaultLastUseInterval(IdleTimeout), the managers' default.
	LastUseInterval time.Duration

	// OnPrune, if set, is called by RunPruner after every pass.
	OnPrune func(PruneResult, error)

	// Logger receives one record per RunPruner pass that deleted rows or
	// failed. Default: discards.
	Logger *slog.Logger
}

// PruneResult reports one prune pass.
type PruneResult struct {
	Deleted int64 // expired and idle rows removed
	Idle    int64 // of Deleted, rows removed for being idle (IdleTimeout)
	Batches int   // DELETE statements run
	Skipped bool  // another session held the prune lock; nothing was done
}

func (c PruneConfig) withDefaults() (PruneConfig, error) {
	switch {
	case c.BatchSize < 0 || c.BatchSize > 1<<20:
		return c, &sessions.ConfigError{Field: "PruneConfig.BatchSize", Reason: "must be between 0 (default) and 1048576"}
	case c.Interval < 0:
		return c, &sessions.ConfigError{Field: "PruneConfig.Interval", Reason: "must not be negative"}
	case c.IdleTimeout < 0 || c.LastUseInterval < 0:
		return c, &sessions.ConfigError{Field: "PruneConfig.IdleTimeout", Reason: "IdleTimeout and LastUseInterval must not be negative (0: none, default)"}
	}
	if c.BatchSize == 0 {
		c.BatchSize = 1000
	}
	if c.Interval == 0 {
		c.Interval = time.Minute
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.LockID == 0 {
		c.LockID = PruneLockID
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Prune deletes every session that expired at or before cfg.Clock(), in
// batches of cfg.BatchSize, unless another session holds the prune lock, in
// which case it returns at once with Skipped set.
func (p *Store) Prune(ctx context.Context, cfg PruneConfig) (PruneResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return PruneResult{}, err
	}
	return p.prune(ctx, cfg)
}

func (p *Store) prune(ctx context.Context, cfg PruneConfig) (res PruneResult, err error) {
	if obs := p.cfg.Observer; obs != nil {
		var end func(PruneResult, error)
		ctx, end = obs.Prune(ctx)
		defer func() { end(res, err) }()
	}
	// A session-level lock lives on one connection: hold that connection
	// for the whole pass.
	conn, err := p.pruneSession(ctx)
	if err != nil {
		return res, p.wrap(ctx, "prune", err)
	}
	defer conn.release(ctx)
	q := db.New(conn.dbtx())
	locked, err := q.TryAdvisoryLock(ctx, cfg.LockID)
	if err != nil {
		return res, p.wrap(ctx, "prune", err)
	}
	if !locked {
		return PruneResult{Skipped: true}, nil
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := q.AdvisoryUnlock(uctx, cfg.LockID); uerr != nil {
			// Never return a connection that may still hold the lock to
			// the pool: closing it releases the lock server-side.
			_ = conn.conn().Close(uctx)
		}
	}()
	now := cfg.Clock()
	// Batches until one finds nothing: a short batch does not mean the
	// rest is gone, since rows an issue deleted (its agent's expired ones)
	// while the batch waited on them are skipped, not replaced. Each run
	// ends: its cutoff is fixed, so the rows it can find only dwindle.
	drain := func(batch func() (int64, error)) (deleted int64, err error) {
		for {
			n, err := batch()
			if err != nil {
				return deleted, p.wrap(ctx, "prune", err)
			}
			deleted += n
			res.Batches++
			if n == 0 {
				return deleted, nil
			}
		}
	}
	res.Deleted, err = drain(func() (int64, error) {
		return q.DeleteExpiredBatch(ctx, db.DeleteExpiredBatchParams{Now: now, BatchSize: int32(cfg.BatchSize)})
	})
	if err != nil || cfg.IdleTimeout <= 0 {
		return res, err
	}
	cutoff := sessions.IdleDeleteCutoff(now, cfg.IdleTimeout, cfg.LastUseInterval)
	res.Idle, err = drain(func() (int64, error) {
		return q.DeleteIdleBatch(ctx, db.DeleteIdleBatchParams{Cutoff: cutoff, BatchSize: int32(cfg.BatchSize)})
	})
	res.Deleted += res.Idle
	return res, err
}

// RunPruner prunes every cfg.Interval until ctx ends, then returns nil.
// Run it in every instance: the lock makes one of them do each pass. Pass
// failures (database down) are reported through OnPrune and the logger, and
// the next pass runs on schedule.
//
// Behind a pooler in transaction mode, without [Config].DirectDatabaseURL,
// every pass fails with a [sessions.ConfigError] saying so, rather than
// leave the lock behind on one of the pooler's server connections.
func (p *Store) RunPruner(ctx context.Context, cfg PruneConfig) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		res, err := p.prune(ctx, cfg)
		if ctx.Err() != nil {
			return nil
		}
		if cfg.OnPrune != nil {
			cfg.OnPrune(res, err)
		}
		switch {
		case err != nil:
			cfg.Logger.WarnContext(ctx, "sessions: prune failed", slog.Any("error", err))
		case res.Deleted > 0:
			cfg.Logger.InfoContext(ctx, "sessions: pruned expired sessions", slog.Int64("deleted", res.Deleted), slog.Int("batches", res.Batches))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
