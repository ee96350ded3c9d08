package sessions

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ErrUnknownHandle: the handle is malformed, forged, of another kind,
// another principal's, destroyed, or was never created. These cases are
// deliberately not told apart: a principal cannot learn whether another
// principal's handle exists.
var ErrUnknownHandle = errors.New("sessions: unknown handle")

// MaxHandleLength is the longest handle [Handles] mints, in bytes: a
// 16-byte kind, '_', 16 characters of random ID and 12 of MAC.
const MaxHandleLength = maxKindLength + 1 + handleIDChars + handleMACChars

const (
	maxKindLength  = 16
	handleIDBytes  = 12 // 96 random bits
	handleIDChars  = 16 // base64url of handleIDBytes
	handleMACBytes = 9  // 72 bits of HMAC-SHA256
	handleMACChars = 12 // base64url of handleMACBytes
)

var kindPattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)

// ValidateKind returns an error matching [ErrInvalidConfig] unless kind
// can name a kind of handle: 1 to 16 lowercase letters, digits and '-',
// starting with a letter, and not "session" ([KindSession], the agent
// sessions' own).
func ValidateKind(kind string) error {
	switch {
	case kind == KindSession:
		return &ConfigError{Field: "HandleKind.Name", Reason: `"session" is the agent sessions' kind`}
	case !kindPattern.MatchString(kind):
		return &ConfigError{Field: "HandleKind.Name", Reason: fmt.Sprintf("%q is not 1 to 16 of [a-z0-9-] starting with a letter", kind)}
	}
	return nil
}

// HandleKind configures one kind of handle.
type HandleKind struct {
	// Name is the kind, e.g. "browser" or "basket"; see [ValidateKind].
	// It is the visible prefix of every handle of the kind. Required.
	Name string

	// TTL is how long a handle lives from creation or its last Refresh.
	// Required, at least one second (whole seconds).
	TTL time.Duration

	// Limit is the most live handles of this kind one principal may hold
	// at once, across every instance sharing the store, unless a
	// per-(principal, kind) override says otherwise ([Handles.SetLimit]).
	// Required, at least 1.
	Limit int

	// Policy is what Create does at the limit: PolicyReject (the
	// default) refuses with a [LimitError]; PolicyEvictOldest destroys
	// the principal's oldest handles of the kind to make room, and
	// PolicyEvictLeastRecentlyUsed the least recently resolved ones (the
	// manager's store must be a [TouchStore]; uses are written every
	// Config.LastUseInterval). Handles have no idle timeout: they end
	// at their expiry or when destroyed.
	Policy LimitPolicy

	// MaxLifetime bounds how long a handle can live from creation however
	// often it is refreshed. Default: 24 hours, or TTL if longer.
	MaxLifetime time.Duration
}

func (k HandleKind) validate() error {
	if err := ValidateKind(k.Name); err != nil {
		return err
	}
	field := func(f string) string { return "HandleKind(" + k.Name + ")." + f }
	switch {
	case k.TTL < time.Second:
		return &ConfigError{Field: field("TTL"), Reason: "must be at least 1s"}
	case k.Limit < 1:
		return &ConfigError{Field: field("Limit"), Reason: "must be > 0"}
	case !k.Policy.valid():
		return &ConfigError{Field: field("Policy"), Reason: fmt.Sprintf("unknown policy %d", k.Policy)}
	case k.MaxLifetime != 0 && k.MaxLifetime < k.TTL:
		return &ConfigError{Field: field("MaxLifetime"), Reason: "must not be below TTL"}
	}
	return nil
}

