package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/agentsessions/agentsessions/mcpsessions/gosdkauth"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Kind is the kind of handle a counter is known by.
const Kind = "counter"

// Counters keeps the counters: each is a state handle of kind "counter"
// (who may use it, until when) and a row of the example's own table
// example_counters (its value), keyed by the handle's ID. Every instance
// shares both through PostgreSQL, so any instance serves any call.
type Counters struct {
	pool *pgxpool.Pool
	h    *sessions.Handles
	log  *slog.Logger
}

// NewCounters creates the example's table if it is not there. h must have
// been given the kind [Kind].
func NewCounters(ctx context.Context, pool *pgxpool.Pool, h *sessions.Handles, log *slog.Logger) (*Counters, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Under a transaction-scoped advisory lock, so instances starting
	// together do not race on CREATE TABLE IF NOT EXISTS.
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('example_counters'))`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS example_counters (
	handle_id  text PRIMARY KEY,
	principal  text NOT NULL,
	value      bigint NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now()
)`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("counter: create table: %w", err)
	}
	return &Counters{pool: pool, h: h, log: log}, nil
}

type createOut struct {
	CounterID string `json:"counter_id" jsonschema:"the new counter's ID: pass it to increment, read and destroy_counter"`
	Value     int64  `json:"value"`
	ExpiresAt string `json:"expires_at" jsonschema:"when the counter expires (RFC 3339)"`
}

type counterArg struct {
	CounterID string `json:"counter_id" jsonschema:"a counter's ID, from create_counter"`
}

type valueOut struct {
	Value int64 `json:"value"`
}

// Server returns the example's MCP server: create_counter, increment and
// read, plus list_counters and destroy_counter from
// gosdkauth.RegisterHandleTools. Every tool acts for the caller of the
// verified bearer token only.
func (c *Counters) Server() (*mcp.Server, error) {
	s := mcp.NewServer(&mcp.Implementation{Name: "counter-example", Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "create_counter", Description: "Creates a counter at 0 and returns its ID."},
		func(ctx context.Context, req *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, createOut, error) {
			principal, ok := gosdkauth.PrincipalFromRequest(ctx, req)
			if !ok {
				return nil, createOut{}, errors.New("no verified session: call with a bearer token")
			}
			out, err := c.create(ctx, principal)
			return nil, out, err
		})
	mcp.AddTool(s, &mcp.Tool{Name: "increment", Description: "Adds 1 to one of your counters and returns its new value."},
		func(ctx context.Context, req *mcp.CallToolRequest, in counterArg) (*mcp.CallToolResult, valueOut, error) {
			return c.use(ctx, req, in, `UPDATE example_counters SET value = value + 1 WHERE handle_id = $1 AND principal = $2 RETURNING value`)
		})
	mcp.AddTool(s, &mcp.Tool{Name: "read", Description: "Returns the value of one of your counters."},
		func(ctx context.Context, req *mcp.CallToolRequest, in counterArg) (*mcp.CallToolResult, valueOut, error) {
			return c.use(ctx, req, in, `SELECT value FROM example_counters WHERE handle_id = $1 AND principal = $2`)
		})
	if err := gosdkauth.RegisterHandleTools(s, c.h, Kind, gosdkauth.HandleToolsOptions{}); err != nil {
		return nil, err
	}
	return s, nil
}

// create mints the handle, then the row. Should the handle be destroyed
// before the row exists, its event would find no row to delete: so the
// handle is resolved again once the row is in.
func (c *Counters) create(ctx context.Context, principal string) (createOut, error) {
	h, err := c.h.Create(ctx, principal, Kind)
	if err != nil {
		return createOut{}, toolError(err)
	}
	if _, err := c.pool.Exec(ctx, `INSERT INTO example_counters (handle_id, principal) VALUES ($1, $2)`, h.ID, principal); err != nil {
		_, _ = c.h.Destroy(context.WithoutCancel(ctx), principal, Kind, h.Handle)
		return createOut{}, toolError(fmt.Errorf("%w: %w", sessions.ErrStore, err))
	}
	if _, err := c.h.Resolve(ctx, principal, Kind, h.Handle); err != nil {
		c.deleteRow(context.WithoutCancel(ctx), h.ID)
		return createOut{}, toolError(err)
	}
	return createOut{CounterID: h.Handle, ExpiresAt: h.ExpiresAt.UTC().Format(time.RFC3339)}, nil
}

