package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/sessions"
)

// limitsList is the --json output of limits list.
type limitsList struct {
	Limits []limitOverride `json:"limits"`
}

type limitOverride struct {
	AgentID string `json:"agent_id"`
	Limit   int    `json:"limit"`
}

func newLimitsCmd(g *globalOpts) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "limits",
		Short: "Show and change per-agent session limits (overrides of the instances' --limit)",
		Long: "limits manages per-agent overrides of the instances' --limit. They live in the database, so every " +
			"instance applies a change at once. Lowering a limit revokes nothing: the agent cannot issue until it is under it. " +
			"With --kind KIND they are the per-principal limits of state handles of that kind (sessions.Handles) instead.",
		Args: cobra.ArbitraryArgs,
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown limits subcommand %q (want set, get, delete or list)", args[0])}
			}
			return usageError{errors.New("limits needs a subcommand: set, get, delete or list")}
		},
	}
	cmd.AddCommand(
		newLimitCmd(g, "set", "Override one agent's session limit, on every instance"),
		newLimitCmd(g, "get", "Print one agent's effective session limit"),
		newLimitCmd(g, "delete", "Remove one agent's override, so the instances' --limit applies again"),
		newLimitsListCmd(g),
	)
	return cmd
}

// newLimitCmd builds limits set, get and delete. Each prints the agent's
// effective limit afterwards, read back from the store.
func newLimitCmd(g *globalOpts, verb, short string) *cobra.Command {
	var (
		agent    string
		kind     string
		asJSON   bool
		limit    int
		fallback int // the instances' --limit, reported when there is no override
	)
	use := verb + " --agent AGENT"
	if verb == "set" {
		use += " --limit N"
	}
	cmd := &cobra.Command{Use: use, Short: short, Args: exactArgs(0)}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := requireAgent(agent); err != nil {
			return err
		}
		if verb == "set" {
			if !cmd.Flags().Changed("limit") {
				return usageError{errors.New("--limit N is required: the agent's new limit (>= 1)")}
			}
			if limit < 1 {
				return usageError{fmt.Errorf("--limit must be >= 1, got %d", limit)}
			}
		}
		if fallback < 1 {
			return usageError{fmt.Errorf("--default-limit must be >= 1, got %d", fallback)}
		}
		m, closeFn, err := g.openManager(cmd.Context(), sessions.Config{TTL: defaultTTL, Limit: fallback})
		if err != nil {
			return err
		}
		defer closeFn()
		ctx := cmd.Context()
		lim, err := limitsOf(m, kind, fallback)
		if err != nil {
			return err
		}
		switch verb {
		case "set":
			err = lim.set(ctx, agent, limit)
		case "delete":
			_, err = lim.del(ctx, agent)
		}
		if err != nil {
			return explain(err)
		}
		l, err := lim.get(ctx, agent)
		if err != nil {
			return explain(err)
		}
		return printLimit(cmd.OutOrStdout(), asJSON, agent, l)
	}
	cmd.Flags().StringVar(&agent, "agent", "", "agent ID (required)")
	cmd.Flags().StringVar(&kind, "kind", sessions.KindSession, "the kind: session (agent sessions), or a state handle kind")
	if verb == "set" {
		cmd.Flags().IntVar(&limit, "limit", 0, "the agent's new limit of live sessions (required, >= 1)")
	}
	cmd.Flags().IntVar(&fallback, "default-limit", defaultLimit,
		"the --limit the instances run with, reported when the agent has no override")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON {agent_id, limit, override} instead of text")
	return cmd
}

func printLimit(w io.Writer, asJSON bool, agent string, l sessions.AgentLimit) error {
	if asJSON {
		return writeJSON(w, server.LimitResponse{AgentID: agent, Limit: l.Limit, Override: l.Override})
	}
	if l.Override {
		_, err := fmt.Fprintf(w, "agent %s: limit %d (override)\n", agent, l.Limit)
		return err
	}
	_, err := fmt.Fprintf(w, "agent %s: limit %d (no override: the instances' --limit applies; %d assumed, see --default-limit)\n",
		agent, l.Limit, l.Limit)
	return err
}

func newLimitsListCmd(g *globalOpts) *cobra.Command {
	var (
		asJSON bool
		kind   string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List every per-agent override",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, closeFn, err := g.openManager(cmd.Context(), sessions.Config{TTL: defaultTTL, Limit: defaultLimit})
			if err != nil {
				return err
			}
			defer closeFn()
			lim, err := limitsOf(m, kind, defaultLimit)
			if err != nil {
				return err
			}
			list, err := lim.list(cmd.Context())
			if err != nil {
				return explain(err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				resp := limitsList{Limits: make([]limitOverride, 0, len(list))}
				for _, o := range list {
					resp.Limits = append(resp.Limits, limitOverride{AgentID: o.AgentID, Limit: o.Limit})
				}
				return writeJSON(out, resp)
			}
			if len(list) == 0 {
				_, err := fmt.Fprintln(out, "no per-agent overrides: every agent has the instances' --limit")
				return err
			}
			t := newTable(out)
			fmt.Fprintln(t, "AGENT\tLIMIT")
			for _, o := range list {
				fmt.Fprintf(t, "%s\t%d\n", o.AgentID, o.Limit)
			}
			return t.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON {limits: [{agent_id, limit}]} instead of a table")
	cmd.Flags().StringVar(&kind, "kind", sessions.KindSession, "the kind: session (agent sessions), or a state handle kind")
	return cmd
}

// limits is the override store of one kind: the manager's for agent
// sessions, a Handles' for a kind of state handle.
type limits struct {
	get  func(context.Context, string) (sessions.AgentLimit, error)
	set  func(context.Context, string, int) error
	del  func(context.Context, string) (bool, error)
	list func(context.Context) ([]sessions.AgentLimitOverride, error)
}

// limitsOf returns the overrides of kind; fallback is the limit reported
// for a principal without one.
func limitsOf(m *sessions.Manager, kind string, fallback int) (limits, error) {
	if kind == sessions.KindSession {
		return limits{get: m.AgentLimit, set: m.SetAgentLimit, del: m.DeleteAgentLimit, list: m.ListAgentLimits}, nil
	}
	if err := sessions.ValidateKind(kind); err != nil {
		return limits{}, usageError{fmt.Errorf("--kind: %w", err)}
	}
	h, err := sessions.NewHandles(m, sessions.HandleKind{Name: kind, TTL: defaultTTL, Limit: fallback})
	if err != nil {
		return limits{}, err
	}
	return limits{
		get:  func(ctx context.Context, p string) (sessions.AgentLimit, error) { return h.Limit(ctx, p, kind) },
		set:  func(ctx context.Context, p string, n int) error { return h.SetLimit(ctx, p, kind, n) },
		del:  func(ctx context.Context, p string) (bool, error) { return h.DeleteLimit(ctx, p, kind) },
		list: func(ctx context.Context) ([]sessions.AgentLimitOverride, error) { return h.ListLimits(ctx, kind) },
	}, nil
}
