package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

const (
	issueExample = `{"agent_id":"did:agentmesh:planner","metadata":{"client":"cli"}}`
	tokenExample = `{"agent_id":"did:agentmesh:planner","token":"<token>"}`
	limitExample = `{"limit":10}`
)

func (s *Server) issue(w http.ResponseWriter, r *http.Request) {
	var req issueRequest
	if err := decode(w, r, s.maxBody, &req, issueExample); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.AgentID == "" {
		s.fail(w, r, &missingField{"agent_id", issueExample, sessions.ErrMissingAgentID})
		return
	}
	var opts []sessions.IssueOption
	if len(req.Metadata) > 0 {
		opts = append(opts, sessions.WithMetadata(req.Metadata))
	}
	var iss sessions.Issued
	err := s.timed(r.Context(), "issue", func(ctx context.Context) (err error) {
		iss, err = s.m.Issue(ctx, req.AgentID, opts...)
		return err
	})
	if err != nil {
		if errors.Is(err, sessions.ErrLimitExceeded) {
			s.met.limitDenials.Inc()
		}
		s.fail(w, r, err)
		return
	}
	s.met.issued.Inc()
	s.met.evicted.Add(float64(len(iss.Evicted)))
	writeJSON(w, http.StatusCreated, issuedResponse(iss))
}

// decodeToken reads the body of the token routes; both fields are
// required: a missing or empty one is a 400 naming it, not a token
// failure.
func decodeToken(w http.ResponseWriter, r *http.Request, max int64, req *tokenRequest) error {
	if err := decode(w, r, max, req, tokenExample); err != nil {
		return err
	}
	switch {
	case req.AgentID == "":
		return &missingField{"agent_id", tokenExample, sessions.ErrMissingAgentID}
	case req.Token == "":
		return &missingField{"token", tokenExample, sessions.ErrMissingToken}
	}
	return nil
}

func issuedResponse(iss sessions.Issued) IssuedResponse {
	return IssuedResponse{Token: iss.Token, Session: NewSession(iss.Session), Evicted: iss.Evicted}
}

