package sessions

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
)

// unsupported is the error for a manager feature its store lacks.
func unsupported(iface string) error {
	return fmt.Errorf("%w: the store does not implement sessions.%s: %w", ErrInvalidConfig, iface, errors.ErrUnsupported)
}

// List returns the agent's live sessions (not its state handles; not
// those an idle timeout ended), oldest first: by issue time, which has whole-second resolution, then by ID. It
// needs an [AgentStore].
func (m *Manager) List(ctx context.Context, agentID string) ([]Session, error) {
	as, ok := m.store.(AgentStore)
	if !ok {
		return nil, unsupported("AgentStore")
	}
	if err := ValidateAgentID(agentID); err != nil {
		return nil, err
	}
	now, err := m.now()
	if err != nil {
		return nil, err
	}
	out, err := as.ListAgent(ctx, agentID, KindSession, unixTime(now))
	if err != nil {
		return nil, storeErr("list", err)
	}
	return m.liveByUse(out, now), nil
}

// RevokeAgent revokes every session of the agent ("log out everywhere")
// and returns how many it deleted, expired ones included. The agent's
// state handles ([Handles]) are not sessions and are left alone. It needs an
// [AgentStore]. A session issued concurrently may survive: call it again
// after stopping issuance if that matters.
func (m *Manager) RevokeAgent(ctx context.Context, agentID string) (int, error) {
	if m.obs.obs == nil {
		return m.revokeAgent(ctx, agentID)
	}
	ctx, end := m.obs.start(ctx, OpRevokeAgent, KindSession, agentID)
	n, err := m.revokeAgent(ctx, agentID)
	end(err)
	return n, err
}

func (m *Manager) revokeAgent(ctx context.Context, agentID string) (int, error) {
	as, ok := m.store.(AgentStore)
	if !ok {
		return 0, unsupported("AgentStore")
	}
	if err := ValidateAgentID(agentID); err != nil {
		return 0, err
	}
	n, err := as.DeleteAgent(ctx, agentID, KindSession, "")
	if err != nil {
		return 0, storeErr("delete agent", err)
	}
	return n, nil
}

// RevokeOtherSessions revokes every session of the agent except the one
// token belongs to ("log out my other sessions") and returns how many it
// deleted, expired ones included. token is checked exactly as
// Authenticate checks it, so only the holder of a live session can do
// this, and only for its own agent; the agent's state handles are left
// alone. A session issued concurrently may survive, as with RevokeAgent.
// It needs an [AgentStore].
func (m *Manager) RevokeOtherSessions(ctx context.Context, token, agentID string) (int, error) {
	if m.obs.obs == nil {
		return m.revokeOthers(ctx, token, agentID)
	}
	ctx, end := m.obs.start(ctx, OpRevokeOthers, KindSession, agentID)
	n, err := m.revokeOthers(ctx, token, agentID)
	end(err)
	return n, err
}

func (m *Manager) revokeOthers(ctx context.Context, token, agentID string) (int, error) {
	as, ok := m.store.(AgentStore)
	if !ok {
		return 0, unsupported("AgentStore")
	}
	if err := ValidateAgentID(agentID); err != nil {
		return 0, err
	}
	s, _, err := m.authenticate(ctx, token, &agentID)
	if err != nil {
		return 0, err
	}
	n, err := as.DeleteAgent(ctx, agentID, KindSession, s.ID)
	if err != nil {
		return 0, storeErr("delete agent", err)
	}
	return n, nil
}

// Refresh extends a live session (sliding expiry) and returns a new token
// for the same session ID. The token carries its expiry, so extending a
// session means re-issuing its token: the new expiry is now+TTL, capped at
// IssuedAt+MaxLifetime, and from then on only the new token is accepted.
// The old one fails with [ReasonDigestMismatch] (or [ReasonMetadataMismatch])
// like any superseded token; of two concurrent refreshes of one token
// exactly one succeeds.
//
// token is checked exactly as Authenticate checks it. A session already at
// the end of its lifetime gives [ErrLifetimeExceeded]; a refresh within
// the same second as the token's expiry was set returns the token
// unchanged, unless it was signed with a previous secret. Refresh needs a [RefreshStore].
func (m *Manager) Refresh(ctx context.Context, token, agentID string) (Issued, error) {
	if m.obs.obs == nil {
		return m.refresh(ctx, token, agentID)
	}
	ctx, end := m.obs.start(ctx, OpRefresh, KindSession, agentID)
	iss, err := m.refresh(ctx, token, agentID)
	end(err)
	return iss, err
}

