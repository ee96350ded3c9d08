// Package mcpsessions keeps the sessions of MCP servers built on
// github.com/mark3labs/mcp-go's Streamable HTTP transport in an agentsessions
// store, so that any number of server instances can serve one client without
// sticky sessions.
//
// For MCP protocol 2026-07-28, which has no protocol-level sessions,
// [RequireBearerToken] authenticates every request by its agentsessions
// bearer token instead (see "Bearer tokens" below); package
// github.com/agentsessions/agentsessions/mcpsessions/gosdkauth does the same
// for servers on the official Go SDK.
//
// It is its own module, so that the agentsessions library does not depend on
// mcp-go. It is written against mcp-go v1.2.1 (the version in go.mod); the
// behaviour of mcp-go described here is that version's.
//
// # The session ID is the token
//
// The MCP session ID (the Mcp-Session-Id header, sent by the client on every
// request after initialize) is the session's signed agentsessions token, not
// the session's ID in the store. So:
//
//   - any instance holding the secret checks the signature before any store
//     call: forged, tampered or random IDs cost no database work, which
//     matters because every request carries one;
//   - the store keeps only the token's SHA-256 digest, so its rows (or a
//     backup) do not give anyone a usable session ID;
//   - the store's session IDs stay what they are in the rest of
//     agentsessions, identifiers that List and the admin API show and that
//     Revoke takes, not credentials.
//
// Then the session is looked up in the shared store, so an initialize on one
// instance, a tools/call on another and a DELETE on a third all see the same
// session, a DELETE anywhere ends it everywhere, and the manager's per-agent
// session limit holds across instances.
//
// Consequences: the session ID is a bearer credential for its agent (as any
// MCP session ID is for its session), so serve MCP over TLS; and a token
// is a token: it would also pass Manager.Authenticate for its agent in any
// other service sharing the store and secret. Give the MCP server an agent
// of its own, or its own secret. Tokens carry their expiry, so a session
// cannot be extended without changing its ID: Config.TTL is the longest an
// MCP session lasts, after which the client gets 404 and must initialize
// again (mcp-go's client reports transport.ErrSessionTerminated).
//
// # Agents
//
// Sessions are issued to an agent, whose limit they count against, and each
// request accepts only its agent's sessions (Manager.Authenticate): a token
// the store issued to another agent is refused like a forged ID. The agent
// is [Options.AgentID], fixed per server (the limit then caps the server's
// concurrent MCP sessions), or comes from the request through
// [Options.AgentIDFromRequest]: [SessionAgentID] takes it from
// [sessions.Middleware] (the client authenticates with its own agentsessions
// token), [HeaderAgentID] from a header set by a trusted gateway.
//
// # Wiring
//
// [Adapter] implements both of mcp-go's interfaces,
// server.SessionIdManagerResolver (recommended) and server.SessionIdManager:
//
//	a, err := mcpsessions.New(mgr, mcpsessions.Options{AgentID: "my-mcp-server"})
//	if err != nil { ... }
//	hooks := &server.Hooks{}
//	hooks.AddOnRequestInitialization(a.RejectSessionlessInitialize)
//	mcpSrv := server.NewMCPServer("name", "1.0.0", server.WithHooks(hooks))
//	httpSrv := server.NewStreamableHTTPServer(mcpSrv,
//		server.WithSessionIdManagerResolver(a),
//		server.WithStreamableHTTPProtocolVersions(mcp.LegacyProtocolVersions()...))
//	http.Handle("/mcp", a.Middleware(httpSrv))
//
// Only server.WithSessionIdManagerResolver(a) is needed for cross-instance
// sessions; the rest is hardening, explained below.
//
// Use the resolver rather than server.WithSessionIdManager(a): mcp-go calls
// Terminate not only for a client's DELETE but also from its idle-session
// sweeper (server.WithSessionIdleTTL) and from Shutdown/CloseSessions, for
// every session this instance has seen. With the resolver those calls come
// without a request and the adapter leaves the shared session alone (it
// expires with its TTL), so one instance shutting down or finding a session
// idle does not end it on the others. With the plain SessionIdManager every
// Terminate revokes. The resolver also gives each store call the request's
// context, lets the agent come from the request, and stops a GET without
// Mcp-Session-Id from creating a stored session.
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
// # Bearer tokens
//
// MCP 2026-07-28 removed Mcp-Session-Id and initialize; each request
// carries "Authorization: Bearer <token>", an agentsessions token issued to
// the client's agent. [RequireBearerToken] is net/http middleware in front
// of the StreamableHTTPServer (mcp-go v1.2.1 has no verifier hook; it hands
// the HTTP request's context to tool handlers, where
// sessions.SessionFromContext returns the verified session):
//
//	requireToken, err := mcpsessions.RequireBearerToken(mgr, mcpsessions.BearerOptions{})
//	if err != nil { ... }
//	http.Handle("/mcp", requireToken(server.NewStreamableHTTPServer(mcpSrv)))
//
// Bad tokens get 401 with an RFC 6750 challenge (forged ones without a
// store call), a store outage 503 with Retry-After. To serve old clients
// through the bridge on the same endpoint, set
// [BearerOptions.LegacyPassThrough] and put [Adapter.Middleware] (with the
// resolver, and no version restriction) behind it.
//
// [RegisterHandleTools] adds list_<kind>s and destroy_<kind> tools for the
// caller's state handles (sessions.Handles) of a kind: the principal is
// the AgentID of the session RequireBearerToken verified.
//
// # Status codes
//
// For a POST other than initialize, mcp-go answers 404 both when Validate
// reports the session terminated and when it returns an error, so a client
// sees 404 for an unknown, revoked, expired, forged or tampered session ID,
// or another agent's, and must initialize again. Validate nevertheless
// returns an error, not "terminated", when the store fails: it fails
// closed, and [Options.OnError] hears of it. [Adapter.Middleware] answers
// a failed check with the status of [sessions.HTTPError] instead of 404:
// 503 with Retry-After for a store failure, so that clients retry rather
// than drop a session that is fine, 500 for a server fault such as a clock
// before 1970.
//
// mcp-go does not validate the session ID of a GET (the stream for
// server-initiated messages); [Adapter.Middleware] does (404 when invalid,
// 400 when missing). A DELETE whose session is already gone answers 200
// (termination is idempotent); a DELETE with an invalid ID answers 500 from
// mcp-go, or 404 behind [Adapter.Middleware]. mcp-go puts Terminate's error
// text in its 500 response, so the text of a failed check is only the
// message of [sessions.HTTPError] (for a store failure, that the store is
// unavailable); the cause is in the error's chain and in what OnError
// receives.
//
// # When no session can be issued
//
// mcp-go's Generate cannot fail. When the agent is at its session limit
// (under sessions.PolicyReject), the store fails, or no valid agent ID is
// known, Generate reports the error to [Options.OnError] and returns "".
// mcp-go then answers the initialize with 200 but no Mcp-Session-Id header
// and registers nothing, and every later request of that client (which
// carries no session ID) is refused with 404: no client is ever served
// without a stored session. To refuse the initialize itself with a JSON-RPC
// error that says why, register [Adapter.RejectSessionlessInitialize] as an
// OnRequestInitialization hook (with [Adapter.Middleware] in front for the
// precise reason: the agent's limit, the store unavailable).
//
// A session holds one of its agent's slots from initialize until the
// client's DELETE or its TTL: clients that vanish without a DELETE hold
// theirs until then. Under sessions.PolicyEvictOldest an initialize at the
// limit ends the agent's oldest session instead of failing.
//
// # Limitations
//
// Only the session itself is shared. mcp-go's other per-session state stays
// on the instance that holds it: a GET stream, and so server-initiated
// requests (sampling, elicitation) and notifications sent to it, per-session
// tools and resources, the logging level. A GET stream open on one instance
// is not closed when the session is ended elsewhere; it ends with its
// connection, and requests on the session are refused everywhere. mcp-go
// keeps each session it has seen in memory until a DELETE reaches that
// instance, so set server.WithSessionIdleTTL to forget, locally, sessions
// ended elsewhere (with the resolver this revokes nothing).
//
// mcp-go logs session IDs, which here are tokens, at Info level in a few
// places (its idle sweeper, sampling responses, GETs refused when streaming
// is disabled): give the transport a logger at Warn or above with
// server.WithStreamableHTTPLogger if its logs are not as protected as the
// tokens. This package never logs a session ID.
//
// # Store calls
//
// mcp-go's interface carries no context. Each store call runs under
// [Options.Timeout] (default 5s), on the request's context with the
// resolver and on context.Background() with the plain SessionIdManager.
// Behind [Adapter.Middleware] a request's session ID is checked once, and
// the result reused by Validate or Terminate for that request.
//
// Each check of a live session is one read from the store. With
// pgxstore.Store.RunCache running on an instance, that read is
// usually answered from the instance's memory instead; the price is that a
// DELETE on another instance reaches it through PostgreSQL's NOTIFY, so
// for a moment (at most CacheConfig.MaxStaleness, default 1s, after the
// revocation committed) it may still serve the ended session. Without the
// cache, the next request after a DELETE is refused on every instance.
package mcpsessions
