package otelsessions_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/otelsessions"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

func TestMain(m *testing.M) { testdb.Main(m) }

const (
	secret   = "otelsessions-test-secret-0123456789abcdef"
	agentID  = "agent-otel-7f3a"
	metaKey  = "customer-note-key"
	metaVal  = "metadata-value-must-not-leak-91c2"
	poolSize = 2
)

// rig is a manager and handles on a real PostgreSQL store, everything
// observed by one Observer exporting to in-memory exporters, the pool's
// queries traced.
type rig struct {
	exp    *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
	tp     *sdktrace.TracerProvider
	m      *sessions.Manager
	h      *sessions.Handles
	store  *pgxstore.Store
	app    string
	d      *testdb.DB
}

func newRig(t *testing.T, opts ...otelsessions.Option) *rig {
	t.Helper()
	d := testdb.New(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })
	opts = append([]otelsessions.Option{otelsessions.WithTracerProvider(tp), otelsessions.WithMeterProvider(mp)}, opts...)
	obs, err := otelsessions.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	app := "otelsessions-" + d.Schema
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	cfg.ConnConfig.Tracer = otelsessions.PgxTracer(opts...)
	cfg.MaxConns = poolSize
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := pgxstore.New(pool, &pgxstore.Config{Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := obs.ObserveStore(store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	m, err := sessions.New(store, sessions.Config{Secret: []byte(secret), TTL: time.Hour, Limit: 2, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	h, err := sessions.NewHandles(m, sessions.HandleKind{Name: "basket", TTL: time.Hour, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{exp: exp, reader: reader, tp: tp, m: m, h: h, store: store, app: app, d: d}
}

func (r *rig) metrics(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

func attrOf(kvs []attribute.KeyValue, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func spansNamed(spans tracetest.SpanStubs, name string) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// The whole life of a session and a handle, traced: span names, the
// parent links from the caller's span through the operation's span to the
// queries, outcomes, and nothing secret anywhere in what was exported.
func TestSpansMetricsAndNoSecrets(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx, caller := r.tp.Tracer("test").Start(context.Background(), "caller")

	iss, err := r.m.Issue(ctx, agentID, sessions.WithMetadata(map[string]string{metaKey: metaVal}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Authenticate(ctx, iss.Token, agentID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Verify(ctx, iss.Token); err != nil {
		t.Fatal(err)
	}
	// Refresh needs a later second to re-sign: wait for it.
	time.Sleep(time.Until(iss.Session.IssuedAt.Add(time.Second + 10*time.Millisecond)))
	ref, err := r.m.Refresh(ctx, iss.Token, agentID)
	if err != nil {
		t.Fatal(err)
	}
	if ref.Token == iss.Token {
		t.Fatal("refresh returned the same token")
	}
	if _, err := r.m.Authenticate(ctx, iss.Token, agentID); err == nil {
		t.Fatal("the superseded token still authenticates")
	}
	if _, err := r.m.Revoke(ctx, iss.Session.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Authenticate(ctx, ref.Token, agentID); err == nil {
		t.Fatal("a revoked token authenticates")
	}
	if _, err := r.m.Issue(ctx, agentID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Issue(ctx, agentID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Issue(ctx, agentID); err == nil {
		t.Fatal("issue over the limit succeeded")
	}
	if _, err := r.m.RevokeAgent(ctx, agentID); err != nil {
		t.Fatal(err)
	}
	hd, err := r.h.Create(ctx, agentID, "basket", sessions.WithMetadata(map[string]string{metaKey: metaVal}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.h.Resolve(ctx, agentID, "basket", hd.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := r.h.List(ctx, agentID, "basket"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.h.Refresh(ctx, agentID, "basket", hd.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := r.h.Destroy(ctx, agentID, "basket", hd.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.Prune(ctx, pgxstore.PruneConfig{LockID: time.Now().UnixNano()}); err != nil {
		t.Fatal(err)
	}
	caller.End()

	spans := r.exp.GetSpans()
	callerID := caller.SpanContext().SpanID()
	for _, name := range []string{"agentsessions.issue", "agentsessions.authenticate", "agentsessions.verify",
		"agentsessions.refresh", "agentsessions.revoke", "agentsessions.revoke_agent", "agentsessions.handle.create",
		"agentsessions.handle.resolve", "agentsessions.handle.list", "agentsessions.handle.refresh",
		"agentsessions.handle.destroy", "agentsessions.prune"} {
		got := spansNamed(spans, name)
		if len(got) == 0 {
			t.Errorf("no %s span", name)
		}
		for _, s := range got {
			if s.Parent.SpanID() != callerID || s.SpanContext.TraceID() != caller.SpanContext().TraceID() {
				t.Errorf("%s: parent %s, want the caller's span %s", name, s.Parent.SpanID(), callerID)
			}
		}
	}

	// The queries are children of the operation that ran them.
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
	}
	issue := spansNamed(spans, "agentsessions.issue")[0]
	// The nearest agentsessions span above every query span (through
	// pgx's batch and pool spans) is an operation, never the caller's.
	var issueQueries int
	for _, s := range spans {
		if v, ok := attrOf(s.Attributes, "db.system.name"); !ok || v.AsString() != "postgresql" || strings.HasPrefix(s.Name, "agentsessions.") {
			continue
		}
		up := s
		for !strings.HasPrefix(up.Name, "agentsessions.") {
			parent, ok := byID[up.Parent.SpanID()]
			if !ok {
				t.Fatalf("query span %q has no agentsessions operation above it (stopped at %q)", s.Name, up.Name)
			}
			up = parent
		}
		if up.SpanContext.SpanID() == issue.SpanContext.SpanID() {
			issueQueries++
		}
	}
	if issueQueries == 0 {
		t.Error("the first issue's span has no query span as a child")
	}

	// Outcomes: ok, denied (not a span error) and the refined reason.
	auths := spansNamed(spans, "agentsessions.authenticate")
	outcomes := map[string]int{}
	for _, s := range auths {
		o, _ := attrOf(s.Attributes, otelsessions.AttrOutcome)
		outcomes[o.AsString()]++
		if o.AsString() == otelsessions.OutcomeDenied {
			if s.Status.Code == codes.Error {
				t.Errorf("a denied authenticate is a span error: %+v", s.Status)
			}
			code, _ := attrOf(s.Attributes, otelsessions.AttrErrorCode)
			reason, _ := attrOf(s.Attributes, otelsessions.AttrFailureReason)
			if code.AsString() != sessions.CodeUnauthorized || !slices.Contains([]string{"digest_mismatch", "metadata_mismatch", "unknown_session"}, reason.AsString()) {
				t.Errorf("denied authenticate: code %q reason %q", code.AsString(), reason.AsString())
			}
		}
		if _, ok := attrOf(s.Attributes, otelsessions.AttrAgentID); ok {
			t.Error("the agent id is recorded without WithAgentID")
		}
	}
	if outcomes[otelsessions.OutcomeOK] != 1 || outcomes[otelsessions.OutcomeDenied] != 2 {
		t.Errorf("authenticate outcomes %v, want 1 ok and 2 denied", outcomes)
	}
	var limitDenied bool
	for _, s := range spansNamed(spans, "agentsessions.issue") {
		if code, _ := attrOf(s.Attributes, otelsessions.AttrErrorCode); code.AsString() == sessions.CodeLimitExceeded {
			limitDenied = true
		}
	}
	if !limitDenied {
		t.Error("no issue span says limit_exceeded")
	}
	prune := spansNamed(spans, "agentsessions.prune")[0]
	if _, ok := attrOf(prune.Attributes, otelsessions.AttrPruneDeleted); !ok {
		t.Errorf("prune span attributes %v", prune.Attributes)
	}

	rm := r.metrics(t)
	sums := sumsByName(rm)
	for name, want := range map[string]int64{
		"agentsessions.sessions.issued": 3, "agentsessions.sessions.refreshed": 1, "agentsessions.sessions.revoked": 1,
		"agentsessions.limit_denials": 1, "agentsessions.authentications": 2, "agentsessions.authentication_failures": 2,
		"agentsessions.store.transactions": 5,
	} {
		if sums[name] != want {
			t.Errorf("metric %s = %d, want %d", name, sums[name], want)
		}
	}
	if sums["agentsessions.operation.duration"] == 0 {
		t.Error("no operation.duration recorded")
	}
	if _, ok := sums["agentsessions.live_sessions"]; !ok {
		t.Error("no live_sessions gauge")
	}

	// Nothing secret anywhere: every token, the handle, their digests,
	// the secret, the metadata, and (without WithAgentID) the agent ID.
	secrets := []string{iss.Token, ref.Token, digestOf(iss.Token), digestOf(ref.Token), hd.Handle, digestOf(hd.Handle),
		secret, metaKey, metaVal, agentID}
	// The token's parts alone are secrets too (the signature, the payload).
	for _, tok := range []string{iss.Token, ref.Token} {
		secrets = append(secrets, strings.Split(tok, ".")...)
	}
	dump := dumpAll(spans, rm)
	for _, s := range secrets {
		if strings.Contains(dump, s) {
			t.Errorf("exported telemetry contains %q", s)
		}
	}
	if !strings.Contains(dump, "agentsessions.issue") || !strings.Contains(dump, "db.query.text") {
		t.Fatal("the dump is missing what it should hold: the scan proves nothing")
	}
}

// WithAgentID puts the agent ID on spans, never on metrics.
func TestWithAgentIDOnSpansOnly(t *testing.T) {
	t.Parallel()
	r := newRig(t, otelsessions.WithAgentID())
	iss, err := r.m.Issue(context.Background(), agentID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Authenticate(context.Background(), iss.Token, agentID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Verify(context.Background(), iss.Token); err != nil {
		t.Fatal(err)
	}
	spans := r.exp.GetSpans()
	for _, name := range []string{"agentsessions.issue", "agentsessions.authenticate"} {
		s := spansNamed(spans, name)[0]
		if v, ok := attrOf(s.Attributes, otelsessions.AttrAgentID); !ok || v.AsString() != agentID {
			t.Errorf("%s: agent id attribute %v, want %q", name, v.AsString(), agentID)
		}
	}
	if _, ok := attrOf(spansNamed(spans, "agentsessions.verify")[0].Attributes, otelsessions.AttrAgentID); ok {
		t.Error("verify, which takes no agent id, records one")
	}
	if dump := fmt.Sprintf("%#v", r.metrics(t)); strings.Contains(dump, agentID) {
		t.Error("a metric carries the agent id")
	}
}

// A call rerun on a fresh connection shows as a span event on the
// operation's span and in the retry counter; a store failure is a span
// error.
func TestRetryEventOnCallerSpan(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	iss, err := r.m.Issue(ctx, agentID)
	if err != nil {
		t.Fatal(err)
	}
	// Make every pooled connection stale.
	for range poolSize {
		if _, err := r.m.Authenticate(ctx, iss.Token, agentID); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := r.d.Conn(t).QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`,
		r.app).Scan(&n); err != nil || n == 0 {
		t.Fatalf("terminated %d backends: %v", n, err)
	}
	if _, err := r.m.Revoke(ctx, iss.Session.ID); err != nil {
		t.Fatal(err)
	}
	revoke := spansNamed(r.exp.GetSpans(), "agentsessions.revoke")[0]
	var found bool
	for _, ev := range revoke.Events {
		if ev.Name != "agentsessions.store.retry" {
			continue
		}
		reason, _ := attrOf(ev.Attributes, otelsessions.AttrRetryReason)
		op, _ := attrOf(ev.Attributes, otelsessions.AttrStoreOp)
		sys, _ := attrOf(ev.Attributes, "db.system.name")
		found = reason.AsString() == pgxstore.RetryReconnect && op.AsString() == "delete" && sys.AsString() == "postgresql"
	}
	if !found {
		t.Fatalf("no reconnect retry event on the revoke span; events %+v", revoke.Events)
	}
	if sumsByName(r.metrics(t))["agentsessions.store.retries"] < 1 {
		t.Error("the retry counter did not count the rerun")
	}

	// A store failure: the operation's context is already past its deadline.
	dead, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	if _, err := r.m.Issue(dead, agentID); err == nil {
		t.Fatal("issue under a dead context succeeded")
	}
	var failed bool
	for _, s := range spansNamed(r.exp.GetSpans(), "agentsessions.issue") {
		if o, _ := attrOf(s.Attributes, otelsessions.AttrOutcome); o.AsString() == otelsessions.OutcomeError {
			et, _ := attrOf(s.Attributes, "error.type")
			failed = s.Status.Code == codes.Error && et.AsString() == sessions.CodeStoreUnavailable
		}
	}
	if !failed {
		t.Error("no issue span with outcome error, status Error and error.type store_unavailable")
	}
}

// sumsByName adds up each metric's data points (histograms: their counts).
func sumsByName(rm metricdata.ResourceMetrics) map[string]int64 {
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[m.Name] += p.Value
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out[m.Name] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[m.Name] += int64(p.Count)
				}
			}
		}
	}
	return out
}

// dumpAll renders every exported span (names, attributes, events, links,
// status) and metric (names, descriptions, data point attributes) as text.
func dumpAll(spans tracetest.SpanStubs, rm metricdata.ResourceMetrics) string {
	var b strings.Builder
	kvs := func(attrs []attribute.KeyValue) {
		for _, kv := range attrs {
			fmt.Fprintf(&b, " %s=%s", kv.Key, kv.Value.Emit())
		}
	}
	for _, s := range spans {
		fmt.Fprintf(&b, "span %s status=%s %q", s.Name, s.Status.Code, s.Status.Description)
		kvs(s.Attributes)
		for _, ev := range s.Events {
			fmt.Fprintf(&b, " event %s", ev.Name)
			kvs(ev.Attributes)
		}
		for _, l := range s.Links {
			kvs(l.Attributes)
		}
		b.WriteString("\n")
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			fmt.Fprintf(&b, "metric %s %s %#v\n", m.Name, m.Description, m.Data)
		}
	}
	return b.String()
}