// Handles mints and checks state handles: names the server gives to state
// it keeps across calls (MCP 2026-07-28 servers: create_basket returns a
// basket ID the model passes back as an ordinary tool argument). A handle
// is a session of a named kind, owned by a principal (the agent ID from
// the caller's verified bearer token), kept in the manager's [Store]
// beside the agent sessions, with its own limit per (principal, kind)
// held by the same atomic Insert, across every instance.
//
// A handle is short (at most [MaxHandleLength] characters, URL-safe: the
// kind, '_', a random ID and a MAC), because a model copies it from one
// tool result into later arguments; it is not the ~150-character session
// token. The MAC, keyed from the manager's secret, binds the handle to its
// kind and principal: a mangled or forged handle, or another principal's,
// is refused without a store call, exactly like an unknown one
// ([ErrUnknownHandle]). The store keeps the handle's SHA-256 digest, not
// the handle.
//
// Handles is safe for concurrent use. It needs a store that implements
// [AgentStore], [RefreshStore] and [LimitStore] (MemoryStore and
// pgxstore.Store do).
type Handles struct {
	m     *Manager
	keys  [][]byte // MAC keys: the signing secret's first, then the verify-only ones'
	kinds map[string]HandleKind
}

// NewHandles returns handles of the given kinds on m's store, clock and
// secrets. A secret rotation of m (Config.VerifySecrets) carries over:
// handles minted under a verify-only secret still resolve.
func NewHandles(m *Manager, kinds ...HandleKind) (*Handles, error) {
	if m == nil {
		return nil, &ConfigError{Field: "Manager", Reason: "must not be nil"}
	}
	for _, iface := range []struct {
		ok   bool
		name string
	}{{isA[AgentStore](m.store), "AgentStore"}, {isA[RefreshStore](m.store), "RefreshStore"}, {isA[LimitStore](m.store), "LimitStore"}} {
		if !iface.ok {
			return nil, unsupported(iface.name)
		}
	}
	if len(kinds) == 0 {
		return nil, &ConfigError{Field: "kinds", Reason: "name at least one HandleKind"}
	}
	h := &Handles{m: m, kinds: make(map[string]HandleKind, len(kinds))}
	for _, k := range kinds {
		if err := k.validate(); err != nil {
			return nil, err
		}
		if _, dup := h.kinds[k.Name]; dup {
			return nil, &ConfigError{Field: "kinds", Reason: fmt.Sprintf("kind %q is named twice", k.Name)}
		}
		if k.Policy == PolicyEvictLeastRecentlyUsed {
			if m.uses == nil {
				return nil, &ConfigError{Field: "HandleKind(" + k.Name + ").Policy", Reason: "evict-least-recently-used needs a store " +
					"that implements sessions.TouchStore (MemoryStore and pgxstore.Store do)"}
			}
			m.uses.byAgent.Store(true)
		}
		if k.MaxLifetime == 0 {
			k.MaxLifetime = max(DefaultMaxLifetime, k.TTL)
		}
		h.kinds[k.Name] = k
	}
	for _, secret := range append([][]byte{m.cfg.Secret}, m.verify...) {
		h.keys = append(h.keys, handleKey(secret))
	}
	return h, nil
}

func isA[T any](v any) bool { _, ok := v.(T); return ok }

// handleKey derives the MAC key of handles from a signing secret, so a
// handle's MAC is never a valid token signature or the other way round.
func handleKey(secret []byte) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("agentsessions handle key v1"))
	return mac.Sum(nil)
}

// Handle is one state handle.
type Handle struct {
	// Handle is what the model passes around: kind_randomIDmac.
	Handle string
	// ID is the handle without its MAC: its stored session's ID, by which
	// lifecycle events (pgxstore.HandleEvent) name it.
	ID        string
	Principal string
	Kind      string
	CreatedAt time.Time // whole seconds, UTC
	ExpiresAt time.Time // whole seconds, UTC

	// Metadata is what Create attached with [WithMetadata]; nil when
	// nothing was.
	Metadata map[string]string

	// Evicted lists the IDs (see ID) of the handles Create destroyed to
	// make room under PolicyEvictOldest, as lifecycle events name them;
	// empty otherwise. IDs, not handles: a handle minted under a
	// verify-only secret could not be rebuilt from the current one.
	Evicted []string
}