func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) {
	var req tokenRequest
	if err := decodeToken(w, r, s.maxBody, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	var sess sessions.Session
	err := s.timed(r.Context(), "authenticate", func(ctx context.Context) (err error) {
		sess, err = s.m.Authenticate(ctx, req.Token, req.AgentID)
		return err
	})
	if err != nil {
		s.met.authFailures.WithLabelValues(sessions.FailureReason(err)).Inc()
		s.fail(w, r, err)
		return
	}
	s.met.authOK.Inc()
	writeJSON(w, http.StatusOK, SessionResponse{Session: NewSession(sess)})
}

func (s *Server) refresh(w http.ResponseWriter, r *http.Request) {
	var req tokenRequest
	if err := decodeToken(w, r, s.maxBody, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	var iss sessions.Issued
	err := s.timed(r.Context(), "refresh", func(ctx context.Context) (err error) {
		iss, err = s.m.Refresh(ctx, req.Token, req.AgentID)
		return err
	})
	if err != nil {
		s.met.authFailures.WithLabelValues(sessions.FailureReason(err)).Inc()
		s.fail(w, r, err)
		return
	}
	s.met.refreshed.Inc()
	writeJSON(w, http.StatusOK, issuedResponse(iss))
}

// revokeOthers is "log out my other sessions": token-authenticated, so the
// holder of a live session can do it for its own agent without the admin
// key.
func (s *Server) revokeOthers(w http.ResponseWriter, r *http.Request) {
	var req tokenRequest
	if err := decodeToken(w, r, s.maxBody, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	var n int
	err := s.timed(r.Context(), "revoke_others", func(ctx context.Context) (err error) {
		n, err = s.m.RevokeOtherSessions(ctx, req.Token, req.AgentID)
		return err
	})
	if err != nil {
		s.met.authFailures.WithLabelValues(sessions.FailureReason(err)).Inc()
		s.fail(w, r, err)
		return
	}
	s.met.revoked.Add(float64(n))
	writeJSON(w, http.StatusOK, RevokedResponse{Revoked: n})
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var revoked bool
	err := s.timed(r.Context(), "revoke", func(ctx context.Context) (err error) {
		revoked, err = s.m.Revoke(ctx, id)
		return err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// 204 either way: revoking is idempotent, and a 404 would only tell
	// the admin what a list shows. The metric counts real revocations.
	if revoked {
		s.met.revoked.Inc()
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	agent := r.PathValue("agent_id")
	var list []sessions.Session
	err := s.timed(r.Context(), "list", func(ctx context.Context) (err error) {
		list, err = s.m.List(ctx, agent)
		return err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := SessionsResponse{Sessions: make([]Session, 0, len(list))}
	for _, sess := range list {
		out.Sessions = append(out.Sessions, NewSession(sess))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) revokeAgent(w http.ResponseWriter, r *http.Request) {
	agent := r.PathValue("agent_id")
	var n int
	err := s.timed(r.Context(), "revoke_agent", func(ctx context.Context) (err error) {
		n, err = s.m.RevokeAgent(ctx, agent)
		return err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.met.revoked.Add(float64(n))
	writeJSON(w, http.StatusOK, RevokedResponse{Revoked: n})
}

func (s *Server) getLimit(w http.ResponseWriter, r *http.Request) {
	s.writeLimit(w, r, r.PathValue("agent_id"))
}

func (s *Server) setLimit(w http.ResponseWriter, r *http.Request) {
	agent := r.PathValue("agent_id")
	var req limitRequest
	if err := decode(w, r, s.maxBody, &req, limitExample); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Limit == nil {
		s.fail(w, r, badRequest("missing field \"limit\"; send an object like %s", limitExample))
		return
	}
	if err := s.timed(r.Context(), "set_limit", func(ctx context.Context) error { return s.m.SetAgentLimit(ctx, agent, *req.Limit) }); err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeLimit(w, r, agent)
}

func (s *Server) deleteLimit(w http.ResponseWriter, r *http.Request) {
	agent := r.PathValue("agent_id")
	err := s.timed(r.Context(), "delete_limit", func(ctx context.Context) error {
		_, err := s.m.DeleteAgentLimit(ctx, agent)
		return err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeLimit(w, r, agent)
}

// writeLimit answers with the agent's effective limit after a change, read
// back from the store.
func (s *Server) writeLimit(w http.ResponseWriter, r *http.Request, agent string) {
	var l sessions.AgentLimit
	err := s.timed(r.Context(), "get_limit", func(ctx context.Context) (err error) {
		l, err = s.m.AgentLimit(ctx, agent)
		return err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, LimitResponse{AgentID: agent, Limit: l.Limit, Override: l.Override})
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), s.readyTimeout)
		defer cancel()
		if err := s.ready(ctx); err != nil {
			s.log.WarnContext(r.Context(), "not ready", "error", err)
			msg := "the session store is not ready; see the server log"
			var nr *pgxstore.NotReadyError
			if errors.As(err, &nr) {
				msg = nr.Public
			}
			writeError(w, http.StatusServiceUnavailable, codeNotReady, msg)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// timed runs one manager call and records its latency under op.
func (s *Server) timed(ctx context.Context, op string, fn func(context.Context) error) error {
	start := time.Now()
	err := fn(ctx)
	s.met.opDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	return err
}

// fail answers err as [sessions.HTTPError] says: status, code, message and
// Retry-After. Store failures are logged with their cause (the client gets
// a generic message: the cause may name hosts or SQL), other 5xx as
// errors.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	info := sessions.HTTPError(err)
	switch {
	case info.Code == sessions.CodeStoreUnavailable:
		s.log.WarnContext(r.Context(), "store failure", "route", r.Pattern, "error", err)
	case info.Status >= 500:
		s.log.ErrorContext(r.Context(), "internal error", "route", r.Pattern, "error", err)
	}
	if ra := info.RetryAfter(); ra != "" {
		w.Header().Set("Retry-After", ra)
	}
	writeError(w, info.Status, info.Code, info.Message)
}
