// Package server is the HTTP JSON API of `agentsessions serve`: an
// [http.Handler] over a [sessions.Manager].
//
// Routes (see api/openapi.yaml):
//
//	POST   /v1/sessions                      admin  issue a session
//	POST   /v1/sessions/authenticate         token  check a token for an agent
//	POST   /v1/sessions/refresh              token  extend a session, new token
//	DELETE /v1/sessions/{id}                 admin  revoke one session (idempotent)
//	GET    /v1/agents/{agent_id}/sessions    admin  list an agent's live sessions
//	DELETE /v1/agents/{agent_id}/sessions    admin  revoke all of an agent's sessions
//	GET    /v1/agents/{agent_id}/limit       admin  effective limit
//	PUT    /v1/agents/{agent_id}/limit       admin  set an override
//	DELETE /v1/agents/{agent_id}/limit       admin  remove the override
//	GET    /healthz /readyz /metrics         none
//
// Admin routes need "Authorization: Bearer <admin key>", compared in
// constant time (SHA-256 digests, so the key's length does not leak
// either). The token routes need no admin key: holding the token is the
// credential, and it travels in the JSON body {"agent_id","token"}, never
// in the URL. Request bodies are one JSON object sent as Content-Type
// application/json (else 415, also when the header is missing), at most
// Options.MaxBodyBytes (64 KiB); unknown, case-variant and duplicate keys,
// invalid UTF-8 and lone surrogate escapes are refused with 400.
//
// Errors are {"error":{"code":"...","message":"..."}}, with the status, code
// and message of [sessions.HTTPError] for every library error (see
// [ErrorCodes] for the full list):
//
//	400 bad_request          malformed body (not one JSON object, unknown or duplicate key, bad UTF-8)
//	400 invalid_agent_id, invalid_session_id, invalid_metadata, invalid_limit
//	400 missing_agent_id, missing_token   a required body field missing or empty
//	401 admin_key_required   admin route without the right admin key
//	401 invalid_token        malformed token, or not signed with a known secret
//	401 expired              session expired
//	401 lifetime_exceeded    refresh of a session at its maximum lifetime
//	401 unauthorized         unknown or revoked session, or a token superseded by a refresh
//	403 forbidden            a genuine token of another agent
//	404 not_found, 405 method_not_allowed (with Allow)
//	409 limit_exceeded       the agent holds its limit of live sessions (policy reject)
//	413 request_too_large    body over the cap
//	415 unsupported_media_type  body not sent as application/json
//	499 canceled             the client went away (logs and metrics only)
//	500 internal_error       anything else
//	503 store_unavailable    the store failed (Retry-After: 1); not_ready on /readyz
//
// Tokens, the admin key and request bodies are never logged; each request
// is logged once with its method, route, path, status and duration.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Defaults and bounds of [Options].
const (
	// MinAdminKeyBytes is the shortest admin key New accepts.
	MinAdminKeyBytes = 32
	// DefaultMaxBodyBytes is the default cap on a request body.
	DefaultMaxBodyBytes = 64 << 10
	// DefaultLiveSessionsCacheTTL is how long a live-session count is
	// reused by /metrics before the count is run again.
	DefaultLiveSessionsCacheTTL = 10 * time.Second
	// DefaultReadyTimeout bounds one readiness check.
	DefaultReadyTimeout = 2 * time.Second
)

// ErrInvalidOptions is returned by [New] for unusable [Options].
var ErrInvalidOptions = errors.New("server: invalid options")

// Options configures a [Server]. The zero value is usable: no admin key (the
// admin routes answer 401), always ready, no store counters.
type Options struct {
	// AdminKey is the bearer key of the admin routes; at least
	// MinAdminKeyBytes bytes. Empty disables the admin routes: they answer
	// 401 admin_key_required. Only its SHA-256 is kept.
	AdminKey []byte

	// Logger receives one record per request (method, route, path,
	// status, duration; never bodies, tokens or the Authorization header)
	// and the details of store failures. Default: discards.
	Logger *slog.Logger

	// Ready reports whether the server can serve (database reachable,
	// migrations applied); /readyz answers 503 while it returns an error.
	// Its error is logged, not returned to the caller: it may name hosts.
	// Default: always ready (the in-memory store). Pass (*pgxstore.Store).Ready.
	Ready func(context.Context) error

	// ReadyTimeout bounds one call of Ready. Default: DefaultReadyTimeout.
	ReadyTimeout time.Duration

	// StoreStats, when set, is exported on /metrics as the store's
	// transaction, serialization-retry, exhausted and reconnect counters.
	// Pass (*pgxstore.Store).Stats.
	StoreStats func() pgxstore.Stats

	// CacheStats, when set, is exported on /metrics as the verified-session
	// cache's hit, miss, invalidation and resync counters and its freshness.
	// Pass (*pgxstore.Store).CacheStats when RunCache runs.
	CacheStats func() pgxstore.CacheStats

	// LiveSessions, when set, counts live sessions for the
	// agentsessions_live_sessions gauge; the count is cached for
	// LiveSessionsCacheTTL. Default: the gauge is not exported. Wrap
	// (*pgxstore.Store).LiveSessions.
	LiveSessions func(context.Context) (int64, error)

	// LiveSessionsCacheTTL: see LiveSessions. Default:
	// DefaultLiveSessionsCacheTTL.
	LiveSessionsCacheTTL time.Duration

	// MaxBodyBytes caps request bodies; larger ones get 413
	// request_too_large. Default: DefaultMaxBodyBytes (64 KiB).
	MaxBodyBytes int64

	// Registry receives the server's metrics and is served on /metrics.
	// Default: a new registry per server (never the global one) with the
	// Go runtime and process collectors.
	Registry *prometheus.Registry
}

