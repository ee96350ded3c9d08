package mcpsessions

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/sessions"
)

// DefaultTimeout bounds each store call when [Options.Timeout] is zero.
const DefaultTimeout = 5 * time.Second

// Op names the session ID manager operation that failed, for
// [Options.OnError].
type Op string

// The operations reported to [Options.OnError].
const (
	OpGenerate  Op = "generate"
	OpValidate  Op = "validate"
	OpTerminate Op = "terminate"
)

// ErrInvalidOptions is in the chain of every error [New] returns.
var ErrInvalidOptions = errors.New("mcpsessions: invalid options")

// ErrNoSessionID is in the chain of the error Validate and Terminate return
// for an empty session ID (a request without Mcp-Session-Id).
var ErrNoSessionID = errors.New("mcpsessions: no session id")

// ErrNoSession is in the chain of the error
// [Adapter.RejectSessionlessInitialize] returns when no session could be
// issued for an initialize request.
var ErrNoSession = errors.New("mcpsessions: no session could be created")

// Options configures an [Adapter].
type Options struct {
	// AgentID is the agent sessions are issued to, and the agent whose
	// sessions Validate and Terminate accept, unless AgentIDFromRequest
	// names another for the request. Use a fixed agent per MCP server to
	// make the manager's limit a cap on the server's concurrent MCP
	// sessions. Required when AgentIDFromRequest is nil.
	AgentID string

	// AgentIDFromRequest, when set, returns the agent ID for an HTTP
	// request ("" to fall back to AgentID); see [HeaderAgentID] and
	// [SessionAgentID]. It is only consulted through the resolver
	// (server.WithSessionIdManagerResolver), as mcp-go's plain
	// SessionIdManager sees no request.
	//
	// The value is trusted as given: take it from a header only behind
	// something that authenticates the caller (a gateway, or middleware
	// that overwrites the header), or from what such middleware put in the
	// request's context. Default: nil (every session is AgentID's).
	AgentIDFromRequest func(r *http.Request) string

	// Timeout bounds each store call (Generate, Validate, Terminate).
	// Default [DefaultTimeout]; negative is an error.
	Timeout time.Duration

	// OnError is called, synchronously, when Generate cannot issue a
	// session (limit reached, store failure, invalid agent ID) and when
	// Validate or Terminate fail for a reason other than a bad, unknown,
	// revoked or expired session ID, that is on store failures. ctx is the
	// request's with the resolver, context.Background() otherwise. The
	// error carries the cause in full (database messages included); errors
	// never contain tokens. Default: a warning on slog.Default().
	OnError func(ctx context.Context, op Op, err error)
}

// Adapter keeps mcp-go Streamable HTTP sessions in a [sessions.Manager]'s
// store. It implements server.SessionIdManagerResolver and
// server.SessionIdManager, and is safe for concurrent use.
type Adapter struct {
	m                *sessions.Manager
	agentID          string
	agentFromRequest func(*http.Request) string
	timeout          time.Duration
	onError          func(context.Context, Op, error)
}

var (
	_ server.SessionIdManager            = (*Adapter)(nil)
	_ server.SessionIdManagerResolver    = (*Adapter)(nil)
	_ server.OnRequestInitializationFunc = (*Adapter)(nil).RejectSessionlessInitialize
)

// New returns an adapter issuing sessions from m. It fails when m is nil,
// when neither AgentID nor AgentIDFromRequest is set, when AgentID is not a
// valid agent ID, or when Timeout is negative.
func New(m *sessions.Manager, opts Options) (*Adapter, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: nil *sessions.Manager", ErrInvalidOptions)
	}
	if opts.AgentID == "" && opts.AgentIDFromRequest == nil {
		return nil, fmt.Errorf("%w: Options.AgentID or Options.AgentIDFromRequest is required", ErrInvalidOptions)
	}
	if opts.AgentID != "" {
		if err := sessions.ValidateAgentID(opts.AgentID); err != nil {
			return nil, fmt.Errorf("%w: Options.AgentID: %w", ErrInvalidOptions, err)
		}
	}
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("%w: Options.Timeout must not be negative", ErrInvalidOptions)
	}
	a := &Adapter{
		m:                m,
		agentID:          opts.AgentID,
		agentFromRequest: opts.AgentIDFromRequest,
		timeout:          opts.Timeout,
		onError:          opts.OnError,
	}
	if a.timeout == 0 {
		a.timeout = DefaultTimeout
	}
	if a.onError == nil {
		a.onError = func(ctx context.Context, op Op, err error) {
			slog.Default().WarnContext(ctx, "mcpsessions: "+string(op)+" failed", slog.Any("error", err))
		}
	}
	return a, nil
}

// HeaderAgentID returns an [Options.AgentIDFromRequest] that reads the
// agent ID from the named request header. Trust it only behind a gateway
// that sets (or strips) that header on every request.
func HeaderAgentID(name string) func(*http.Request) string {
	return func(r *http.Request) string { return r.Header.Get(name) }
}

