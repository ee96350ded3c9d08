package bench

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agentsessions/agentsessions/db"
	"github.com/agentsessions/agentsessions/sessions"
)

// The pgbench reference replays exactly the statements the store sends.
// Rather than copy the SQL (which goes stale when the store changes), the
// bench records it: it runs one Issue below the limit, one Issue at the
// limit, one Authenticate and one Revoke through a pgxstore.Store whose pool
// has a pgx tracer, and turns what the tracer saw into pgbench scripts.
// Whatever the store does (a SERIALIZABLE transaction of several
// statements, or one statement with a CTE) is what pgbench runs.

// Statement is one SQL statement the store sent, with its arguments.
type Statement struct {
	SQL  string
	Args []any
	Tag  string // command tag of the reply ("SELECT 1", "INSERT 0 1", ...)
	// Batch numbers the pgx batch the statement was sent in (one round
	// trip, one implicit transaction); 0 when it was sent on its own.
	Batch int
}

// traceRecorder is a pgx query and batch tracer that keeps every statement.
type traceRecorder struct {
	mu      sync.Mutex
	stmts   []Statement
	batches int // batches started so far
	inBatch int // the current batch's number, 0 outside one
}

func (t *traceRecorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stmts = append(t.stmts, Statement{SQL: d.SQL, Args: slices.Clone(d.Args)})
	return ctx
}

func (t *traceRecorder) TraceQueryEnd(_ context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := len(t.stmts); n > 0 {
		t.stmts[n-1].Tag = d.CommandTag.String()
	}
}

func (t *traceRecorder) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.batches++
	t.inBatch = t.batches
	return ctx
}

func (t *traceRecorder) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stmts = append(t.stmts, Statement{SQL: d.SQL, Args: slices.Clone(d.Args), Tag: d.CommandTag.String(), Batch: t.inBatch})
}

func (t *traceRecorder) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inBatch = 0
}

// take returns the statements recorded since the last take, leaving out
// comment-only ones (pings).
func (t *traceRecorder) take() []Statement {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Statement
	for _, s := range t.stmts {
		if stripComments(s.SQL) != "" {
			out = append(out, s)
		}
	}
	t.stmts = nil
	return out
}

// Trace is what the store sent for each operation.
type Trace struct {
	IssueOK      []Statement // Issue below the limit (inserts)
	IssueAtLimit []Statement // Issue at the limit (refused)
	Authenticate []Statement
	Revoke       []Statement

	// Values the traced calls used, to map arguments to pgbench variables.
	Agent, SessionID, Digest string
	Now, Expires             time.Time
	Limit                    int

	// GateColumns are the result columns of the statement that decides
	// whether Issue inserts (see ScriptSet), found by running it again.
	GateColumns []string
}

