package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/sessions"
)

func newIssueCmd(g *globalOpts) *cobra.Command {
	var (
		agent    string
		metadata []string
		asJSON   bool
		sec      secretOpts
		mo       managerOpts
	)
	cmd := &cobra.Command{
		Use:   "issue --agent AGENT [--metadata KEY=VALUE ...]",
		Short: "Issue a session for an agent and print its token",
		Long: "issue creates a session for the agent, counted against its limit across every instance, and prints " +
			"the token: the only copy (the store keeps its SHA-256). Sign with the same secret, --ttl, --limit, " +
			"--policy and --max-lifetime as the running instances.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireAgent(agent); err != nil {
				return err
			}
			md, err := parseMetadata(metadata)
			if err != nil {
				return err
			}
			cfg, err := mo.config()
			if err != nil {
				return err
			}
			m, closeFn, err := g.openSigningManager(cmd, &sec, cfg)
			if err != nil {
				return err
			}
			defer closeFn()
			var opts []sessions.IssueOption
			if len(md) > 0 {
				opts = append(opts, sessions.WithMetadata(md))
			}
			iss, err := m.Issue(cmd.Context(), agent, opts...)
			if err != nil {
				return explain(err)
			}
			return writeIssued(cmd.OutOrStdout(), iss, asJSON)
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent ID to issue the session for (required)")
	cmd.Flags().StringArrayVar(&metadata, "metadata", nil, "KEY=VALUE to attach to the session (repeatable; 1 KiB of JSON at most)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON {token, session} instead of a table")
	sec.addFlags(cmd)
	mo.addTTL(cmd)
	mo.addLimit(cmd)
	mo.addPolicy(cmd)
	mo.addMaxLifetime(cmd)
	return cmd
}

func newVerifyCmd(g *globalOpts) *cobra.Command {
	var (
		agent, token string
		asJSON       bool
		sec          secretOpts
	)
	cmd := &cobra.Command{
		Use:   "verify --token TOKEN|- [--agent AGENT]",
		Short: "Check a token and print its session; exit 1 if it is rejected",
		Long: "verify checks a token exactly as the service does: signature (the --secret-file secret or a --verify-secret-file one), expiry, " +
			"and the stored session. With --agent the token must belong to that agent; without it, to the agent " +
			"it names. --token - reads the token from standard input, which keeps it out of ps and shell history.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if agent != "" {
				if err := requireAgent(agent); err != nil {
					return err
				}
			}
			tok, err := readToken(cmd, token)
			if err != nil {
				return err
			}
			m, closeFn, err := g.openSigningManager(cmd, &sec, sessions.Config{TTL: defaultTTL, Limit: defaultLimit})
			if err != nil {
				return err
			}
			defer closeFn()
			var s sessions.Session
			if agent != "" {
				s, err = m.Authenticate(cmd.Context(), tok, agent)
			} else {
				s, err = m.Verify(cmd.Context(), tok)
			}
			if err != nil {
				return explain(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), server.SessionResponse{Session: server.NewSession(s)})
			}
			return printSession(cmd.OutOrStdout(), "", s, nil)
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent the token must belong to (default: the agent named in the token)")
	cmd.Flags().StringVar(&token, "token", "", "the token, or - to read it from standard input (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON {session} instead of a table")
	sec.addFlags(cmd)
	return cmd
}

