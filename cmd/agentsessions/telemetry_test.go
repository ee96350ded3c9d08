package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/agentsessions/agentsessions/cmd/internal/server"
	"github.com/agentsessions/agentsessions/internal/testdb"
	"github.com/agentsessions/agentsessions/otelsessions"
	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

func TestTelemetryEnabledByEnvironment(t *testing.T) {
	for _, c := range []struct {
		env             map[string]string
		traces, metrics bool
	}{
		{nil, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "console"}, true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"}, true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, false, false},
		{map[string]string{"OTEL_SERVICE_NAME": "x"}, false, false},
	} {
		traces, metrics := telemetryEnabled(func(k string) string { return c.env[k] })
		if traces != c.traces || metrics != c.metrics {
			t.Errorf("%v: traces %v metrics %v, want %v %v", c.env, traces, metrics, c.traces, c.metrics)
		}
	}
	tel, err := newTelemetry(context.Background(), func(string) string { return "" })
	if tel != nil || err != nil {
		t.Fatalf("no OTEL_* environment: telemetry %v, %v; want none", tel, err)
	}
}

// A request carrying a traceparent gets a server span whose parent is the
// caller's, the manager's span below it, and the queries below that.
func TestTraceparentThroughHTTPAndStore(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })
	obs, err := otelsessions.New(otelsessions.WithTracerProvider(tp), otelsessions.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	tel := &telemetry{tp: tp, mp: mp, obs: obs, prop: propagation.TraceContext{}}

	pc, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.Tracer = otelsessions.PgxTracer(otelsessions.WithTracerProvider(tp), otelsessions.WithMeterProvider(mp))
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := pgxstore.New(pool, &pgxstore.Config{Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	m, err := sessions.New(store, sessions.Config{Secret: []byte(strings.Repeat("s", 32)), TTL: time.Hour, Limit: 3, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(m, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := m.Issue(context.Background(), "agent-http")
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(tel.handler(srv))
	t.Cleanup(hs.Close)

	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	body, _ := json.Marshal(map[string]string{"agent_id": "agent-http", "token": iss.Token})
	req, _ := http.NewRequest(http.MethodPost, hs.URL+"/v1/sessions/authenticate", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("authenticate: %s", resp.Status)
	}

	spans := exp.GetSpans()
	find := func(pred func(tracetest.SpanStub) bool) (tracetest.SpanStub, bool) {
		for _, s := range spans {
			if pred(s) {
				return s, true
			}
		}
		return tracetest.SpanStub{}, false
	}
	httpSpan, ok := find(func(s tracetest.SpanStub) bool { return s.Name == "POST /v1/sessions/authenticate" })
	if !ok {
		t.Fatalf("no server span named after the route; spans: %v", names(spans))
	}
	if httpSpan.SpanKind != trace.SpanKindServer || httpSpan.SpanContext.TraceID().String() != traceID ||
		httpSpan.Parent.SpanID().String() != parentID || !httpSpan.Parent.IsRemote() {
		t.Fatalf("server span: kind %v trace %s parent %s (remote %v); want the caller's trace %s and span %s",
			httpSpan.SpanKind, httpSpan.SpanContext.TraceID(), httpSpan.Parent.SpanID(), httpSpan.Parent.IsRemote(), traceID, parentID)
	}
	op, ok := find(func(s tracetest.SpanStub) bool { return s.Name == "agentsessions.authenticate" })
	if !ok || op.Parent.SpanID() != httpSpan.SpanContext.SpanID() {
		t.Fatalf("agentsessions.authenticate span (found %v) is not the server span's child", ok)
	}
	query, ok := find(func(s tracetest.SpanStub) bool {
		return s.Parent.SpanID() == op.SpanContext.SpanID() && hasAttr(s.Attributes, "db.system.name", "postgresql")
	})
	if !ok {
		t.Fatalf("no postgresql span below agentsessions.authenticate; spans: %v", names(spans))
	}
	if query.SpanContext.TraceID().String() != traceID {
		t.Fatalf("query span in trace %s, want %s", query.SpanContext.TraceID(), traceID)
	}
	for _, s := range spans {
		for _, kv := range s.Attributes {
			if strings.Contains(kv.Value.Emit(), iss.Token) || strings.Contains(kv.Value.Emit(), strings.Split(iss.Token, ".")[1]) {
				t.Fatalf("span %s attribute %s carries the token", s.Name, kv.Key)
			}
		}
	}
}

func hasAttr(kvs []attribute.KeyValue, key, value string) bool {
	for _, kv := range kvs {
		if string(kv.Key) == key && kv.Value.Emit() == value {
			return true
		}
	}
	return false
}

func names(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name+"<-"+s.Parent.SpanID().String())
	}
	return out
}