// use authorizes the call by resolving the caller's handle (another
// principal's handle is unknown, exactly like a made-up one), then runs
// query on the counter's row.
func (c *Counters) use(ctx context.Context, req *mcp.CallToolRequest, in counterArg, query string) (*mcp.CallToolResult, valueOut, error) {
	principal, ok := gosdkauth.PrincipalFromRequest(ctx, req)
	if !ok {
		return nil, valueOut{}, errors.New("no verified session: call with a bearer token")
	}
	h, err := c.h.Resolve(ctx, principal, Kind, in.CounterID)
	if err != nil {
		return nil, valueOut{}, toolError(err)
	}
	var v int64
	switch err := c.pool.QueryRow(ctx, query, h.ID, principal).Scan(&v); {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, valueOut{}, toolError(sessions.ErrUnknownHandle) // destroyed meanwhile
	case err != nil:
		return nil, valueOut{}, toolError(fmt.Errorf("%w: %w", sessions.ErrStore, err))
	}
	return nil, valueOut{Value: v}, nil
}

// toolError is the client-safe text of sessions.HTTPError, such as
// "unknown_handle: ...": never database detail.
func toolError(err error) error {
	info := sessions.HTTPError(err)
	return errors.New(info.Code + ": " + info.Message)
}

// OnEvent is for pgxstore.HandleEventsConfig.OnEvent (Kinds: [Kind]): a
// counter whose handle is gone, destroyed or expired on any instance,
// loses its row; after a Resync (each (re)connection of the listener),
// rows of handles that went while nobody listened are found and deleted.
// Delivery is at least once, and every instance runs it: deleting a row
// twice is harmless.
func (c *Counters) OnEvent(ctx context.Context) func(pgxstore.HandleEvent) {
	return func(ev pgxstore.HandleEvent) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		switch {
		case ev.Resync:
			if err := c.Reconcile(ctx); err != nil {
				c.log.WarnContext(ctx, "counter: reconcile", slog.Any("error", err))
			}
		case ev.Kind == Kind:
			c.deleteRow(ctx, ev.ID)
		}
	}
}

func (c *Counters) deleteRow(ctx context.Context, id string) {
	if _, err := c.pool.Exec(ctx, `DELETE FROM example_counters WHERE handle_id = $1`, id); err != nil {
		c.log.WarnContext(ctx, "counter: delete row", slog.String("handle_id", id), slog.Any("error", err))
	}
}

// Reconcile deletes the rows whose handles are gone: for each principal
// with rows, those not among its live handles (Handles.List). Only rows
// inserted before it started are considered: a row is inserted after its
// handle was created, so the handle of such a row, if live, is in the
// list.
func (c *Counters) Reconcile(ctx context.Context) error {
	var start time.Time
	if err := c.pool.QueryRow(ctx, `SELECT now()`).Scan(&start); err != nil {
		return err
	}
	rows, err := c.pool.Query(ctx, `SELECT DISTINCT principal FROM example_counters WHERE created_at < $1`, start)
	if err != nil {
		return err
	}
	principals, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, p := range principals {
		live, err := c.h.List(ctx, p, Kind)
		if err != nil {
			return err
		}
		ids := make([]string, 0, len(live))
		for _, h := range live {
			ids = append(ids, h.ID)
		}
		if _, err := c.pool.Exec(ctx, `DELETE FROM example_counters WHERE principal = $1 AND created_at < $2 AND NOT (handle_id = ANY($3))`,
			p, start, ids); err != nil {
			return err
		}
	}
	return nil
}
