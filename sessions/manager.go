package sessions

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"time"
)

// Manager issues, authenticates and revokes agent sessions on a [Store]. It
// is safe for concurrent use. Every manager sharing a store (and a secret)
// sees the same sessions, and the per-agent limit holds across all of them.
type Manager struct {
	store       Store
	cfg         Config
	verify      [][]byte // cfg.VerifySecrets then cfg.PreviousSecrets
	ttl         uint64   // whole seconds
	maxLifetime uint64   // whole seconds
	obs         observer

	uses      *useLog // set when the store is a TouchStore
	trackUses bool    // sessions' uses are recorded: IdleTimeout or PolicyEvictLeastRecentlyUsed
	idle      uint64  // IdleTimeout in whole seconds, 0 for none
}

// Issued is a freshly issued (or refreshed) session and the token to hand
// to the agent. The token is the only copy: the store keeps its digest.
type Issued struct {
	Token   string
	Session Session

	// Evicted lists the sessions Issue revoked to make room under
	// PolicyEvictOldest; empty otherwise.
	Evicted []string
}

// New returns a manager on store. It returns an error matching
// [ErrInvalidConfig] when store is nil, Secret is empty, TTL is under one
// second, or Limit is under 1. A Secret (or verify-only secret) shorter
// than [RecommendedSecretSize] is accepted but logged as a warning through
// Config.Logger.
func New(store Store, cfg Config) (*Manager, error) {
	if store == nil {
		return nil, &ConfigError{Field: "store", Reason: "must not be nil"}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	warnShortSecrets(cfg)
	m := &Manager{
		store:       store,
		cfg:         cfg,
		verify:      cfg.verifySecrets(),
		ttl:         uint64(cfg.TTL / time.Second),
		maxLifetime: uint64(cfg.MaxLifetime / time.Second),
		obs:         newObserver(cfg.Observer),
		trackUses:   cfg.IdleTimeout > 0 || cfg.Policy == PolicyEvictLeastRecentlyUsed,
		idle:        uint64(cfg.IdleTimeout / time.Second),
	}
	if ts, ok := store.(TouchStore); ok {
		m.uses = newUseLog(ts, cfg.LastUseInterval, cfg.Logger, cfg.Policy == PolicyEvictLeastRecentlyUsed)
	} else if m.trackUses {
		return nil, &ConfigError{Field: "store", Reason: "does not implement sessions.TouchStore, which IdleTimeout and " +
			"PolicyEvictLeastRecentlyUsed need to record last uses (MemoryStore and pgxstore.Store do)"}
	}
	return m, nil
}

// warnShortSecrets logs a warning for each secret shorter than
// [RecommendedSecretSize]. It logs lengths, never secrets.
func warnShortSecrets(cfg Config) {
	warn := func(field string, n int) {
		cfg.Logger.Warn("sessions: a secret is shorter than recommended; use at least 32 random bytes "+
			"(head -c 32 /dev/urandom | base64)",
			slog.String("field", field), slog.Int("bytes", n), slog.Int("recommended_bytes", RecommendedSecretSize))
	}
	if len(cfg.Secret) < RecommendedSecretSize {
		warn("Secret", len(cfg.Secret))
	}
	for i, s := range cfg.VerifySecrets {
		if len(s) < RecommendedSecretSize {
			warn(fmt.Sprintf("VerifySecrets[%d]", i), len(s))
		}
	}
	for i, s := range cfg.PreviousSecrets {
		if len(s) < RecommendedSecretSize {
			warn(fmt.Sprintf("PreviousSecrets[%d]", i), len(s))
		}
	}
}

// Issue creates a session for agentID and returns it with its token. At
// the agent's limit (its override, else Config.Limit) it fails with a
// [LimitError] under PolicyReject, and revokes the oldest sessions to make
// room under PolicyEvictOldest (PolicyEvictLeastRecentlyUsed: the least
// recently used). It fails with [ErrInvalidAgentID] for a
// malformed agent ID, [ErrInvalidMetadata] for bad [WithMetadata] input,
// and a [StoreError] when the store fails. After a StoreError the session
// is normally not stored; only if the connection broke while COMMIT was in
// flight may it have been, and then its token was never handed out, so it
// merely holds one of the agent's slots until it expires (the limit errs
// on the safe side).
//
// Unlike the reference, Issue and Authenticate validate agentID first
// ([ValidateAgentID]), before any token check.
func (m *Manager) Issue(ctx context.Context, agentID string, opts ...IssueOption) (Issued, error) {
	if m.obs.obs == nil {
		return m.issue(ctx, agentID, opts)
	}
	ctx, end := m.obs.start(ctx, OpIssue, KindSession, agentID)
	iss, err := m.issue(ctx, agentID, opts)
	end(err)
	return iss, err
}

func (m *Manager) issue(ctx context.Context, agentID string, opts []IssueOption) (Issued, error) {
	var o issueOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := ValidateAgentID(agentID); err != nil {
		return Issued{}, err
	}
	if _, err := encodeMetadata(o.metadata); err != nil {
		return Issued{}, err
	}
	now, err := m.now()
	if err != nil {
		return Issued{}, err
	}
	sid, err := m.newID()
	if err != nil {
		return Issued{}, err
	}
	// now first: past maxExpiry, maxExpiry-now would wrap around.
	if now > maxExpiry {
		return Issued{}, &ConfigError{Field: "Clock", Reason: "reads past 9999-12-31T23:59:59Z, the latest expiry a session can have"}
	}
	if m.ttl > maxExpiry-now {
		return Issued{}, &ConfigError{Field: "TTL", Reason: "overflows the latest representable expiry (9999-12-31T23:59:59Z) at the current time"}
	}
	token, s := m.sign(Session{ID: sid, AgentID: agentID, Kind: KindSession, IssuedAt: unixTime(now), LastUsedAt: unixTime(now), Metadata: maps.Clone(o.metadata)}, now+m.ttl)
	res, err := m.store.Insert(ctx, s, m.insertRequest(agentID, now))
	if err != nil {
		m.cfg.Logger.WarnContext(ctx, "sessions: issue failed", slog.String("agent_id", agentID), slog.Any("error", err))
		return Issued{}, storeErr("insert", err)
	}
	if !res.Inserted {
		m.cfg.Logger.DebugContext(ctx, "sessions: limit reached", slog.String("agent_id", agentID), slog.Int("limit", res.Limit))
		return Issued{}, &LimitError{AgentID: agentID, Limit: res.Limit}
	}
	if len(res.Evicted) > 0 {
		m.cfg.Logger.InfoContext(ctx, "sessions: evicted oldest sessions", slog.String("agent_id", agentID), slog.Int("evicted", len(res.Evicted)))
	}
	return Issued{Token: token, Session: s, Evicted: res.Evicted}, nil
}

// sign returns the token for s expiring at exp, and s with its expiry and
// digest set.
func (m *Manager) sign(s Session, exp uint64) (string, Session) {
	token := encodeToken(m.cfg.Secret, payload{SID: s.ID, AID: s.AgentID, Exp: exp})
	s.ExpiresAt = unixTime(exp)
	s.TokenDigest = tokenDigest(token)
	return token, s
}

// Authenticate checks token for agentID and returns its session. Checks run
// in the reference's order, cheapest first, and no store call is made
// until the signature has been verified:
//
//  1. length and shape ([ErrInvalidTokenFormat]), signature
//     ([ErrInvalidSignature]), payload ([ErrInvalidTokenFormat]);
//  2. the token's agent is agentID ([ReasonAgentMismatch]);
//  3. not expired by the manager's clock ([ErrSessionExpired]; the session
//     is deleted from the store if it really expired or this token is its
//     current one, so a stale token of a refreshed session deletes nothing);
//  4. the session is in the store ([ReasonUnknownSession]) with the
//     token's agent and expiry ([ReasonMetadataMismatch]) and the token's
//     digest ([ReasonDigestMismatch], compared in constant time);
//  5. under Config.IdleTimeout, it was used within the timeout
//     ([ErrSessionIdle]). The use is recorded (see Config.IdleTimeout).
//
// When the store fails the result is a [StoreError], never a session: it
// fails closed.
func (m *Manager) Authenticate(ctx context.Context, token, agentID string) (Session, error) {
	if m.obs.obs == nil {
		return m.authenticateAgent(ctx, token, agentID)
	}
	ctx, end := m.obs.start(ctx, OpAuthenticate, KindSession, agentID)
	s, err := m.authenticateAgent(ctx, token, agentID)
	end(err)
	return s, err
}

func (m *Manager) authenticateAgent(ctx context.Context, token, agentID string) (Session, error) {
	if err := ValidateAgentID(agentID); err != nil {
		return Session{}, err
	}
	s, _, err := m.authenticate(ctx, token, &agentID)
	return s, err
}

// Verify is Authenticate for whichever agent the token names: for callers
// that hold only the token, such as a transport whose session ID is the
// token. The signature is checked before the token's agent ID is trusted.
func (m *Manager) Verify(ctx context.Context, token string) (Session, error) {
	if m.obs.obs != nil {
		var end func(error)
		ctx, end = m.obs.start(ctx, OpVerify, KindSession, "")
		s, _, err := m.authenticate(ctx, token, nil)
		end(err)
		return s, err
	}
	s, _, err := m.authenticate(ctx, token, nil)
	return s, err
}

// authenticate implements Authenticate (agentID set) and Verify (nil),
// returning the session, the token's payload and the manager's clock.
func (m *Manager) authenticate(ctx context.Context, token string, agentID *string) (Session, uint64, error) {
	p, err := parseTokenRotating(m.cfg.Secret, m.verify, token)
	if err != nil {
		return Session{}, 0, err
	}
	if agentID != nil && p.AID != *agentID {
		return Session{}, 0, m.deny(ctx, ReasonAgentMismatch)
	}
	now, err := m.now()
	if err != nil {
		return Session{}, 0, err
	}
	if p.Exp <= now {
		// Delete on sight, but only what this token proves dead: the row
		// itself expired, or still holds this token. A refreshed session
		// outlives the stale copies of its old tokens.
		// The signed payload proves the token expired: say so (the
		// caller must issue a new session) even if the cleanup fails,
		// rather than a store failure the caller would retry. The row
		// then waits for the pruner.
		if err := m.store.DeleteExpired(ctx, p.SID, tokenDigest(token), unixTime(now)); err != nil {
			m.cfg.Logger.WarnContext(ctx, "sessions: deleting an expired session failed; the pruner will", slog.Any("error", err))
		}
		return Session{}, 0, ErrSessionExpired
	}
	s, found, err := m.store.Get(ctx, p.SID)
	if err != nil {
		m.cfg.Logger.WarnContext(ctx, "sessions: authenticate failed", slog.Any("error", err))
		return Session{}, 0, storeErr("get", err)
	}
	if !found {
		return Session{}, 0, m.deny(ctx, ReasonUnknownSession)
	}
	if s.AgentID != p.AID || (s.Kind != KindSession && s.Kind != "") || s.ExpiresAt.Unix() < 0 || uint64(s.ExpiresAt.Unix()) != p.Exp {
		return Session{}, 0, m.deny(ctx, ReasonMetadataMismatch)
	}
	if subtle.ConstantTimeCompare([]byte(s.TokenDigest), []byte(tokenDigest(token))) != 1 {
		return Session{}, 0, m.deny(ctx, ReasonDigestMismatch)
	}
	if m.trackUses {
		if s, err = m.noteUse(ctx, s, now); err != nil {
			return Session{}, 0, err
		}
	}
	return s, now, nil
}

// Revoke deletes the session with this ID and reports whether there was
// one. Revoking a session that does not exist (already revoked, expired
// and pruned) is not an error: revoked is false. After a store failure the
// PostgreSQL store reruns the delete, so a revoke retried that way may
// report false for a session it did delete.
func (m *Manager) Revoke(ctx context.Context, sessionID string) (revoked bool, err error) {
	if m.obs.obs == nil {
		return m.revoke(ctx, sessionID)
	}
	ctx, end := m.obs.start(ctx, OpRevoke, KindSession, "")
	revoked, err = m.revoke(ctx, sessionID)
	end(err)
	return revoked, err
}

func (m *Manager) revoke(ctx context.Context, sessionID string) (bool, error) {
	if err := validateSessionID(sessionID); err != nil {
		return false, err
	}
	found, err := m.store.Delete(ctx, sessionID)
	if err != nil {
		return false, storeErr("delete", err)
	}
	return found, nil
}

func (m *Manager) deny(ctx context.Context, reason DenyReason) error {
	m.cfg.Logger.DebugContext(ctx, "sessions: access denied", slog.String("reason", string(reason)))
	return &AccessDeniedError{Reason: reason}
}

// now reads the clock as whole Unix seconds.
func (m *Manager) now() (uint64, error) {
	secs := m.cfg.Clock().Unix()
	if secs < 0 {
		return 0, &AccessDeniedError{Reason: ReasonClockBeforeEpoch}
	}
	return uint64(secs), nil
}

func (m *Manager) newID() (string, error) {
	sid, err := m.cfg.NewID()
	if err != nil {
		return "", &ConfigError{Field: "NewID", Reason: "failed: " + err.Error()}
	}
	if p := idProblem(sid, MaxSessionIDLength); p != "" {
		return "", &ConfigError{Field: "NewID", Reason: "returned an id that " + p}
	}
	return sid, nil
}

func unixTime(secs uint64) time.Time {
	if secs > math.MaxInt64 {
		secs = math.MaxInt64
	}
	return time.Unix(int64(secs), 0).UTC()
}