// Create mints a handle of kind for principal. At the (principal, kind)
// limit it fails with a [LimitError] under PolicyReject, and destroys the
// principal's oldest handles of the kind to make room under
// PolicyEvictOldest. opts may carry [WithMetadata]. It fails with
// [ErrInvalidAgentID] for a malformed principal and [ErrInvalidConfig] for
// a kind this Handles was not given.
func (h *Handles) Create(ctx context.Context, principal, kind string, opts ...IssueOption) (Handle, error) {
	if h.m.obs.obs == nil {
		return h.create(ctx, principal, kind, opts)
	}
	ctx, end := h.start(ctx, OpHandleCreate, principal, kind)
	out, err := h.create(ctx, principal, kind, opts)
	end(err)
	return out, err
}

func (h *Handles) create(ctx context.Context, principal, kind string, opts []IssueOption) (Handle, error) {
	k, err := h.kind(principal, kind)
	if err != nil {
		return Handle{}, err
	}
	var o issueOptions
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := encodeMetadata(o.metadata); err != nil {
		return Handle{}, err
	}
	now, err := h.m.now()
	if err != nil {
		return Handle{}, err
	}
	ttl := uint64(k.TTL / time.Second)
	if now > maxExpiry || ttl > maxExpiry-now {
		return Handle{}, &ConfigError{Field: "HandleKind(" + kind + ").TTL", Reason: "overflows the latest representable expiry (9999-12-31T23:59:59Z) at the current time"}
	}
	var rid [handleIDBytes]byte
	if _, err := rand.Read(rid[:]); err != nil {
		return Handle{}, &ConfigError{Field: "crypto/rand", Reason: err.Error()}
	}
	id := kind + "_" + b64.EncodeToString(rid[:])
	handle := id + h.mac(h.keys[0], kind, principal, id)
	s := Session{ID: id, AgentID: principal, Kind: kind, IssuedAt: unixTime(now), LastUsedAt: unixTime(now), ExpiresAt: unixTime(now + ttl),
		TokenDigest: tokenDigest(handle), Metadata: maps.Clone(o.metadata)}
	req := InsertRequest{Limit: k.Limit, Policy: k.Policy, Now: unixTime(now)}
	if k.Policy == PolicyEvictLeastRecentlyUsed {
		req.RecentUses = h.m.uses.recent(limitKey{principal, kind})
	}
	res, err := h.m.store.Insert(ctx, s, req)
	if err != nil {
		return Handle{}, storeErr("insert", err)
	}
	if !res.Inserted {
		return Handle{}, &LimitError{AgentID: principal, Kind: kind, Limit: res.Limit}
	}
	out := handleOf(s, handle)
	out.Evicted = res.Evicted
	return out, nil
}

// Resolve returns the live handle of kind that principal holds. Another
// principal's handle, one of another kind, a forged, mangled, destroyed or
// never-created one all fail with [ErrUnknownHandle], the same error; an
// expired one fails with [ErrSessionExpired] (and is deleted). Only a
// handle whose MAC checks out costs a store call.
func (h *Handles) Resolve(ctx context.Context, principal, kind, handle string) (Handle, error) {
	if h.m.obs.obs == nil {
		return h.resolveLive(ctx, principal, kind, handle)
	}
	ctx, end := h.start(ctx, OpHandleResolve, principal, kind)
	out, err := h.resolveLive(ctx, principal, kind, handle)
	end(err)
	return out, err
}