func (m *Manager) refresh(ctx context.Context, token, agentID string) (Issued, error) {
	rs, ok := m.store.(RefreshStore)
	if !ok {
		return Issued{}, unsupported("RefreshStore")
	}
	if err := ValidateAgentID(agentID); err != nil {
		return Issued{}, err
	}
	s, now, err := m.authenticate(ctx, token, &agentID)
	if err != nil {
		return Issued{}, err
	}
	exp, err := m.refreshedExpiry(s, now)
	if err != nil {
		return Issued{}, err
	}
	newToken, ns := m.sign(s, exp)
	if newToken == token {
		// Same second, same secret: nothing to extend. A token signed with
		// a previous secret is still re-signed below.
		return Issued{Token: token, Session: s}, nil
	}
	extended, err := rs.Extend(ctx, s.ID, s.TokenDigest, ns.ExpiresAt, ns.TokenDigest, unixTime(now))
	if err != nil {
		return Issued{}, storeErr("extend", err)
	}
	if !extended {
		// Revoked, expired or refreshed by someone else since we looked.
		return Issued{}, m.deny(ctx, ReasonDigestMismatch)
	}
	return Issued{Token: newToken, Session: ns}, nil
}

// refreshedExpiry returns min(now+TTL, IssuedAt+MaxLifetime), never less
// than the current expiry.
func (m *Manager) refreshedExpiry(s Session, now uint64) (uint64, error) {
	exp, ok := slidExpiry(s, now, m.ttl, m.maxLifetime)
	if !ok {
		return 0, fmt.Errorf("%w: session %s expires at the end of its %s lifetime", ErrLifetimeExceeded, s.ID, m.cfg.MaxLifetime)
	}
	return exp, nil
}

// slidExpiry is the expiry a refresh at now gives s: min(now+ttl,
// IssuedAt+maxLifetime) in whole seconds, never before its current
// expiry nor past maxExpiry. ok is false when s already expires at the
// end of its lifetime.
func slidExpiry(s Session, now, ttl, maxLifetime uint64) (exp uint64, ok bool) {
	cur := uint64(s.ExpiresAt.Unix())
	issued := uint64(max(s.IssuedAt.Unix(), 0))
	limit := min(issued+min(maxLifetime, maxExpiry-issued), maxExpiry)
	if cur >= limit {
		return 0, false
	}
	return max(cur, min(now+min(ttl, maxExpiry-now), limit)), true
}

// AgentLimit is an agent's effective session limit.
type AgentLimit struct {
	Limit    int  // the override if there is one, else Config.Limit
	Override bool // whether Limit comes from a per-agent override
}

// AgentLimit returns the limit Issue applies to the agent. It needs a
// [LimitStore].
func (m *Manager) AgentLimit(ctx context.Context, agentID string) (AgentLimit, error) {
	ls, err := m.limitStore(agentID)
	if err != nil {
		return AgentLimit{}, err
	}
	n, found, err := ls.AgentLimit(ctx, agentID, KindSession)
	if err != nil {
		return AgentLimit{}, storeErr("get limit", err)
	}
	if !found {
		return AgentLimit{Limit: m.cfg.Limit}, nil
	}
	return AgentLimit{Limit: n, Override: true}, nil
}

// SetAgentLimit overrides Config.Limit for one agent, for every manager
// sharing the store. Lowering a limit revokes nothing: the agent simply
// cannot issue until it is under the new limit (or, under
// PolicyEvictOldest, its next Issue evicts down to it). It fails with
// [ErrInvalidLimit] unless 1 <= limit <= 2^31-1. It needs a [LimitStore].
func (m *Manager) SetAgentLimit(ctx context.Context, agentID string, limit int) error {
	ls, err := m.limitStore(agentID)
	if err != nil {
		return err
	}
	if err := validLimit(limit); err != nil {
		return err
	}
	if err := ls.SetAgentLimit(ctx, agentID, KindSession, limit); err != nil {
		return storeErr("set limit", err)
	}
	m.cfg.Logger.InfoContext(ctx, "sessions: agent limit set", slog.String("agent_id", agentID), slog.Int("limit", limit))
	return nil
}

// DeleteAgentLimit removes the agent's override, so Config.Limit applies
// again, and reports whether there was one. It needs a [LimitStore].
func (m *Manager) DeleteAgentLimit(ctx context.Context, agentID string) (bool, error) {
	ls, err := m.limitStore(agentID)
	if err != nil {
		return false, err
	}
	found, err := ls.DeleteAgentLimit(ctx, agentID, KindSession)
	if err != nil {
		return false, storeErr("delete limit", err)
	}
	return found, nil
}

// ListAgentLimits returns every per-agent override, ordered by agent ID.
// It needs a [LimitStore].
func (m *Manager) ListAgentLimits(ctx context.Context) ([]AgentLimitOverride, error) {
	ls, ok := m.store.(LimitStore)
	if !ok {
		return nil, unsupported("LimitStore")
	}
	out, err := ls.AgentLimits(ctx, KindSession)
	if err != nil {
		return nil, storeErr("list limits", err)
	}
	return out, nil
}

func (m *Manager) limitStore(agentID string) (LimitStore, error) {
	ls, ok := m.store.(LimitStore)
	if !ok {
		return nil, unsupported("LimitStore")
	}
	return ls, ValidateAgentID(agentID)
}

func validLimit(limit int) error {
	if limit < 1 || limit > math.MaxInt32 {
		return fmt.Errorf("%w: %d is not in [1, %d]", ErrInvalidLimit, limit, math.MaxInt32)
	}
	return nil
}
