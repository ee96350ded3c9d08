package pgxstore

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// Import stores sessions in bulk with one COPY and sets their agents'
// count rows from what is then stored, in one transaction: for moving
// sessions from another store, restoring them, or filling a benchmark.
// It checks no limit and evicts nothing, so the caller must not import
// more sessions for an agent than its limit; and it is refused (a
// StoreError) if any session's ID is already stored. Metadata is not
// imported; LastUsedAt is. It returns how many rows it stored.
func (p *Store) Import(ctx context.Context, ss []sessions.Session) (n int64, err error) {
	agents := make([]string, 0, len(ss))
	for _, s := range ss {
		agents = append(agents, s.AgentID)
	}
	slices.Sort(agents)
	agents = slices.Compact(agents)
	err = p.write(ctx, "import", onceSent, func() (touched, error) {
		return touched{}, pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
			src := pgx.CopyFromSlice(len(ss), func(i int) ([]any, error) {
				s := ss[i]
				kind := s.Kind
				if kind == "" {
					kind = sessions.KindSession
				}
				var lastUsed *time.Time // NULL: last used when issued
				if s.LastUsedAt.After(s.IssuedAt) {
					lastUsed = &s.LastUsedAt
				}
				return []any{s.ID, s.AgentID, kind, s.IssuedAt, s.ExpiresAt, s.TokenDigest, lastUsed}, nil
			})
			var err error
			n, err = tx.CopyFrom(ctx, pgx.Identifier{"agent_sessions"},
				[]string{"id", "agent_id", "kind", "issued_at", "expires_at", "token_digest", "last_used_at"}, src)
			if err != nil {
				return fmt.Errorf("copy: %w", err)
			}
			// The count rows, in the same transaction: agent_session_counts
			// is kept in step with every write of agent_sessions.
			return db.New(tx).RecountAgents(ctx, agents)
		})
	})
	return n, err
}