// resolveLive implements Resolve.
func (h *Handles) resolveLive(ctx context.Context, principal, kind, handle string) (Handle, error) {
	s, now, err := h.resolve(ctx, principal, kind, handle)
	if err != nil {
		return Handle{}, err
	}
	if !s.ExpiresAt.After(unixTime(now)) {
		// Expired by the stored row: say so even if the cleanup fails
		// (the pruner deletes the row later).
		if err := h.m.store.DeleteExpired(ctx, s.ID, s.TokenDigest, unixTime(now)); err != nil {
			h.m.cfg.Logger.WarnContext(ctx, "sessions: deleting an expired handle failed; the pruner will", slog.Any("error", err))
		}
		return Handle{}, fmt.Errorf("%w: the %s handle expired at %s", ErrSessionExpired, kind, s.ExpiresAt.Format(time.RFC3339))
	}
	if h.kinds[kind].Policy == PolicyEvictLeastRecentlyUsed {
		h.m.uses.use(s.ID, limitKey{principal, kind}, lastUse(s), now, 0)
	}
	return handleOf(s, handle), nil
}

// resolve checks handle and returns its stored session, expired or not.
func (h *Handles) resolve(ctx context.Context, principal, kind, handle string) (Session, uint64, error) {
	if _, err := h.kind(principal, kind); err != nil {
		return Session{}, 0, err
	}
	id, ok := h.verify(principal, kind, handle)
	if !ok {
		return Session{}, 0, ErrUnknownHandle
	}
	now, err := h.m.now()
	if err != nil {
		return Session{}, 0, err
	}
	s, found, err := h.m.store.Get(ctx, id)
	if err != nil {
		return Session{}, 0, storeErr("get", err)
	}
	if !found || s.AgentID != principal || s.Kind != kind ||
		subtle.ConstantTimeCompare([]byte(s.TokenDigest), []byte(tokenDigest(handle))) != 1 {
		return Session{}, 0, ErrUnknownHandle
	}
	return s, now, nil
}

// List returns principal's live handles of kind, oldest first.
func (h *Handles) List(ctx context.Context, principal, kind string) ([]Handle, error) {
	if h.m.obs.obs == nil {
		return h.list(ctx, principal, kind)
	}
	ctx, end := h.start(ctx, OpHandleList, principal, kind)
	out, err := h.list(ctx, principal, kind)
	end(err)
	return out, err
}

func (h *Handles) list(ctx context.Context, principal, kind string) ([]Handle, error) {
	if _, err := h.kind(principal, kind); err != nil {
		return nil, err
	}
	now, err := h.m.now()
	if err != nil {
		return nil, err
	}
	list, err := h.m.store.(AgentStore).ListAgent(ctx, principal, kind, unixTime(now))
	if err != nil {
		return nil, storeErr("list", err)
	}
	out := make([]Handle, 0, len(list))
	for _, s := range list {
		// The handle is the ID and its MAC under whichever key minted it:
		// the one whose handle has the stored digest.
		for _, key := range h.keys {
			if handle := s.ID + h.mac(key, kind, principal, s.ID); tokenDigest(handle) == s.TokenDigest {
				out = append(out, handleOf(s, handle))
				break
			}
		}
	}
	return out, nil
}

// Destroy deletes principal's handle of kind and reports whether it was
// there. A handle that is not principal's, or not valid, destroys nothing
// and reports false, like an unknown one.
func (h *Handles) Destroy(ctx context.Context, principal, kind, handle string) (bool, error) {
	if h.m.obs.obs == nil {
		return h.destroy(ctx, principal, kind, handle)
	}
	ctx, end := h.start(ctx, OpHandleDestroy, principal, kind)
	found, err := h.destroy(ctx, principal, kind, handle)
	end(err)
	return found, err
}

func (h *Handles) destroy(ctx context.Context, principal, kind, handle string) (bool, error) {
	s, _, err := h.resolve(ctx, principal, kind, handle)
	if errors.Is(err, ErrUnknownHandle) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	found, err := h.m.store.Delete(ctx, s.ID)
	if err != nil {
		return false, storeErr("delete", err)
	}
	return found, nil
}

