// Package sessions issues, authenticates and revokes sessions for AI agents,
// with a per-agent limit on live sessions that holds across every instance
// of a service sharing one store.
//
// # Tokens
//
// A token is base64url(JSON{"sid","aid","exp"}) + "." +
// base64url(HMAC-SHA256(secret, first part)), both parts unpadded, exp in
// Unix seconds. The format is byte-for-byte that of the reference
// implementation. Tokens are bearer credentials: anyone holding one can use
// the session until it expires or is revoked. The store keeps only the
// token's SHA-256 digest, so a copy of the database does not yield usable
// tokens, and Authenticate checks that digest in constant time in addition
// to the signature (also compared in constant time).
//
// # Stores
//
// [MemoryStore] keeps sessions in process memory (tests, single instances).
// Package github.com/agentsessions/agentsessions/sessions/pgxstore keeps
// them in PostgreSQL; the schema comes from the migrations package. Its
// limit check is one SERIALIZABLE statement, so any number of instances
// may share the database. A store of your own proves itself against the
// contract suite in package sessionstest. This package imports only the
// standard library.
//
// # Clocks
//
// Expiry, pruning and the limit check use the [Config.Clock] of the manager
// making the call, not the database's clock, as in the reference. Instances
// whose clocks disagree cannot push an agent over its limit: an issue
// deletes the agent's rows it considers expired and then counts every row
// the agent has left, so the row count never exceeds the limit whatever the
// clocks say. Skew can only shorten a session: an instance whose clock runs
// ahead may prune a session another instance still considers live. Keep
// instances' clocks synchronised (NTP) to well under the TTL.
//
// # Errors
//
// Every error matches one sentinel with errors.Is ([ErrInvalidConfig],
// [ErrInvalidAgentID], [ErrInvalidSessionID], [ErrLimitExceeded],
// [ErrInvalidTokenFormat], [ErrInvalidSignature], [ErrAccessDenied],
// [ErrSessionExpired], [ErrStore]); typed errors ([ConfigError],
// [LimitError], [AccessDeniedError], [StoreError]) carry details.
// [HTTPError] is the one table from these errors to an HTTP status, error
// code and client message; [Middleware], the agentsessions service and the
// MCP adapter all answer with it.
package sessions
