package mcpsessions

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/agentsessions/agentsessions/mcpsessions/internal/handletools"
	"github.com/agentsessions/agentsessions/sessions"
)

// HandleToolsOptions configures [RegisterHandleTools]. The zero value is
// usable.
type HandleToolsOptions struct {
	// ListName names the list tool. Default "list_<kind>s", e.g.
	// "list_baskets".
	ListName string
	// DestroyName names the destroy tool. Default "destroy_<kind>", e.g.
	// "destroy_basket".
	DestroyName string

	// ListDescription and DestroyDescription are the tools' descriptions,
	// for the model. Defaults: a sentence saying what the tool does,
	// naming the kind.
	ListDescription, DestroyDescription string
}

// RegisterHandleTools adds two tools to s for the caller's state handles
// of kind (see sessions.Handles), with mcp-go's typed tool handlers
// (mcp.NewTypedToolHandler):
//
//   - list_<kind>s, no arguments: the caller's live handles of the kind,
//     oldest first, as {"<kind>s": [{"id": handle, "created_at": RFC 3339,
//     "expires_at": RFC 3339}, ...]} (an empty array when there are none);
//   - destroy_<kind>, {"<kind>_id": handle}: destroys it and answers
//     {"destroyed": true}, or {"destroyed": false} with a text saying that
//     no handle of the caller's has that ID, destroying nothing. The answer
//     for another principal's handle is exactly that of a made-up one.
//
// Both declare their input and output schemas and return structured
// content, with a text for older clients (list: the same JSON). The
// caller (the principal) is the AgentID of the verified session in the
// tool's context, which [RequireBearerToken] puts there (as does
// sessions.Middleware): the tools act only on that principal's handles. A
// call without a verified session is a tool error (IsError) saying so, as
// is a missing or non-string argument; a store failure is a tool error
// with the message of sessions.HTTPError, never database detail.
//
// The tools are annotated: list is read-only; destroy is destructive,
// idempotent and closed-world. mcp-go validates arguments against the
// schemas only with server.WithInputSchemaValidation; the destroy tool
// checks its argument itself either way.
//
// It fails with [ErrInvalidOptions] when s or h is nil, h was not given
// kind, or a name is not 1 to 128 of [A-Za-z0-9_.-] or both names are the
// same.
func RegisterHandleTools(s *server.MCPServer, h *sessions.Handles, kind string, opts HandleToolsOptions) error {
	if s == nil {
		return fmt.Errorf("%w: RegisterHandleTools: server must not be nil", ErrInvalidOptions)
	}
	t, err := handletools.New(h, kind, handletools.Config(opts))
	if err != nil {
		return fmt.Errorf("%w: RegisterHandleTools: %w", ErrInvalidOptions, err)
	}
	raw := func(schema map[string]any) json.RawMessage {
		b, err := json.Marshal(schema)
		if err != nil {
			panic(err) // maps of strings, slices and bools
		}
		return b
	}
	yes, no := mcp.ToBoolPtr(true), mcp.ToBoolPtr(false)

	// NewToolWithRawSchema, not NewTool with WithRawInputSchema: NewTool
	// sets an InputSchema too, and mcp-go v1.2.1 refuses to marshal a tool
	// with both.
	list := mcp.NewToolWithRawSchema(t.ListName, t.ListDescription, raw(t.ListInputSchema()))
	list.RawOutputSchema = raw(t.ListOutputSchema())
	list.Annotations = mcp.ToolAnnotation{ReadOnlyHint: yes, DestructiveHint: no, IdempotentHint: yes, OpenWorldHint: no}
	s.AddTool(list, mcp.NewTypedToolHandler(func(ctx context.Context, _ mcp.CallToolRequest, _ map[string]any) (*mcp.CallToolResult, error) {
		principal, ok := principalFromContext(ctx)
		if !ok {
			return mcp.NewToolResultError(handletools.ErrNoSession.Error()), nil
		}
		out, err := t.List(ctx, principal)
		if err != nil {
			return mcp.NewToolResultError(err.Error()), nil
		}
		return mcp.NewToolResultStructuredOnly(out), nil
	}))

	destroy := mcp.NewToolWithRawSchema(t.DestroyName, t.DestroyDescription, raw(t.DestroyInputSchema()))
	destroy.RawOutputSchema = raw(t.DestroyOutputSchema())
	destroy.Annotations = mcp.ToolAnnotation{ReadOnlyHint: no, DestructiveHint: yes, IdempotentHint: yes, OpenWorldHint: no}
	s.AddTool(destroy, mcp.NewTypedToolHandler(func(ctx context.Context, _ mcp.CallToolRequest, args map[string]any) (*mcp.CallToolResult, error) {
		principal, ok := principalFromContext(ctx)
		if !ok {
			return mcp.NewToolResultError(handletools.ErrNoSession.Error()), nil
		}
		handle, err := t.HandleArg(args)
		if err != nil {
			return mcp.NewToolResultError(err.Error()), nil
		}
		out, text, err := t.Destroy(ctx, principal, handle)
		if err != nil {
			return mcp.NewToolResultError(err.Error()), nil
		}
		return mcp.NewToolResultStructured(out, text), nil
	}))
	return nil
}

func principalFromContext(ctx context.Context) (string, bool) {
	s, ok := sessions.SessionFromContext(ctx)
	if !ok {
		return "", false
	}
	return s.AgentID, true
}