// SessionAgentID is an [Options.AgentIDFromRequest] that takes the agent
// ID from the session [sessions.Middleware] authenticated for the request
// (Authorization: Bearer plus the agent header), and "" when there is none.
// With it, an agent reaches the MCP server with its own agentsessions token,
// and its MCP sessions are issued to, counted against and usable only by
// that agent.
func SessionAgentID(r *http.Request) string {
	if s, ok := sessions.SessionFromContext(r.Context()); ok {
		return s.AgentID
	}
	return ""
}

// Generate issues a session for Options.AgentID and returns its token as the
// MCP session ID. It implements server.SessionIdManager. It cannot fail:
// when no session can be issued it reports why to Options.OnError and
// returns "", and mcp-go then answers the initialize without a session ID
// (see the package documentation).
func (a *Adapter) Generate() string {
	return a.generate(context.Background(), nil)
}

// Validate checks an MCP session ID. It implements server.SessionIdManager.
// It returns isTerminated=true for a genuine session ID whose session is
// unknown, revoked, expired or superseded. It returns an error for an
// empty, malformed, forged or tampered ID (no store call is made for
// those), for a session of another agent than Options.AgentID, and when the
// store fails: a store failure is never reported as a termination (it fails
// closed, and OnError hears of it). The text of the error of a failed
// check is only the message of [sessions.HTTPError] (for a store failure:
// that the store is unavailable); the cause is in its chain (errors.Is(err,
// sessions.ErrStore)) and in full in what OnError receives.
func (a *Adapter) Validate(sessionID string) (isTerminated bool, err error) {
	return a.validate(context.Background(), nil, sessionID)
}

// Terminate revokes the session named by a valid MCP session ID, on every
// instance. It implements server.SessionIdManager. Terminating a session
// that is already unknown, revoked, expired or superseded succeeds; an
// empty, forged or tampered ID, a session of another agent, and a store
// failure are errors (mcp-go writes the error's text into its 500
// response, so a store failure's text carries no detail). isNotAllowed is
// always false.
//
// mcp-go also calls this from its idle sweeper and on Shutdown; use the
// resolver (see [Adapter.ResolveSessionIdManager]) to revoke only on a
// client's DELETE.
func (a *Adapter) Terminate(sessionID string) (isNotAllowed bool, err error) {
	return a.terminate(context.Background(), nil, sessionID)
}

// ResolveSessionIdManager implements server.SessionIdManagerResolver: pass
// the adapter to server.WithSessionIdManagerResolver. The manager it returns
// for a request works as the adapter's own methods do, except that:
//
//   - its store calls run on the request's context (plus Options.Timeout);
//   - the agent comes from Options.AgentIDFromRequest when that names one:
//     sessions are issued to it, and Validate and Terminate accept only its
//     sessions;
//   - Generate for a request other than POST (mcp-go calls it for a GET
//     without Mcp-Session-Id) issues nothing and returns a random ID that
//     no instance accepts, so anonymous GETs cannot use up an agent's
//     sessions;
//   - for r == nil (mcp-go's idle sweeper and CloseSessions/Shutdown),
//     Terminate does nothing: the session may be in use on another
//     instance, and expires with its TTL.
func (a *Adapter) ResolveSessionIdManager(r *http.Request) server.SessionIdManager {
	return requestManager{a: a, r: r}
}

type requestManager struct {
	a *Adapter
	r *http.Request // nil outside a request
}

func (rm requestManager) ctx() context.Context {
	if rm.r == nil {
		return context.Background()
	}
	return rm.r.Context()
}

func (rm requestManager) Generate() string {
	if rm.r != nil && rm.r.Method != http.MethodPost {
		return unboundID()
	}
	return rm.a.generate(rm.ctx(), rm.r)
}

func (rm requestManager) Validate(sessionID string) (bool, error) {
	return rm.a.validate(rm.ctx(), rm.r, sessionID)
}

func (rm requestManager) Terminate(sessionID string) (bool, error) {
	if rm.r == nil {
		return false, nil
	}
	return rm.a.terminate(rm.ctx(), rm.r, sessionID)
}

// unboundID is a session ID for an mcp-go GET stream opened without one: it
// names no stored session, and is not a token, so Validate refuses it.
func unboundID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return "mcpsessions-unbound-" + hex.EncodeToString(b[:])
}

// agentFor is the agent of a request: the one Options.AgentIDFromRequest
// names, else Options.AgentID. It is "" only when AgentIDFromRequest alone
// is configured and names no agent for r (or r is nil).
func (a *Adapter) agentFor(r *http.Request) string {
	if r != nil && a.agentFromRequest != nil {
		if agent := a.agentFromRequest(r); agent != "" {
			return agent
		}
	}
	return a.agentID
}

