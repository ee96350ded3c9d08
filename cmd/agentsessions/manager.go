package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Defaults shared by serve and the session commands; every instance and
// every CLI call on one store should use the same values.
const (
	defaultTTL         = time.Hour
	defaultLimit       = 5
	defaultPolicy      = "reject"
	defaultMaxLifetime = sessions.DefaultMaxLifetime
)

// managerOpts are the manager's flags; each command adds those it uses.
type managerOpts struct {
	ttl         time.Duration
	limit       int
	policy      string
	maxLifetime time.Duration
	idleTimeout time.Duration
	cmd         *cobra.Command // the command the flags were added to
}

func (o *managerOpts) addIdleTimeout(cmd *cobra.Command) {
	o.cmd = cmd
	cmd.Flags().DurationVar(&o.idleTimeout, "idle-timeout", 0,
		"expire a session not used for this long, whatever its token's expiry (whole seconds, >= 1s; "+
			"each instance writes last uses every tenth of it); 0 disables it")
}

func (o *managerOpts) addTTL(cmd *cobra.Command) {
	o.cmd = cmd
	cmd.Flags().DurationVar(&o.ttl, "ttl", defaultTTL, "session lifetime from issue or refresh (whole seconds, >= 1s)")
}

func (o *managerOpts) addLimit(cmd *cobra.Command) {
	o.cmd = cmd
	cmd.Flags().IntVar(&o.limit, "limit", defaultLimit, "live sessions per agent, across every instance, unless the agent has an override")
}

func (o *managerOpts) addPolicy(cmd *cobra.Command) {
	o.cmd = cmd
	cmd.Flags().StringVar(&o.policy, "policy", defaultPolicy, "what issue does for an agent at its limit: reject, evict-oldest or evict-least-recently-used")
}

func (o *managerOpts) addMaxLifetime(cmd *cobra.Command) {
	o.cmd = cmd
	cmd.Flags().DurationVar(&o.maxLifetime, "max-lifetime", defaultMaxLifetime,
		"longest a session may live however often it is refreshed (>= --ttl; default 24h, or --ttl if longer)")
}

// config validates the flags (before anything connects) and returns the
// manager's config without its secret.
func (o *managerOpts) config() (sessions.Config, error) {
	cfg := sessions.Config{TTL: defaultTTL, Limit: defaultLimit}
	if o.has("ttl") {
		switch {
		case o.ttl < time.Second:
			return cfg, usageError{fmt.Errorf("--ttl must be at least 1s, got %s", o.ttl)}
		case o.ttl%time.Second != 0:
			return cfg, usageError{fmt.Errorf("--ttl must be whole seconds (tokens carry seconds), got %s", o.ttl)}
		}
		cfg.TTL = o.ttl
	}
	if o.has("limit") {
		if o.limit < 1 {
			return cfg, usageError{fmt.Errorf("--limit must be >= 1, got %d", o.limit)}
		}
		cfg.Limit = o.limit
	}
	if o.policy != "" {
		p, err := sessions.ParseLimitPolicy(o.policy)
		if err != nil {
			return cfg, usageError{fmt.Errorf("--policy must be reject, evict-oldest or evict-least-recently-used, got %q", o.policy)}
		}
		cfg.Policy = p
	}
	if o.has("idle-timeout") && o.idleTimeout != 0 {
		switch {
		case o.idleTimeout < time.Second:
			return cfg, usageError{fmt.Errorf("--idle-timeout must be 0 (off) or at least 1s, got %s", o.idleTimeout)}
		case o.idleTimeout%time.Second != 0:
			return cfg, usageError{fmt.Errorf("--idle-timeout must be whole seconds, got %s", o.idleTimeout)}
		}
		cfg.IdleTimeout = o.idleTimeout
	}
	if o.has("max-lifetime") && o.cmd.Flags().Changed("max-lifetime") {
		if o.maxLifetime < cfg.TTL {
			return cfg, usageError{fmt.Errorf("--max-lifetime (%s) must not be below --ttl (%s)", o.maxLifetime, cfg.TTL)}
		}
		cfg.MaxLifetime = o.maxLifetime
	}
	return cfg, nil
}

// has reports whether the command has the flag.
func (o *managerOpts) has(flag string) bool {
	return o.cmd != nil && o.cmd.Flags().Lookup(flag) != nil
}

// openManager connects to the database and returns a manager on it; the
// caller calls close when done. Without a secret (commands that sign and
// verify nothing, such as list and revoke) the manager gets a random one.
func (g *globalOpts) openManager(ctx context.Context, cfg sessions.Config) (*sessions.Manager, func(), error) {
	pool, err := g.openPool(ctx)
	if err != nil {
		return nil, nil, err
	}
	m, err := newPostgresManager(pool, cfg)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return m, pool.Close, nil
}

// openSigningManager is openManager for commands that sign or check
// tokens: the secret (required) and verify-only secrets come from sec, and
// its warnings go to stderr before anything connects.
func (g *globalOpts) openSigningManager(cmd *cobra.Command, sec *secretOpts, cfg sessions.Config) (*sessions.Manager, func(), error) {
	ls, err := sec.load(true)
	if err != nil {
		return nil, nil, err
	}
	warn(cmd, ls.warnings)
	cfg.Secret, cfg.VerifySecrets = ls.secret, ls.verify
	return g.openManager(cmd.Context(), cfg)
}

