package main

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/agentsessions/agentsessions/otelsessions"
)

// telemetry is serve's OpenTelemetry: providers exporting as the OTEL_*
// environment says, the session observer on them, and the W3C trace
// context propagator for incoming requests.
type telemetry struct {
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	obs      *otelsessions.Observer
	prop     propagation.TextMapPropagator
	shutdown []func(context.Context) error
}

// telemetryEnabled reports whether the environment asks for traces and
// for metrics: an OTLP endpoint (general or per signal) or an exporter
// named in OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER other than
// "none". OTEL_SDK_DISABLED=true turns both off.
func telemetryEnabled(getenv func(string) string) (traces, metrics bool) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return false, false
	}
	on := func(exporterVar, endpointVar string) bool {
		switch exp := strings.TrimSpace(getenv(exporterVar)); {
		case exp == "none":
			return false
		case exp != "":
			return true
		}
		return getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv(endpointVar) != ""
	}
	return on("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
		on("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
}

// newTelemetry sets up export from the environment (autoexport reads
// OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_*, ...); it returns nil when
// the environment asks for neither traces nor metrics.
func newTelemetry(ctx context.Context, getenv func(string) string) (*telemetry, error) {
	traces, metrics := telemetryEnabled(getenv)
	if !traces && !metrics {
		return nil, nil
	}
	// service.name defaults to agentsessions; OTEL_SERVICE_NAME and
	// OTEL_RESOURCE_ATTRIBUTES override it.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "agentsessions")),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, err
	}
	t := &telemetry{tp: tracenoop.NewTracerProvider(), mp: metricnoop.NewMeterProvider(), prop: propagation.TraceContext{}}
	if traces {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, err
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		t.tp, t.shutdown = tp, append(t.shutdown, tp.Shutdown)
	}
	if metrics {
		reader, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return nil, errors.Join(err, t.close(ctx))
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(res))
		t.mp, t.shutdown = mp, append(t.shutdown, mp.Shutdown)
	}
	if t.obs, err = otelsessions.New(otelsessions.WithTracerProvider(t.tp), otelsessions.WithMeterProvider(t.mp)); err != nil {
		return nil, errors.Join(err, t.close(ctx))
	}
	return t, nil
}

// close flushes and stops the exporters.
func (t *telemetry) close(ctx context.Context) error {
	var errs []error
	for _, f := range t.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

// handler traces h's requests: a server span per request named after its
// route ("POST /v1/sessions/authenticate"), the child of the caller's span
// when the request carries a W3C traceparent header.
func (t *telemetry) handler(h http.Handler) http.Handler {
	return otelhttp.NewHandler(h, "agentsessions",
		otelhttp.WithTracerProvider(t.tp), otelhttp.WithMeterProvider(t.mp), otelhttp.WithPropagators(t.prop),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if r.Pattern != "" && r.Pattern != "/" {
				return r.Pattern
			}
			return r.Method
		}))
}
