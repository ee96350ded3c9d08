package mcpsessions

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/sessions"
)

// Middleware wraps an mcp-go StreamableHTTPServer (or any handler in front
// of one) to close the gaps mcp-go leaves when sessions are required. For
// requests of a session-oriented protocol version (Mcp-Protocol-Version
// absent or before 2026-07-28; later versions pass through untouched):
//
//   - a GET or DELETE without Mcp-Session-Id is refused with 400;
//   - a GET whose session ID is invalid (forged, tampered, another
//     agent's), or whose session is unknown, revoked or expired, is refused
//     with 404 (mcp-go itself opens the stream without validating it);
//   - a DELETE with an invalid session ID is refused with 404 (mcp-go
//     would answer 500);
//   - when the check itself fails, the request is refused with the
//     status of [sessions.HTTPError] (503 and Retry-After when the store
//     failed, 500 for e.g. a server clock before 1970) and a plain-text
//     "code: message" body, instead of mcp-go's 404 (which would make the
//     client drop its session and start another).
//
// Everything else goes to next, and the session ID is checked only once per
// request: the adapter's Validate and Terminate reuse the result. Requests
// reach the adapter's ID manager with the result only through
// [Adapter.ResolveSessionIdManager] (server.WithSessionIdManagerResolver),
// which receives the request and its context. The middleware also lets
// [Adapter.RejectSessionlessInitialize] say why no session was issued.
func (a *Adapter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mcp.IsModernProtocol(r.Header.Get(mcp.HeaderProtocolVersion)) {
			next.ServeHTTP(w, r)
			return
		}
		st := &requestState{}
		r = r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
		sid := r.Header.Get(server.HeaderKeySessionID)
		switch r.Method {
		case http.MethodGet, http.MethodDelete:
			if sid == "" {
				http.Error(w, "Bad Request: Mcp-Session-Id header is required", http.StatusBadRequest)
				return
			}
		case http.MethodPost:
			if sid == "" { // initialize; anything else mcp-go refuses
				next.ServeHTTP(w, r)
				return
			}
		default:
			next.ServeHTTP(w, r)
			return
		}
		_, err := a.verify(r.Context(), r, sid)
		switch classify(err) {
		case verdictFailure:
			a.onError(r.Context(), OpValidate, fmt.Errorf("mcpsessions: validate: %w", err))
			// The status, code and message of sessions.HTTPError, as
			// plain text like mcp-go's own errors: an application/json
			// body would be read as JSON-RPC by MCP clients.
			info := sessions.HTTPError(err)
			if ra := info.RetryAfter(); ra != "" {
				w.Header().Set("Retry-After", ra)
			}
			http.Error(w, info.Code+": "+info.Message, info.Status)
			return
		case verdictInvalid:
			// A POST goes on: mcp-go refuses it with 404, unless it is an
			// initialize, which ignores the header and starts a session.
			if r.Method != http.MethodPost {
				http.Error(w, "Not Found: invalid session id", http.StatusNotFound)
				return
			}
		case verdictTerminated:
			// A DELETE goes on, and succeeds: termination is idempotent.
			if r.Method == http.MethodGet {
				http.Error(w, "Not Found: session terminated", http.StatusNotFound)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// RejectSessionlessInitialize is an mcp-go OnRequestInitialization hook
// (server.Hooks.AddOnRequestInitialization) that refuses an initialize
// request for which Generate could not issue a session, with a JSON-RPC
// error (INVALID_REQUEST) whose message says why when [Adapter.Middleware]
// is in front (the agent's limit, the store unavailable, no valid agent
// ID) and is generic otherwise. The error matches [ErrNoSession]. Without
// this hook such an initialize succeeds without a session ID and the
// client's next request gets 404.
//
// It passes every other message, and initialize requests that have a
// session ID.
func (a *Adapter) RejectSessionlessInitialize(ctx context.Context, _ any, message any) error {
	if !isInitialize(message) {
		return nil
	}
	cs := server.ClientSessionFromContext(ctx)
	if cs == nil || cs.SessionID() != "" {
		return nil
	}
	if st := stateFrom(ctx); st != nil {
		if err := st.generateErr(); err != nil {
			return fmt.Errorf("%w: %s", ErrNoSession, describe(err))
		}
	}
	return ErrNoSession
}

func isInitialize(message any) bool {
	var raw []byte
	switch m := message.(type) {
	case json.RawMessage:
		raw = m
	case []byte:
		raw = m
	default:
		b, err := json.Marshal(message)
		if err != nil {
			return false
		}
		raw = b
	}
	var head struct {
		Method string `json:"method"`
	}
	return json.Unmarshal(raw, &head) == nil && head.Method == string(mcp.MethodInitialize)
}

type stateKey struct{}

// requestState carries what one HTTP request learned about its session
// between the middleware, the ID manager and the hook.
type requestState struct {
	mu      sync.Mutex
	checked bool
	sid     string
	sess    sessions.Session
	err     error
	genErr  error
}

func stateFrom(ctx context.Context) *requestState {
	st, _ := ctx.Value(stateKey{}).(*requestState)
	return st
}

func (st *requestState) verified(sid string) (sessions.Session, error, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.checked || st.sid != sid {
		return sessions.Session{}, nil, false
	}
	return st.sess, st.err, true
}

func (st *requestState) setVerified(sid string, s sessions.Session, err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.checked, st.sid, st.sess, st.err = true, sid, s, err
}

// forget drops the cached result (the session was just revoked).
func (st *requestState) forget() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.checked = false
}

func (st *requestState) setGenerateErr(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.genErr = err
}

func (st *requestState) generateErr() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.genErr
}