// RecordTrace runs the four operations through the variant's store on an
// empty agent_sessions table reached through poolCfg (already set up for
// the variant; a copy is traced), and empties it again.
func RecordTrace(ctx context.Context, v variant, poolCfg *pgxpool.Config, ttl time.Duration) (*Trace, error) {
	tr := &traceRecorder{}
	pc := poolCfg.Copy()
	pc.ConnConfig.Tracer = tr
	pool, err := openPool(ctx, pc, 1)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	store, err := v.newStore(pool, 20)
	if err != nil {
		return nil, err
	}
	t := &Trace{Agent: "probe-agent", Limit: 1, Now: time.Now().UTC().Truncate(time.Second)}
	t.Expires = t.Now.Add(ttl.Truncate(time.Second))
	ids := []string{"probe-session-1", "probe-session-2"}
	m, err := sessions.New(store, sessions.Config{
		Secret: []byte("agentsessions-bench-trace-secret!"), TTL: ttl, Limit: t.Limit,
		Clock: func() time.Time { return t.Now },
		NewID: func() (string, error) {
			id := ids[0]
			ids = ids[1:]
			return id, nil
		},
	})
	if err != nil {
		return nil, err
	}
	// The probe agent is a known one, with its count row, as the
	// workloads' agents are (copySessions).
	if err := resetTables(ctx, pool); err != nil {
		return nil, err
	}
	if err := db.New(pool).EnsureAgentCount(ctx, db.EnsureAgentCountParams{AgentID: t.Agent, Kind: sessions.KindSession}); err != nil {
		return nil, fmt.Errorf("bench: trace: %w", err)
	}
	tr.take()
	iss, err := m.Issue(ctx, t.Agent)
	if err != nil {
		return nil, fmt.Errorf("bench: trace: issue: %w", err)
	}
	t.IssueOK, t.SessionID, t.Digest = tr.take(), iss.Session.ID, iss.Session.TokenDigest
	if _, err := m.Issue(ctx, t.Agent); !errors.Is(err, sessions.ErrLimitExceeded) {
		return nil, fmt.Errorf("bench: trace: second issue at limit 1: want ErrLimitExceeded, got %v", err)
	}
	t.IssueAtLimit = tr.take()
	if _, err := m.Authenticate(ctx, iss.Token, t.Agent); err != nil {
		return nil, fmt.Errorf("bench: trace: authenticate: %w", err)
	}
	t.Authenticate = tr.take()
	if _, err := m.Revoke(ctx, iss.Session.ID); err != nil {
		return nil, fmt.Errorf("bench: trace: revoke: %w", err)
	}
	t.Revoke = tr.take()

	if _, _, gate, err := t.issueShape(); err == nil && gate >= 0 {
		rows, err := pool.Query(ctx, t.IssueOK[gate].SQL, t.IssueOK[gate].Args...)
		if err != nil {
			return nil, fmt.Errorf("bench: trace: rerun the limit check: %w", err)
		}
		for _, f := range rows.FieldDescriptions() {
			t.GateColumns = append(t.GateColumns, f.Name)
		}
		rows.Close()
	}
	if err := resetTables(ctx, pool); err != nil {
		return nil, err
	}
	return t, nil
}

// issueShape splits IssueOK into statements run every time and the
// statements run only below the limit: IssueAtLimit must be IssueOK with
// one contiguous run of statements left out (none when the store decides
// in SQL, e.g. one statement with a CTE). gate is the last single-row
// SELECT before that run: its first column is the agent's session count.
func (t *Trace) issueShape() (before, gated []Statement, gate int, err error) {
	a, b := t.IssueOK, t.IssueAtLimit
	same := func(x, y Statement) bool { return x.SQL == y.SQL }
	if slices.EqualFunc(a, b, same) {
		return a, nil, -1, nil
	}
	i := 0
	for i < len(a) && i < len(b) && same(a[i], b[i]) {
		i++
	}
	j := len(a) - (len(b) - i) // a[j:] must equal b[i:]
	if j < i || !slices.EqualFunc(a[j:], b[i:], same) {
		return nil, nil, -1, fmt.Errorf("issue at the limit sent statements that issue below it did not; cannot derive a pgbench script:\n below: %s\n at limit: %s", sqlList(a), sqlList(b))
	}
	gate = -1
	for k := i - 1; k >= 0; k-- {
		if a[k].Tag == "SELECT 1" {
			gate = k
			break
		}
	}
	if gate < 0 {
		return nil, nil, -1, fmt.Errorf("no single-row SELECT decides whether issue inserts; cannot derive a pgbench script: %s", sqlList(a))
	}
	return a[:i], a[i:j], gate, nil
}

func sqlList(stmts []Statement) string {
	var parts []string
	for _, s := range stmts {
		parts = append(parts, strconv.Quote(oneLineSQL(s.SQL)))
	}
	return strings.Join(parts, ", ")
}