// The error codes of the service's own, on top of the library's table
// ([sessions.HTTPErrorCodes]).
const (
	codeAdminKeyRequired = "admin_key_required" // 401
	codeNotFound         = "not_found"          // 404
	codeMethodNotAllowed = "method_not_allowed" // 405
	codeNotReady         = "not_ready"          // 503 on /readyz
)

// ErrorCodes lists every error code the API answers with: the library's
// table ([sessions.HTTPErrorCodes]) and the service's own (admin key,
// routing, readiness). api/openapi.yaml documents each (a test checks).
func ErrorCodes() []sessions.HTTPErrorCode {
	return append(sessions.HTTPErrorCodes(),
		sessions.HTTPErrorCode{Code: codeAdminKeyRequired, Status: http.StatusUnauthorized, When: "admin route without the right admin key, or none configured"},
		sessions.HTTPErrorCode{Code: codeNotFound, Status: http.StatusNotFound, When: "no such route"},
		sessions.HTTPErrorCode{Code: codeMethodNotAllowed, Status: http.StatusMethodNotAllowed, When: "the route exists under other methods (see Allow)"},
		sessions.HTTPErrorCode{Code: codeNotReady, Status: http.StatusServiceUnavailable, When: "/readyz: the database is unreachable or not migrated"},
	)
}

// Server is the HTTP API. It is safe for concurrent use.
type Server struct {
	m            *sessions.Manager
	log          *slog.Logger
	ready        func(context.Context) error
	readyTimeout time.Duration
	maxBody      int64
	adminDigest  [sha256.Size]byte
	adminEnabled bool
	reg          *prometheus.Registry
	met          *metrics
	handler      http.Handler
}

// New returns the API over m. It fails with an error matching
// [ErrInvalidOptions] when m is nil, the admin key is shorter than
// MinAdminKeyBytes, or a duration or size is negative.
func New(m *sessions.Manager, opts Options) (*Server, error) {
	switch {
	case m == nil:
		return nil, fmt.Errorf("%w: nil manager", ErrInvalidOptions)
	case len(opts.AdminKey) > 0 && len(opts.AdminKey) < MinAdminKeyBytes:
		return nil, fmt.Errorf("%w: admin key is %d bytes, want at least %d", ErrInvalidOptions, len(opts.AdminKey), MinAdminKeyBytes)
	case opts.MaxBodyBytes < 0 || opts.LiveSessionsCacheTTL < 0 || opts.ReadyTimeout < 0:
		return nil, fmt.Errorf("%w: MaxBodyBytes, LiveSessionsCacheTTL and ReadyTimeout must not be negative", ErrInvalidOptions)
	}
	s := &Server{
		m:            m,
		log:          opts.Logger,
		ready:        opts.Ready,
		readyTimeout: opts.ReadyTimeout,
		maxBody:      opts.MaxBodyBytes,
		reg:          opts.Registry,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.readyTimeout == 0 {
		s.readyTimeout = DefaultReadyTimeout
	}
	if s.maxBody == 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if len(opts.AdminKey) > 0 {
		s.adminDigest = sha256.Sum256(opts.AdminKey)
		s.adminEnabled = true
	}
	if s.reg == nil {
		s.reg = newRegistry()
	}
	ttl := opts.LiveSessionsCacheTTL
	if ttl == 0 {
		ttl = DefaultLiveSessionsCacheTTL
	}
	met, err := newMetrics(s.reg, opts.StoreStats, s.m.LastUseStats, opts.LiveSessions, ttl, s.log)
	if err == nil && opts.CacheStats != nil {
		err = registerCacheMetrics(s.reg, opts.CacheStats)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: registering metrics: %v", ErrInvalidOptions, err)
	}
	s.met = met
	s.handler = s.logRequests(s.routes())
	return s, nil
}

// ServeHTTP implements [http.Handler].
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Registry returns the registry /metrics serves.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// ObservePrune counts a pruner pass on /metrics; pass it as
// pgxstore.PruneConfig.OnPrune.
func (s *Server) ObservePrune(res pgxstore.PruneResult, err error) {
	switch {
	case err != nil:
		s.met.pruneErrors.Inc()
	case !res.Skipped:
		s.met.pruned.Add(float64(res.Deleted))
	}
}

// route is one entry of the route table.
type route struct {
	pattern string // "METHOD /path", as http.ServeMux takes it
	admin   bool   // needs the admin key
	handler func(*Server) http.Handler
}

func hf(f func(*Server, http.ResponseWriter, *http.Request)) func(*Server) http.Handler {
	return func(s *Server) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { f(s, w, r) })
	}
}