func newPostgresManager(pool *pgxpool.Pool, cfg sessions.Config) (*sessions.Manager, error) {
	store, err := pgxstore.New(pool, nil)
	if err != nil {
		return nil, err
	}
	if cfg.Secret == nil {
		cfg.Secret = randomSecret()
	}
	return sessions.New(store, cfg)
}

// requireAgent validates --agent before anything connects.
func requireAgent(agent string) error {
	if agent == "" {
		return usageError{errors.New("--agent is required (e.g. --agent did:agentmesh:planner)")}
	}
	if err := sessions.ValidateAgentID(agent); err != nil {
		return usageError{fmt.Errorf("--agent: %s", strings.TrimPrefix(err.Error(), "sessions: "))}
	}
	return nil
}

// explain turns a library error into one that says what to do. The
// classification is the library's one table (sessions.HTTPError), as the
// API's; on top of it the CLI adds advice, and, since its user is the
// operator, the detail the API keeps from clients (which token check
// failed, the store's cause).
func explain(err error) error {
	var le *sessions.LimitError
	var denied *sessions.AccessDeniedError
	switch info := sessions.HTTPError(err); info.Code {
	case sessions.CodeLimitExceeded:
		if errors.As(err, &le) {
			return fmt.Errorf("agent %q already holds its limit of %d live sessions: revoke one "+
				"(agentsessions revoke --session ID), raise its limit (agentsessions limits set --agent %s --limit N), "+
				"or issue with --policy evict-oldest", le.AgentID, le.Limit, shellQuote(le.AgentID))
		}
		return errors.New(info.Message)
	case sessions.CodeInvalidToken:
		return fmt.Errorf("token rejected: it is malformed or not signed with this secret (%s)", clean(err))
	case sessions.CodeExpired:
		return errors.New("token rejected: the session has expired; issue a new one")
	case sessions.CodeLifetimeExceeded:
		return errors.New("token rejected for refresh: the session reached --max-lifetime; issue a new one")
	case sessions.CodeForbidden:
		return errors.New("token rejected: it belongs to another agent (check --agent)")
	case sessions.CodeUnauthorized:
		switch {
		case errors.As(err, &denied) && denied.Reason == sessions.ReasonUnknownSession:
			return errors.New("token rejected: unknown session (revoked, expired and pruned, or issued by another store); issue a new one")
		case errors.As(err, &denied) && (denied.Reason == sessions.ReasonDigestMismatch || denied.Reason == sessions.ReasonMetadataMismatch):
			return fmt.Errorf("token rejected: %s (superseded by a refresh, or the session was re-issued); use the latest token or issue a new one", denied.Reason)
		case errors.As(err, &denied):
			return fmt.Errorf("token rejected: %s", denied.Reason)
		}
		return errors.New("token rejected: " + info.Message)
	case sessions.CodeInvalidMetadata, sessions.CodeInvalidLimit, sessions.CodeInvalidAgentID, sessions.CodeInvalidSessionID,
		sessions.CodeMissingAgentID, sessions.CodeMissingToken:
		return usageError{errors.New(clean(err))}
	case sessions.CodeStoreUnavailable:
		return fmt.Errorf("the session store failed (is the database up and migrated? try 'agentsessions migrate status'): %s", clean(err))
	case sessions.CodeCanceled:
		return fmt.Errorf("interrupted: %s", clean(err))
	case sessions.CodeInternal:
		if errors.As(err, &denied) && denied.Reason == sessions.ReasonClockBeforeEpoch {
			return errors.New("the system clock reads before 1970: fix the clock (NTP) and retry")
		}
	}
	return err
}

func clean(err error) string { return strings.ReplaceAll(err.Error(), "sessions: ", "") }

// shellQuote quotes s for a copy-pasteable command line when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r == ':' || r == '-' || r == '_' || r == '.' || r == '/' || r == '@' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9'))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Output.

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

// printSession prints one session as "key  value" lines, token first if
// given.
// writeIssued prints an issued or refreshed session: its token, session
// and any evicted IDs, as JSON or as a table.
func writeIssued(w io.Writer, iss sessions.Issued, asJSON bool) error {
	if asJSON {
		return writeJSON(w, server.IssuedResponse{Token: iss.Token, Session: server.NewSession(iss.Session), Evicted: iss.Evicted})
	}
	return printSession(w, iss.Token, iss.Session, iss.Evicted)
}

func printSession(w io.Writer, token string, s sessions.Session, evicted []string) error {
	t := newTable(w)
	if token != "" {
		fmt.Fprintf(t, "token\t%s\n", token)
	}
	j := server.NewSession(s)
	fmt.Fprintf(t, "session\t%s\n", j.ID)
	fmt.Fprintf(t, "agent\t%s\n", j.AgentID)
	fmt.Fprintf(t, "issued at\t%s\n", j.IssuedAt)
	fmt.Fprintf(t, "expires at\t%s\n", j.ExpiresAt)
	if len(s.Metadata) > 0 {
		fmt.Fprintf(t, "metadata\t%s\n", formatMetadata(s.Metadata))
	}
	for _, id := range evicted {
		fmt.Fprintf(t, "evicted\t%s\n", id)
	}
	return t.Flush()
}

func formatMetadata(md map[string]string) string {
	b, _ := json.Marshal(md) // sorted keys, quoted: unambiguous for any content
	return string(b)
}