// ScriptSet is the pgbench scripts made from a Trace, plus the constant
// variables they need (pgbench -D). The scripts use these variables:
//
//	:aid    agent ID (an integer; agents are named by decimal numbers)
//	:sid    session ID (a random 63-bit integer for new sessions, a
//	        pre-issued ID for authenticate and revoke)
//	:now    the run's start, as the caller's clock; :exp = :now + TTL
//	:digest a token digest (the same for every new session)
//	:limit  the per-agent limit
//	:agents, :hot, :first_sid, :last_sid  ranges for the random picks
//	:c1...  any other argument the store sent, as recorded
type ScriptSet struct {
	Engine       string // the engine whose statements these are
	IssueBody    string // the store's issue statements
	Authenticate string
	Revoke       string
	Gated        bool   // issue decides in the script (\if) rather than in SQL
	GateVar      string // the variable holding the session count, when Gated
	Consts       map[string]string
}

var placeholder = regexp.MustCompile(`\$(\d+)\b`)

// Scripts turns the trace into pgbench script bodies.
func (t *Trace) Scripts() (*ScriptSet, error) {
	s := &ScriptSet{Consts: map[string]string{}}
	before, gated, gate, err := t.issueShape()
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	// Statements pgx sent as one batch go in a pgbench pipeline: one
	// round trip and one implicit transaction, as for pgx.
	pipe := 0
	endPipe := func() {
		if pipe != 0 {
			b.WriteString("\\endpipeline\n")
			pipe = 0
		}
	}
	render := func(st Statement, suffix string) error {
		if st.Batch != pipe {
			endPipe()
			if st.Batch != 0 {
				b.WriteString("\\startpipeline\n")
				pipe = st.Batch
			}
		}
		line, err := t.render(st, s.Consts)
		if err != nil {
			return err
		}
		if suffix == "" {
			suffix = ";"
		}
		b.WriteString(line + suffix + "\n")
		return nil
	}
	if gate >= 0 {
		if len(t.GateColumns) == 0 {
			return nil, errors.New("bench: the limit check's result columns are unknown")
		}
		if before[gate].Batch != 0 {
			return nil, errors.New("bench: the limit check was sent in a batch; pgbench cannot branch on it")
		}
		s.Gated, s.GateVar = true, "g_"+t.GateColumns[0]
	}
	for k, st := range before {
		suffix := ""
		if k == gate {
			suffix = ` \gset g_`
		}
		if err := render(st, suffix); err != nil {
			return nil, err
		}
	}
	if gate >= 0 {
		endPipe()
		b.WriteString(`\if :` + s.GateVar + " < :limit\n")
		for _, st := range gated {
			if err := render(st, ""); err != nil {
				return nil, err
			}
		}
		endPipe()
		b.WriteString("\\endif\n")
		for _, st := range t.IssueOK[len(before)+len(gated):] {
			if err := render(st, ""); err != nil {
				return nil, err
			}
		}
	}
	endPipe()
	s.IssueBody = b.String()
	for _, x := range []struct {
		stmts []Statement
		out   *string
	}{{t.Authenticate, &s.Authenticate}, {t.Revoke, &s.Revoke}} {
		b.Reset()
		for _, st := range x.stmts {
			if err := render(st, ""); err != nil {
				return nil, err
			}
		}
		endPipe()
		*x.out = b.String()
	}
	return s, nil
}

// render rewrites one statement for pgbench: comments dropped, one line,
// $n replaced by a variable (or NULL for a nil argument).
func (t *Trace) render(st Statement, consts map[string]string) (string, error) {
	sql := strings.TrimSuffix(strings.TrimSpace(oneLineSQL(st.SQL)), ";")
	var rerr error
	out := placeholder.ReplaceAllStringFunc(sql, func(m string) string {
		n, _ := strconv.Atoi(m[1:])
		if n < 1 || n > len(st.Args) {
			rerr = fmt.Errorf("bench: %s refers to %s but has %d arguments", sql, m, len(st.Args))
			return m
		}
		v, err := t.variable(st.Args[n-1], consts)
		if err != nil {
			rerr = err
		}
		return v
	})
	return out, rerr
}