// DestroyOthers destroys every handle of kind that principal holds except
// handle, which must be principal's live handle (it is checked as Resolve
// checks it), and returns how many it destroyed, expired ones included.
func (h *Handles) DestroyOthers(ctx context.Context, principal, kind, handle string) (int, error) {
	if h.m.obs.obs == nil {
		return h.destroyOthers(ctx, principal, kind, handle)
	}
	ctx, end := h.start(ctx, OpHandleDestroyOthers, principal, kind)
	n, err := h.destroyOthers(ctx, principal, kind, handle)
	end(err)
	return n, err
}

func (h *Handles) destroyOthers(ctx context.Context, principal, kind, handle string) (int, error) {
	s, now, err := h.resolve(ctx, principal, kind, handle)
	if err != nil {
		return 0, err
	}
	if !s.ExpiresAt.After(unixTime(now)) {
		_, err := h.resolveLive(ctx, principal, kind, handle) // deletes it and says expired
		return 0, err
	}
	n, err := h.m.store.(AgentStore).DeleteAgent(ctx, principal, kind, s.ID)
	if err != nil {
		return 0, storeErr("delete agent", err)
	}
	return n, nil
}

// Refresh extends principal's live handle of kind to now+TTL, capped at
// its creation plus the kind's MaxLifetime; the handle itself does not
// change. It fails like Resolve, and with [ErrLifetimeExceeded] once the
// cap is reached.
func (h *Handles) Refresh(ctx context.Context, principal, kind, handle string) (Handle, error) {
	if h.m.obs.obs == nil {
		return h.refresh(ctx, principal, kind, handle)
	}
	ctx, end := h.start(ctx, OpHandleRefresh, principal, kind)
	out, err := h.refresh(ctx, principal, kind, handle)
	end(err)
	return out, err
}

func (h *Handles) refresh(ctx context.Context, principal, kind, handle string) (Handle, error) {
	s, now, err := h.resolve(ctx, principal, kind, handle)
	if err != nil {
		return Handle{}, err
	}
	if !s.ExpiresAt.After(unixTime(now)) {
		return h.resolveLive(ctx, principal, kind, handle) // deletes it and says expired
	}
	k := h.kinds[kind]
	exp, slid := slidExpiry(s, now, uint64(k.TTL/time.Second), uint64(k.MaxLifetime/time.Second))
	if !slid {
		return Handle{}, fmt.Errorf("%w: the %s handle expires at the end of its %s lifetime", ErrLifetimeExceeded, kind, k.MaxLifetime)
	}
	if exp == uint64(s.ExpiresAt.Unix()) {
		return handleOf(s, handle), nil
	}
	ok, err := h.m.store.(RefreshStore).Extend(ctx, s.ID, s.TokenDigest, unixTime(exp), s.TokenDigest, unixTime(now))
	if err != nil {
		return Handle{}, storeErr("extend", err)
	}
	if !ok {
		return Handle{}, ErrUnknownHandle // destroyed or expired since we looked
	}
	s.ExpiresAt = unixTime(exp)
	return handleOf(s, handle), nil
}

// Limit returns the limit Create applies to principal's handles of kind.
func (h *Handles) Limit(ctx context.Context, principal, kind string) (AgentLimit, error) {
	k, err := h.kind(principal, kind)
	if err != nil {
		return AgentLimit{}, err
	}
	n, found, err := h.m.store.(LimitStore).AgentLimit(ctx, principal, kind)
	if err != nil {
		return AgentLimit{}, storeErr("get limit", err)
	}
	if !found {
		return AgentLimit{Limit: k.Limit}, nil
	}
	return AgentLimit{Limit: n, Override: true}, nil
}

// SetLimit overrides the kind's Limit for one principal, for every
// instance sharing the store. Lowering it destroys nothing. It fails with
// [ErrInvalidLimit] unless 1 <= limit <= 2^31-1.
func (h *Handles) SetLimit(ctx context.Context, principal, kind string, limit int) error {
	if _, err := h.kind(principal, kind); err != nil {
		return err
	}
	if err := validLimit(limit); err != nil {
		return err
	}
	if err := h.m.store.(LimitStore).SetAgentLimit(ctx, principal, kind, limit); err != nil {
		return storeErr("set limit", err)
	}
	return nil
}