func newRefreshCmd(g *globalOpts) *cobra.Command {
	var (
		agent, token string
		asJSON       bool
		sec          secretOpts
		mo           managerOpts
	)
	cmd := &cobra.Command{
		Use:   "refresh --agent AGENT --token TOKEN|-",
		Short: "Extend a session and print its new token (the old one stops working)",
		Long: "refresh moves the session's expiry to now + --ttl, never past issue + --max-lifetime, and prints a new " +
			"token for the same session ID; the old token is rejected from then on.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireAgent(agent); err != nil {
				return err
			}
			tok, err := readToken(cmd, token)
			if err != nil {
				return err
			}
			cfg, err := mo.config()
			if err != nil {
				return err
			}
			m, closeFn, err := g.openSigningManager(cmd, &sec, cfg)
			if err != nil {
				return err
			}
			defer closeFn()
			iss, err := m.Refresh(cmd.Context(), tok, agent)
			if err != nil {
				return explain(err)
			}
			return writeIssued(cmd.OutOrStdout(), iss, asJSON)
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent the token belongs to (required)")
	cmd.Flags().StringVar(&token, "token", "", "the token, or - to read it from standard input (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON {token, session} instead of a table")
	sec.addFlags(cmd)
	mo.addTTL(cmd)
	mo.addMaxLifetime(cmd)
	return cmd
}

func newRevokeOthersCmd(g *globalOpts) *cobra.Command {
	var (
		agent, token string
		asJSON       bool
		sec          secretOpts
	)
	cmd := &cobra.Command{
		Use:   "revoke-others --agent AGENT --token TOKEN|-",
		Short: "Revoke every other session of the token's agent (log out my other sessions)",
		Long: "revoke-others checks the token exactly as verify does, then revokes every other session of its agent " +
			"(expired ones included); the token's own session stays. It needs the signing secret (to check the token), " +
			"not an admin key. --json prints {\"revoked\": N}.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireAgent(agent); err != nil {
				return err
			}
			tok, err := readToken(cmd, token)
			if err != nil {
				return err
			}
			m, closeFn, err := g.openSigningManager(cmd, &sec, sessions.Config{TTL: defaultTTL, Limit: defaultLimit})
			if err != nil {
				return err
			}
			defer closeFn()
			n, err := m.RevokeOtherSessions(cmd.Context(), tok, agent)
			if err != nil {
				return explain(err)
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), server.RevokedResponse{Revoked: n})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "revoked %d other %s of agent %s\n", n, plural(n, "session"), agent)
			return err
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent the token belongs to (required)")
	cmd.Flags().StringVar(&token, "token", "", "the token, or - to read it from standard input (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON {revoked: N} instead of text")
	sec.addFlags(cmd)
	return cmd
}

func newRevokeCmd(g *globalOpts) *cobra.Command {
	var (
		sessionID, agent string
		asJSON           bool
	)
	cmd := &cobra.Command{
		Use:   "revoke --session ID | --agent AGENT",
		Short: "Revoke one session, or every session of an agent (log out everywhere)",
		Long: "revoke deletes a session by ID, or with --agent all of the agent's sessions.\n\n" +
			"With --session, a session that does not exist (already revoked, expired and pruned, or never issued) " +
			"is reported as not found, exit status 1. --json prints {\"session_id\": ID, \"revoked\": true} " +
			"when it was revoked and {\"session_id\": ID, \"revoked\": false} (exit 1) when it was not found. " +
			"With --agent, --json prints {\"revoked\": N}, the number of sessions deleted, and exit status is 0 " +
			"even for N = 0.",
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case (sessionID == "") == (agent == ""):
				return usageError{errors.New("pass exactly one of --session ID or --agent AGENT")}
			case agent != "":
				if err := requireAgent(agent); err != nil {
					return err
				}
			}
			m, closeFn, err := g.openManager(cmd.Context(), sessions.Config{TTL: defaultTTL, Limit: defaultLimit})
			if err != nil {
				return err
			}
			defer closeFn()
			out := cmd.OutOrStdout()
			if agent != "" {
				n, err := m.RevokeAgent(cmd.Context(), agent)
				if err != nil {
					return explain(err)
				}
				if asJSON {
					return writeJSON(out, server.RevokedResponse{Revoked: n})
				}
				_, err = fmt.Fprintf(out, "revoked %d %s of agent %s\n", n, plural(n, "session"), agent)
				return err
			}
			revoked, err := m.Revoke(cmd.Context(), sessionID)
			if err != nil {
				return explain(err)
			}
			if asJSON {
				if err := writeJSON(out, sessionRevoked{SessionID: sessionID, Revoked: revoked}); err != nil {
					return err
				}
			} else if revoked {
				if _, err := fmt.Fprintf(out, "revoked session %s\n", sessionID); err != nil {
					return err
				}
			}
			if !revoked {
				return fmt.Errorf("session %s not found: nothing revoked (already revoked, expired and pruned, "+
					"or never issued; 'agentsessions list --agent AGENT' shows an agent's live sessions)", shellQuote(sessionID))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&sessionID, "session", "", "ID of the session to revoke")
	cmd.Flags().StringVar(&agent, "agent", "", "revoke every session of this agent instead")
	cmd.Flags().BoolVar(&asJSON, "json", false,
		"print JSON instead of text: {session_id, revoked: true|false} for --session, {revoked: N} for --agent")
	return cmd
}

