// Package mcpsessions keeps the sessions of MCP servers built on
// github.com/mark3labs/mcp-go's Streamable HTTP transport in an agentsessions
// store, so that any number of server instances can serve one client without
// sticky sessions.
//
// The MCP session ID (the Mcp-Session-Id header) is the session's signed
// agentsessions token. Any instance holding the secret checks the signature
// without a store call, then looks the session up in the shared store, so an
// initialize on one instance, a tools/call on another and a DELETE on a third
// all see the same session, and a DELETE anywhere ends it everywhere. The
// per-agent session limit of the [sessions.Manager] holds across instances.
//
// # Wiring
//
// [Adapter] implements both of mcp-go's interfaces:
// server.SessionIdManagerResolver (recommended) and server.SessionIdManager.
//
//	a, err := mcpsessions.New(mgr, mcpsessions.Options{AgentID: "my-agent"})
//	...
//	mcpSrv := server.NewMCPServer("name", "1.0.0", server.WithHooks(hooks)) // hooks.AddOnRequestInitialization(a.RejectSessionlessInitialize)
//	httpSrv := server.NewStreamableHTTPServer(mcpSrv,
//		server.WithSessionIdManagerResolver(a),
//		server.WithStreamableHTTPProtocolVersions(mcp.LegacyProtocolVersions()...))
//	http.Handle("/mcp", a.Middleware(httpSrv))
//
// Only server.WithSessionIdManagerResolver(a) is needed for cross-instance
// sessions; the other three lines are hardening, explained below.
//
// Use the resolver rather than server.WithSessionIdManager(a): mcp-go calls
// Terminate not only for a client's DELETE but also from its idle-session
// sweeper (server.WithSessionIdleTTL) and from Shutdown/CloseSessions, for
// every session this instance has seen. With the resolver those calls come
// without a request and the adapter leaves the shared session alone (it
// expires with its TTL), so one instance shutting down or considering a
// session idle does not end it on the others. With the plain
// SessionIdManager every Terminate revokes. The resolver also gives each
// store call the request's context, lets the agent ID come from the request
// ([Options.AgentIDFromRequest]), and stops a GET without Mcp-Session-Id
// from creating a stored session.
//
// # Protocol versions
//
// MCP protocol version 2026-07-28 removed protocol-level sessions: mcp-go
// serves requests of that version without Mcp-Session-Id and never consults
// the session ID manager for them, and its client prefers that version. A
// server that relies on sessions should restrict the transport to the
// session-oriented versions with
// server.WithStreamableHTTPProtocolVersions(mcp.LegacyProtocolVersions()...);
// mcp-go clients then fall back to the initialize handshake.
//
// # Status codes (mcp-go v1.2.1)
//
// For a POST other than initialize, mcp-go answers 404 both when Validate
// reports the session terminated and when it returns an error, so a client
// sees 404 for an unknown, revoked, expired, forged or tampered session ID,
// and must initialize again. Validate nevertheless returns an error, not
// "terminated", when the store fails (it fails closed), and [Options.OnError]
// hears of it. [Adapter.Middleware] turns store failures into 503 instead
// of 404, so that clients retry rather than start a new session.
//
// mcp-go does not validate the session ID of a GET (the stream for
// server-initiated messages); [Adapter.Middleware] does (404 when invalid,
// 400 when missing). A DELETE whose session is already gone answers 200
// (termination is idempotent); a DELETE with a forged ID answers 500 from
// mcp-go, or 404 behind [Adapter.Middleware].
//
// # When no session can be issued
//
// mcp-go's Generate cannot fail. When the agent is at its session limit
// (under sessions.PolicyReject), the store fails, or no valid agent ID is
// configured, Generate reports the error to [Options.OnError] and returns
// "". mcp-go then answers the initialize with 200 but no Mcp-Session-Id
// header and registers nothing, and every later request of that client
// (which carries no session ID) is refused with 404: no client is ever
// served without a stored session. To refuse the initialize itself with a
// JSON-RPC error that says why, register
// [Adapter.RejectSessionlessInitialize] as an OnRequestInitialization hook
// (and use [Adapter.Middleware] for the precise reason).
//
// # Store calls
//
// mcp-go's interface carries no context. Each store call runs under
// [Options.Timeout] (default 5s), on the request's context with the
// resolver and on context.Background() with the plain SessionIdManager.
package mcpsessions