func (a *Adapter) generate(ctx context.Context, r *http.Request) string {
	cctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	iss, err := a.m.Issue(cctx, a.agentFor(r))
	if err != nil {
		if st := stateFrom(ctx); st != nil {
			st.setGenerateErr(err)
		}
		a.onError(ctx, OpGenerate, fmt.Errorf("mcpsessions: generate: %w", err))
		return ""
	}
	return iss.Token
}

// verify checks a session ID, once per request behind [Adapter.Middleware]
// (the result is kept in the request's state). The session must be the
// request's agent's (Manager.Authenticate); when no agent is known for the
// request, any agent's session is accepted (Manager.Verify).
func (a *Adapter) verify(ctx context.Context, r *http.Request, sessionID string) (sessions.Session, error) {
	if sessionID == "" {
		return sessions.Session{}, ErrNoSessionID
	}
	st := stateFrom(ctx)
	if st != nil {
		if s, err, ok := st.verified(sessionID); ok {
			return s, err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	var s sessions.Session
	var err error
	if agent := a.agentFor(r); agent != "" {
		s, err = a.m.Authenticate(cctx, sessionID, agent)
	} else {
		s, err = a.m.Verify(cctx, sessionID)
	}
	if st != nil {
		st.setVerified(sessionID, s, err)
	}
	return s, err
}

// verdict classifies the result of verify.
type verdict int

const (
	verdictValid      verdict = iota
	verdictTerminated         // genuine ID, session unknown/revoked/expired/superseded
	verdictInvalid            // not a session ID of ours, or not this agent's
	verdictFailure            // the store (or the server) failed
)

// classify sorts an error by its code in the sessions table: the MCP
// transport has its own answers (404 for a session ID it does not accept),
// but which errors are the caller's and which the server's is the table's
// call.
func classify(err error) verdict {
	if err == nil {
		return verdictValid
	}
	if errors.Is(err, ErrNoSessionID) {
		return verdictInvalid
	}
	switch sessions.HTTPError(err).Code {
	case sessions.CodeExpired, sessions.CodeUnauthorized:
		// Expired, revoked, pruned, or superseded (refreshed, re-issued).
		return verdictTerminated
	case sessions.CodeInvalidToken, sessions.CodeForbidden, sessions.CodeInvalidAgentID:
		// Not a session ID of ours, or another agent's.
		return verdictInvalid
	}
	return verdictFailure // the store, or the server (e.g. its clock)
}

// failure is what Validate and Terminate return when the check itself
// failed (the store, mostly). Its text is the op and the message of
// [sessions.HTTPError], safe to show a client, as mcp-go does for a
// DELETE; the cause stays in its chain for errors.Is and errors.As, and
// goes in full to Options.OnError.
type failure struct {
	op  Op
	err error
}

func (e *failure) Error() string {
	return "mcpsessions: " + string(e.op) + ": " + sessions.HTTPError(e.err).Message
}

func (e *failure) Unwrap() error { return e.err }

// fail reports err to OnError and returns it as a *failure.
func (a *Adapter) fail(ctx context.Context, op Op, err error) error {
	a.onError(ctx, op, fmt.Errorf("mcpsessions: %s: %w", op, err))
	return &failure{op: op, err: err}
}

func (a *Adapter) validate(ctx context.Context, r *http.Request, sessionID string) (bool, error) {
	_, err := a.verify(ctx, r, sessionID)
	switch classify(err) {
	case verdictValid:
		return false, nil
	case verdictTerminated:
		return true, nil
	case verdictInvalid:
		return false, fmt.Errorf("mcpsessions: invalid session id: %w", err)
	}
	return false, a.fail(ctx, OpValidate, err)
}

func (a *Adapter) terminate(ctx context.Context, r *http.Request, sessionID string) (bool, error) {
	s, err := a.verify(ctx, r, sessionID)
	switch classify(err) {
	case verdictValid:
		cctx, cancel := context.WithTimeout(ctx, a.timeout)
		defer cancel()
		if _, err := a.m.Revoke(cctx, s.ID); err != nil {
			return false, a.fail(ctx, OpTerminate, err)
		}
		if st := stateFrom(ctx); st != nil {
			st.forget()
		}
		return false, nil
	case verdictTerminated:
		return false, nil // already gone: termination is idempotent
	case verdictInvalid:
		return false, fmt.Errorf("mcpsessions: invalid session id: %w", err)
	}
	return false, a.fail(ctx, OpTerminate, err)
}

// describe turns a Generate failure into a message for the client: the
// message and code of [sessions.HTTPError], which carry the reason when it
// is the client's business and nothing internal otherwise.
func describe(err error) string {
	info := sessions.HTTPError(err)
	msg := info.Message
	if info.Code == sessions.CodeInvalidAgentID {
		msg = "no valid agent id for this request: " + msg
	}
	return msg + " (" + info.Code + ")"
}
