package gosdkauth

import (
	"context"
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/mcp"

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
// of kind (see sessions.Handles), through go-sdk's typed mcp.AddTool:
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
// content, with the same JSON as text for older clients. The caller (the
// principal) is the AgentID of the verified session in the tool's context
// ([RequireBearerToken] puts it there; with [TokenVerifier] behind go-sdk's
// own auth.RequireBearerToken it is read from req.Extra.TokenInfo): the
// tools act only on that principal's handles. A call without a verified
// session is a tool error (IsError) saying so; a store failure is a tool
// error with the message of sessions.HTTPError, never database detail.
//
// The tools are annotated: list is read-only; destroy is destructive,
// idempotent and closed-world.
//
// It fails when s or h is nil, h was not given kind, or a name is not
// 1 to 128 of [A-Za-z0-9_.-] or both names are the same.
func RegisterHandleTools(s *mcp.Server, h *sessions.Handles, kind string, opts HandleToolsOptions) error {
	if s == nil {
		return fmt.Errorf("%w: RegisterHandleTools: server must not be nil", ErrInvalidOptions)
	}
	t, err := handletools.New(h, kind, handletools.Config(opts))
	if err != nil {
		return fmt.Errorf("%w: RegisterHandleTools: %w", ErrInvalidOptions, err)
	}
	no, yes := false, true
	mcp.AddTool(s, &mcp.Tool{
		Name:         t.ListName,
		Description:  t.ListDescription,
		InputSchema:  t.ListInputSchema(),
		OutputSchema: t.ListOutputSchema(),
		Annotations:  &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, DestructiveHint: &no, OpenWorldHint: &no},
	}, func(ctx context.Context, req *mcp.CallToolRequest, _ map[string]any) (*mcp.CallToolResult, map[string][]handletools.Entry, error) {
		principal, err := principalOf(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		out, err := t.List(ctx, principal)
		return nil, out, err
	})
	mcp.AddTool(s, &mcp.Tool{
		Name:         t.DestroyName,
		Description:  t.DestroyDescription,
		InputSchema:  t.DestroyInputSchema(),
		OutputSchema: t.DestroyOutputSchema(),
		Annotations:  &mcp.ToolAnnotations{IdempotentHint: true, DestructiveHint: &yes, OpenWorldHint: &no},
	}, func(ctx context.Context, req *mcp.CallToolRequest, args map[string]any) (*mcp.CallToolResult, handletools.DestroyResult, error) {
		principal, err := principalOf(ctx, req)
		if err != nil {
			return nil, handletools.DestroyResult{}, err
		}
		handle, err := t.HandleArg(args)
		if err != nil {
			return nil, handletools.DestroyResult{}, err
		}
		out, text, err := t.Destroy(ctx, principal, handle)
		if err != nil {
			return nil, handletools.DestroyResult{}, err
		}
		// go-sdk puts the JSON of out in StructuredContent; the text says
		// in words what happened.
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}, out, nil
	})
	return nil
}

// PrincipalFromRequest returns the caller of a tool call: the AgentID of
// the verified session in ctx (sessions.SessionFromContext, as
// [RequireBearerToken] leaves it), else of the one in req.Extra.TokenInfo
// ([TokenVerifier] behind auth.RequireBearerToken). It is false when
// neither carries one. Tools that keep state behind handles pass it to
// sessions.Handles as the principal.
func PrincipalFromRequest(ctx context.Context, req *mcp.CallToolRequest) (string, bool) {
	if s, ok := sessions.SessionFromContext(ctx); ok {
		return s.AgentID, true
	}
	if req != nil && req.Extra != nil {
		if s, ok := SessionFromTokenInfo(req.Extra.TokenInfo); ok {
			return s.AgentID, true
		}
	}
	return "", false
}

func principalOf(ctx context.Context, req *mcp.CallToolRequest) (string, error) {
	p, ok := PrincipalFromRequest(ctx, req)
	if !ok {
		return "", handletools.ErrNoSession
	}
	return p, nil
}
