// Package handletools is what the list and destroy tools of state handles
// do, whichever MCP SDK serves them: names, JSON schemas, the calls to
// sessions.Handles and the client-safe error texts. The SDK packages
// (mcpsessions for mcp-go, gosdkauth for go-sdk) wrap it in their own
// typed-tool APIs.
package handletools

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
)

// Config is what the SDK packages' options carry.
type Config struct {
	ListName, DestroyName               string
	ListDescription, DestroyDescription string
}

// Tools is the list and destroy tools of one kind.
type Tools struct {
	H    *sessions.Handles
	Kind string

	ListName, DestroyName               string
	ListDescription, DestroyDescription string

	// IDKey is the destroy tool's argument ("<kind>_id"), ListKey the
	// list's result field ("<kind>s").
	IDKey, ListKey string
}

// toolName is what MCP 2025-11-25 recommends for tool names.
var toolName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// ErrNoSession is the tool error of a call whose context carries no
// verified session.
var ErrNoSession = errors.New("no verified agentsessions session in this request: the server must authenticate it " +
	"with RequireBearerToken (a bearer token issued to the caller's agent)")

// New checks the arguments and fills in the defaults.
func New(h *sessions.Handles, kind string, c Config) (*Tools, error) {
	if h == nil {
		return nil, errors.New("handles must not be nil")
	}
	if !slices.ContainsFunc(h.Kinds(), func(k sessions.HandleKind) bool { return k.Name == kind }) {
		return nil, fmt.Errorf("kind %q is not one the Handles were given", kind)
	}
	t := &Tools{H: h, Kind: kind, IDKey: kind + "_id", ListKey: kind + "s",
		ListName: c.ListName, DestroyName: c.DestroyName,
		ListDescription: c.ListDescription, DestroyDescription: c.DestroyDescription}
	if t.ListName == "" {
		t.ListName = "list_" + kind + "s"
	}
	if t.DestroyName == "" {
		t.DestroyName = "destroy_" + kind
	}
	for _, n := range []string{t.ListName, t.DestroyName} {
		if !toolName.MatchString(n) {
			return nil, fmt.Errorf("tool name %q is not 1 to 128 of [A-Za-z0-9_.-]", n)
		}
	}
	if t.ListName == t.DestroyName {
		return nil, fmt.Errorf("the list and destroy tools are both named %q", t.ListName)
	}
	if t.ListDescription == "" {
		t.ListDescription = fmt.Sprintf("Lists your live %s handles (IDs), oldest first, with when each was created and when it expires.", kind)
	}
	if t.DestroyDescription == "" {
		t.DestroyDescription = fmt.Sprintf("Destroys one of your %s handles by its ID and frees what it holds. "+
			"Reports destroyed: false, and destroys nothing, when no %s of yours has that ID.", kind, kind)
	}
	return t, nil
}

// Entry is one handle in the list tool's result.
type Entry struct {
	ID        string `json:"id"`
	CreatedAt string `json:"created_at"` // RFC 3339, UTC
	ExpiresAt string `json:"expires_at"` // RFC 3339, UTC
}

// DestroyResult is the destroy tool's result.
type DestroyResult struct {
	Destroyed bool `json:"destroyed"`
}

// ListInputSchema is the list tool's input: no arguments.
func (t *Tools) ListInputSchema() map[string]any {
	return map[string]any{"type": "object", "properties": map[string]any{}, "additionalProperties": false}
}

// ListOutputSchema is {"<kind>s": [Entry...]}.
func (t *Tools) ListOutputSchema() map[string]any {
	entry := map[string]any{
		"type": "object",
		"properties": map[string]any{
			"id":         map[string]any{"type": "string", "description": fmt.Sprintf("the %s's ID, as %s takes it", t.Kind, t.DestroyName)},
			"created_at": map[string]any{"type": "string", "format": "date-time"},
			"expires_at": map[string]any{"type": "string", "format": "date-time"},
		},
		"required": []any{"id", "created_at", "expires_at"},
	}
	return map[string]any{
		"type":       "object",
		"properties": map[string]any{t.ListKey: map[string]any{"type": "array", "items": entry}},
		"required":   []any{t.ListKey},
	}
}

// DestroyInputSchema is {"<kind>_id": string}.
func (t *Tools) DestroyInputSchema() map[string]any {
	return map[string]any{
		"type": "object",
		"properties": map[string]any{
			t.IDKey: map[string]any{"type": "string", "description": fmt.Sprintf("the %s's ID", t.Kind),
				"maxLength": sessions.MaxHandleLength},
		},
		"required":             []any{t.IDKey},
		"additionalProperties": false,
	}
}

// DestroyOutputSchema is {"destroyed": bool}.
func (t *Tools) DestroyOutputSchema() map[string]any {
	return map[string]any{
		"type":       "object",
		"properties": map[string]any{"destroyed": map[string]any{"type": "boolean"}},
		"required":   []any{"destroyed"},
	}
}

// List returns principal's handles of the kind as the list tool's result.
func (t *Tools) List(ctx context.Context, principal string) (map[string][]Entry, error) {
	list, err := t.H.List(ctx, principal, t.Kind)
	if err != nil {
		return nil, ToolError(err)
	}
	out := make([]Entry, 0, len(list))
	for _, h := range list {
		out = append(out, Entry{ID: h.Handle, CreatedAt: h.CreatedAt.UTC().Format(time.RFC3339), ExpiresAt: h.ExpiresAt.UTC().Format(time.RFC3339)})
	}
	return map[string][]Entry{t.ListKey: out}, nil
}

// HandleArg returns the destroy tool's argument from args.
func (t *Tools) HandleArg(args map[string]any) (string, error) {
	v, ok := args[t.IDKey]
	if !ok {
		return "", fmt.Errorf("missing argument %q", t.IDKey)
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("argument %q must be a string", t.IDKey)
	}
	return s, nil
}

// Destroy destroys principal's handle and returns the destroy tool's
// result and its text.
func (t *Tools) Destroy(ctx context.Context, principal, handle string) (DestroyResult, string, error) {
	found, err := t.H.Destroy(ctx, principal, t.Kind, handle)
	if err != nil {
		return DestroyResult{}, "", ToolError(err)
	}
	if !found {
		return DestroyResult{}, fmt.Sprintf("No %s of yours has that ID; nothing was destroyed.", t.Kind), nil
	}
	return DestroyResult{Destroyed: true}, fmt.Sprintf("Destroyed the %s.", t.Kind), nil
}

// ToolError is err as a tool error: the client-safe message of
// sessions.HTTPError (never database detail), err in its chain.
func ToolError(err error) error {
	if errors.Is(err, ErrNoSession) {
		return err
	}
	info := sessions.HTTPError(err)
	return &toolError{msg: info.Code + ": " + info.Message, err: err}
}

type toolError struct {
	msg string
	err error
}

func (e *toolError) Error() string { return e.msg }
func (e *toolError) Unwrap() error { return e.err }