// DeleteLimit removes the override, so the kind's Limit applies again,
// and reports whether there was one.
func (h *Handles) DeleteLimit(ctx context.Context, principal, kind string) (bool, error) {
	if _, err := h.kind(principal, kind); err != nil {
		return false, err
	}
	found, err := h.m.store.(LimitStore).DeleteAgentLimit(ctx, principal, kind)
	if err != nil {
		return false, storeErr("delete limit", err)
	}
	return found, nil
}

// ListLimits returns every per-principal override of kind, ordered by
// principal.
func (h *Handles) ListLimits(ctx context.Context, kind string) ([]AgentLimitOverride, error) {
	if _, err := h.configured(kind); err != nil {
		return nil, err
	}
	out, err := h.m.store.(LimitStore).AgentLimits(ctx, kind)
	if err != nil {
		return nil, storeErr("list limits", err)
	}
	return out, nil
}

// Kinds returns the configured kinds, by name.
func (h *Handles) Kinds() []HandleKind {
	out := slices.Collect(maps.Values(h.kinds))
	slices.SortFunc(out, func(a, b HandleKind) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// start calls the manager's observer for a handle operation; only call
// it when there is one. A kind these Handles were not given is not passed
// on: it is the caller's input, not configuration.
func (h *Handles) start(ctx context.Context, name, principal, kind string) (context.Context, func(error)) {
	if _, ok := h.kinds[kind]; !ok {
		kind = ""
	}
	return h.m.obs.start(ctx, name, kind, principal)
}

// kind checks principal and returns kind's configuration.
func (h *Handles) kind(principal, kind string) (HandleKind, error) {
	if err := ValidateAgentID(principal); err != nil {
		return HandleKind{}, err
	}
	return h.configured(kind)
}

// configured returns kind's configuration, or an error matching
// ErrInvalidConfig when these Handles were not given it.
func (h *Handles) configured(kind string) (HandleKind, error) {
	k, ok := h.kinds[kind]
	if !ok {
		return HandleKind{}, &ConfigError{Field: "kind", Reason: fmt.Sprintf("%q is not a kind these Handles were given", kind)}
	}
	return k, nil
}

// mac is the handle's last part: HMAC-SHA256 over kind, principal and ID
// (NUL-separated: none of them holds a NUL), truncated to 72 bits.
func (h *Handles) mac(key []byte, kind, principal, id string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(kind + "\x00" + principal + "\x00" + id))
	return b64.EncodeToString(m.Sum(nil)[:handleMACBytes])
}

// verify parses handle as kind's and checks its MAC for principal under
// every key, in constant time each; it returns the stored session's ID.
func (h *Handles) verify(principal, kind, handle string) (id string, ok bool) {
	n := len(kind) + 1 + handleIDChars + handleMACChars
	if len(handle) != n || handle[:len(kind)+1] != kind+"_" {
		return "", false
	}
	id, mac := handle[:n-handleMACChars], handle[n-handleMACChars:]
	if _, ok := decodeB64(id[len(kind)+1:]); !ok {
		return "", false
	}
	given, ok := decodeB64(mac)
	if !ok {
		return "", false
	}
	for _, key := range h.keys {
		want, _ := decodeB64(h.mac(key, kind, principal, id))
		if hmac.Equal(given, want) {
			return id, true
		}
	}
	return "", false
}

func handleOf(s Session, handle string) Handle {
	return Handle{Handle: handle, ID: s.ID, Principal: s.AgentID, Kind: s.Kind, CreatedAt: s.IssuedAt, ExpiresAt: s.ExpiresAt,
		Metadata: maps.Clone(s.Metadata)}
}
