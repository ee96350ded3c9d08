package sessions

import "context"

// The operation names an [Observer] is given in [Op.Name]: one per
// observed method of [Manager] and [Handles]. They never change meaning.
const (
	OpIssue         = "issue"          // Manager.Issue
	OpAuthenticate  = "authenticate"   // Manager.Authenticate
	OpVerify        = "verify"         // Manager.Verify
	OpRefresh       = "refresh"        // Manager.Refresh
	OpRevoke        = "revoke"         // Manager.Revoke
	OpRevokeAgent   = "revoke_agent"   // Manager.RevokeAgent
	OpRevokeOthers  = "revoke_others"  // Manager.RevokeOtherSessions
	OpHandleCreate  = "handle.create"  // Handles.Create
	OpHandleResolve = "handle.resolve" // Handles.Resolve
	OpHandleList    = "handle.list"    // Handles.List
	OpHandleDestroy = "handle.destroy" // Handles.Destroy
	// OpHandleDestroyOthers is Handles.DestroyOthers.
	OpHandleDestroyOthers = "handle.destroy_others"
	OpHandleRefresh       = "handle.refresh" // Handles.Refresh
)

// Op describes one observed operation. It never holds a token, a handle,
// a secret, a digest or a metadata value.
type Op struct {
	// Name is one of the Op* constants.
	Name string

	// Kind is [KindSession] for the Manager's operations and the handle
	// kind for those of [Handles]; "" when the caller named a kind the
	// Handles were not given (the operation then fails).
	Kind string

	// AgentID is the agent ID (for Handles: the principal) the caller
	// passed, and only if the observer implements [AgentIDObserver] and
	// its ObserveAgentID returns true, and the ID is valid
	// ([ValidateAgentID]); "" otherwise. Operations that take no agent ID
	// (Verify, Revoke) never set it.
	AgentID string
}

// Observer is told about the operations of a [Manager] and of the
// [Handles] on it, for tracing and metrics (package
// github.com/agentsessions/agentsessions/otelsessions is one for
// OpenTelemetry). Set it as [Config.Observer].
//
// Start is called when an observed method begins, before any check, and
// returns the context the operation runs with (so a span it starts is the
// parent of the store's work) and end, which the method calls exactly once
// when it returns, with the error it returns (nil on success). end is not
// called if the operation panics. Errors are this package's (see
// [HTTPError] to classify them); their messages may hold an agent ID or a
// store's error text, so an observer that exports them should export a
// class, not the message.
//
// Start and end are called on the caller's goroutine and must be safe for
// concurrent use. With no observer (the default) nothing is called and
// nothing is allocated.
type Observer interface {
	Start(ctx context.Context, op Op) (context.Context, func(error))
}

// AgentIDObserver is an [Observer] that may want [Op.AgentID] filled in.
// ObserveAgentID is asked once, by [New].
type AgentIDObserver interface {
	Observer
	ObserveAgentID() bool
}

// observer is a Manager's Observer and what it asked for.
type observer struct {
	obs     Observer
	agentID bool
}

func newObserver(o Observer) observer {
	if o == nil {
		return observer{}
	}
	a, ok := o.(AgentIDObserver)
	return observer{obs: o, agentID: ok && a.ObserveAgentID()}
}

// start calls the observer; only call it when m.obs.obs != nil.
func (o observer) start(ctx context.Context, name, kind, agentID string) (context.Context, func(error)) {
	op := Op{Name: name, Kind: kind}
	if o.agentID && ValidateAgentID(agentID) == nil {
		op.AgentID = agentID
	}
	octx, end := o.obs.Start(ctx, op)
	if octx != nil {
		ctx = octx
	}
	if end == nil {
		end = func(error) {}
	}
	return ctx, end
}