// variable maps a recorded argument to a pgbench variable reference.
func (t *Trace) variable(arg any, consts map[string]string) (string, error) {
	if v, ok := arg.(driver.Valuer); ok {
		dv, err := v.Value()
		if err != nil {
			return "", err
		}
		arg = dv
	}
	var text string
	switch v := arg.(type) {
	case nil:
		return "NULL", nil
	case []byte:
		if v == nil {
			return "NULL", nil
		}
		text = string(v)
	case string:
		switch v {
		case t.Agent:
			return ":aid", nil
		case t.SessionID:
			return ":sid", nil
		case t.Digest:
			return ":digest", nil
		}
		text = v
	case time.Time:
		switch {
		case v.Equal(t.Now):
			return ":now", nil
		case v.Equal(t.Expires):
			return ":exp", nil
		}
		text = v.UTC().Format(time.RFC3339Nano)
	case int, int8, int16, int32, int64, uint8, uint16, uint32, uint64:
		if fmt.Sprint(v) == strconv.Itoa(t.Limit) {
			return ":limit", nil
		}
		text = fmt.Sprint(v)
	case bool, float32, float64:
		text = fmt.Sprint(v)
	case []string:
		text = arrayLiteral(v, func(s string) string { return s })
	case []time.Time:
		text = arrayLiteral(v, func(tm time.Time) string { return tm.UTC().Format(time.RFC3339Nano) })
	default:
		return "", fmt.Errorf("bench: cannot pass a %T argument to pgbench", arg)
	}
	for name, val := range consts {
		if val == text {
			return ":" + name, nil
		}
	}
	name := "c" + strconv.Itoa(len(consts)+1)
	consts[name] = text
	return ":" + name, nil
}

// oneLineSQL drops whole-line "--" comments and joins the rest on one line.
func oneLineSQL(sql string) string {
	var parts []string
	for line := range strings.SplitSeq(sql, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "--") {
			continue
		}
		parts = append(parts, line)
	}
	return strings.Join(parts, " ")
}

func stripComments(sql string) string { return strings.TrimSpace(oneLineSQL(sql)) }

// pgbench script files per workload.
const (
	scriptIssue    = "issue.sql"
	scriptIssueHot = "issue_hot.sql"
	scriptAuth     = "authenticate.sql"
	scriptRevoke   = "revoke.sql"
)

// Files returns the script files by name.
//
// issue_hot.sql revokes the session the client issued in its previous run
// of the script (:prev_sid, 0 at first), then issues: pgbench retries a
// failed script from its start, so a revoke after the issue, failing with
// a serialization error, would rerun an issue that had committed.
func (s *ScriptSet) Files() map[string]string {
	scriptHeader := "-- generated by agentsessions bench from the statements the " + s.Engine +
		" store sent (recorded with a pgx tracer)\n"
	newSession := "\\set sid random(1000000000000, 9223372036854775807)\n"
	pickSession := "\\set sid random(:first_sid, :last_sid)\n"
	revokePrevious := sidVar.ReplaceAllString(s.Revoke, ":prev_sid")
	remember := "\\set prev_sid :sid\n"
	if s.Gated {
		remember = "\\if :" + s.GateVar + " < :limit\n" + remember + "\\endif\n"
	}
	return map[string]string{
		scriptIssue:    scriptHeader + "\\set aid random(1, :agents)\n" + newSession + s.IssueBody,
		scriptIssueHot: scriptHeader + "\\set aid random(1, :hot)\n" + revokePrevious + newSession + s.IssueBody + remember,
		scriptAuth:     scriptHeader + pickSession + s.Authenticate,
		scriptRevoke:   scriptHeader + pickSession + s.Revoke,
	}
}

var sidVar = regexp.MustCompile(`:sid\b`)

// constNames returns the names of the recorded constants, sorted.
func (s *ScriptSet) constNames() []string {
	names := make([]string, 0, len(s.Consts))
	for n := range s.Consts {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// arrayLiteral is vs as PostgreSQL's text form of an array: {"a","b"},
// each element quoted, with " and \ escaped.
func arrayLiteral[T any](vs []T, text func(T) string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(text(v)))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}
