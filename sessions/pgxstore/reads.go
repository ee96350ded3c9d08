package pgxstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// read runs a query that changes nothing. Its attempts are rerun after
// serialization failures and after any broken connection (see retry):
// rerunning a read cannot change an outcome. Every query of this package
// that only reads goes through here; every statement that writes goes
// through write (writes.go).
func (p *Store) read(ctx context.Context, op string, attempt func() error) error {
	return p.retry(ctx, op, attempt)
}

// Get implements [Store]. While [Store.RunCache] runs, it answers
// from the cache when it can.
func (p *Store) Get(ctx context.Context, id string) (sessions.Session, bool, error) {
	c := p.cache.Load()
	if c == nil {
		return p.get(ctx, id)
	}
	s, ok, ticket := c.get(id)
	if ok {
		return s, true, nil
	}
	s, found, err := p.get(ctx, id)
	if found {
		c.fill(s, ticket)
	}
	return s, found, err
}

// getOne looks id up with one query of its own.
func (p *Store) getOne(ctx context.Context, id string) (s sessions.Session, found bool, err error) {
	err = p.read(ctx, "get", func() error {
		row, err := p.q.GetSession(ctx, id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // found stays false
		}
		if err != nil {
			return err
		}
		s, err = sessionFromRow(row)
		found = err == nil
		return err
	})
	return s, found, err
}

// ListAgent implements [sessions.AgentStore].
func (p *Store) ListAgent(ctx context.Context, agentID, kind string, now time.Time) (out []sessions.Session, err error) {
	err = p.read(ctx, "list", func() error {
		rows, err := p.q.ListAgentSessions(ctx, db.ListAgentSessionsParams{AgentID: agentID, Kind: kind, Now: now})
		if err != nil {
			return err
		}
		out = make([]sessions.Session, len(rows))
		for i, row := range rows {
			if out[i], err = sessionFromRow(row); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// AgentLimit implements [sessions.LimitStore].
func (p *Store) AgentLimit(ctx context.Context, agentID, kind string) (limit int, found bool, err error) {
	err = p.read(ctx, "get limit", func() error {
		n, err := p.q.GetAgentLimit(ctx, db.GetAgentLimitParams{AgentID: agentID, Kind: kind})
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		limit, found = int(n), err == nil
		return err
	})
	return limit, found, err
}

// AgentLimits implements [sessions.LimitStore].
func (p *Store) AgentLimits(ctx context.Context, kind string) (out []sessions.AgentLimitOverride, err error) {
	err = p.read(ctx, "list limits", func() error {
		rows, err := p.q.ListAgentLimits(ctx, kind)
		out = make([]sessions.AgentLimitOverride, len(rows))
		for i, r := range rows {
			out[i] = sessions.AgentLimitOverride{AgentID: r.AgentID, Limit: int(r.MaxSessions)}
		}
		return err
	})
	return out, err
}