// routeTable is the API; the package doc and api/openapi.yaml list the
// same routes (a test checks the file).
var routeTable = []route{
	{"POST /v1/sessions", true, hf((*Server).issue)},
	{"POST /v1/sessions/authenticate", false, hf((*Server).authenticate)},
	{"POST /v1/sessions/refresh", false, hf((*Server).refresh)},
	{"POST /v1/sessions/revoke-others", false, hf((*Server).revokeOthers)},
	{"DELETE /v1/sessions/{id}", true, hf((*Server).revoke)},
	{"GET /v1/agents/{agent_id}/sessions", true, hf((*Server).listSessions)},
	{"DELETE /v1/agents/{agent_id}/sessions", true, hf((*Server).revokeAgent)},
	{"GET /v1/agents/{agent_id}/limit", true, hf((*Server).getLimit)},
	{"PUT /v1/agents/{agent_id}/limit", true, hf((*Server).setLimit)},
	{"DELETE /v1/agents/{agent_id}/limit", true, hf((*Server).deleteLimit)},
	{"GET /healthz", false, hf((*Server).healthz)},
	{"GET /readyz", false, hf((*Server).readyz)},
	{"GET /metrics", false, func(s *Server) http.Handler {
		return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
	}},
}

// Routes lists the API's routes as "METHOD /path" patterns, path
// parameters in braces, and whether each needs the admin key.
func Routes() map[string]bool {
	out := make(map[string]bool, len(routeTable))
	for _, rt := range routeTable {
		out[rt.pattern] = rt.admin
	}
	return out
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range routeTable {
		h := rt.handler(s)
		if rt.admin {
			h = s.requireAdmin(h)
		}
		mux.Handle(rt.pattern, h)
	}

	// Everything else: a JSON 405 with Allow when the path exists under
	// other methods, else a JSON 404. "/" matches every request no other
	// pattern does, so the mux never writes its own plain-text errors.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
			if _, pattern := mux.Handler(&http.Request{Method: method, URL: r.URL, Host: r.Host}); pattern != "/" && pattern != "" {
				allow = append(allow, method)
			}
		}
		if len(allow) == 0 {
			writeError(w, http.StatusNotFound, codeNotFound, "no such route: "+r.URL.Path)
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, codeMethodNotAllowed,
			fmt.Sprintf("%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allow, ", ")))
	})
	return mux
}

// requireAdmin answers 401 admin_key_required unless the request carries
// the admin key as a bearer token. Digests of equal length are compared in
// constant time, so neither the key's bytes nor its length leak.
func (s *Server) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.adminEnabled {
			s.met.adminDenials.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="agentsessions"`)
			writeError(w, http.StatusUnauthorized, codeAdminKeyRequired,
				"admin routes are disabled: start serve with --admin-key-file or AGENTSESSIONS_ADMIN_KEY")
			return
		}
		key, ok := bearer(r.Header.Get("Authorization"))
		got := sha256.Sum256([]byte(key))
		if subtle.ConstantTimeCompare(got[:], s.adminDigest[:]) != 1 || !ok {
			s.met.adminDenials.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="agentsessions"`)
			writeError(w, http.StatusUnauthorized, codeAdminKeyRequired,
				"this route needs the admin key: send 'Authorization: Bearer <admin key>'")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearer returns the credentials of a "Bearer <token>" header value.
func bearer(h string) (string, bool) {
	const prefix = "bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	return strings.TrimSpace(h[len(prefix):]), true
}

// statusWriter records the status code for the request log and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests logs one record per request and counts it on /metrics. It
// logs the path (session and agent IDs are not secrets) but never the
// query, the body or any header: tokens travel in bodies, the admin key in
// Authorization.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		d := time.Since(start)
		route := r.Pattern // set by the mux on this request
		if route == "" || route == "/" {
			route = "unmatched"
		}
		s.met.httpRequests.WithLabelValues(route, fmt.Sprint(sw.status)).Inc()
		level := slog.LevelInfo
		if sw.status >= 500 {
			level = slog.LevelWarn
		}
		s.log.LogAttrs(r.Context(), level, "request",
			slog.String("method", r.Method),
			slog.String("route", route),
			slog.String("path", r.URL.Path),
			slog.Int("status", sw.status),
			slog.Duration("duration", d),
			slog.String("remote", r.RemoteAddr),
		)
	})
}