// sessionRevoked is revoke --session --json's output. Revoked is false,
// and the exit status 1, when there was no such session.
type sessionRevoked struct {
	SessionID string `json:"session_id"`
	Revoked   bool   `json:"revoked"`
}

func newListCmd(g *globalOpts) *cobra.Command {
	var (
		agent  string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "list --agent AGENT",
		Short: "List an agent's live sessions, oldest first",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireAgent(agent); err != nil {
				return err
			}
			m, closeFn, err := g.openManager(cmd.Context(), sessions.Config{TTL: defaultTTL, Limit: defaultLimit})
			if err != nil {
				return err
			}
			defer closeFn()
			list, err := m.List(cmd.Context(), agent)
			if err != nil {
				return explain(err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				resp := server.SessionsResponse{Sessions: make([]server.Session, 0, len(list))}
				for _, s := range list {
					resp.Sessions = append(resp.Sessions, server.NewSession(s))
				}
				return writeJSON(out, resp)
			}
			if len(list) == 0 {
				_, err := fmt.Fprintf(out, "no live sessions for agent %s\n", agent)
				return err
			}
			t := newTable(out)
			fmt.Fprintln(t, "SESSION\tISSUED AT\tEXPIRES AT\tMETADATA")
			for _, s := range list {
				j := server.NewSession(s)
				md := "-"
				if len(s.Metadata) > 0 {
					md = formatMetadata(s.Metadata)
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", j.ID, j.IssuedAt, j.ExpiresAt, md)
			}
			return t.Flush()
		},
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent whose sessions to list (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON {sessions: [...]} instead of a table")
	return cmd
}

// parseMetadata turns repeated KEY=VALUE flags into a map.
func parseMetadata(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	md := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		switch {
		case !ok || k == "":
			return nil, usageError{fmt.Errorf("--metadata %q: want KEY=VALUE with a non-empty KEY", p)}
		case hasKey(md, k):
			return nil, usageError{fmt.Errorf("--metadata: key %q given twice", k)}
		}
		md[k] = v
	}
	return md, nil
}

// plural returns noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return noun
	}
	return noun + "s"
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

// readToken returns the --token value, or standard input's first line for
// "-". The token is never echoed.
func readToken(cmd *cobra.Command, flag string) (string, error) {
	switch flag {
	case "":
		return "", usageError{errors.New("--token is required: pass --token TOKEN, or --token - to read it from standard input")}
	case "-":
		line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 1<<16)).ReadString('\n')
		if err != nil && err != io.EOF {
			return "", fmt.Errorf("reading the token from standard input: %w", err)
		}
		tok := strings.TrimSpace(line)
		if tok == "" {
			return "", usageError{errors.New("--token -: standard input is empty; pipe the token in, e.g. agentsessions verify --token - < token.txt")}
		}
		return tok, nil
	}
	return flag, nil
}

// warn prints warnings (never secrets) to standard error.
func warn(cmd *cobra.Command, warnings []string) {
	for _, w := range warnings {
		fmt.Fprintln(cmd.ErrOrStderr(), "agentsessions: warning:", w)
	}
}
