// Package otelsessions traces and measures agentsessions with
// OpenTelemetry. An [Observer] is both a [sessions.Observer] (set it as
// sessions.Config.Observer: a span and metrics per Manager and Handles
// operation) and a [pgxstore.Observer] (set it as pgxstore.Config.Observer:
// store reruns as span events on the caller's span, prune passes as spans,
// cache resyncs as counts); [Observer.ObserveStore] adds the store's
// counters and gauges, and [PgxTracer] traces every query of the pool.
//
// Spans are named "agentsessions." + the operation ([sessions.OpIssue],
// ...): agentsessions.issue, agentsessions.authenticate,
// agentsessions.handle.create, .... No span, event or metric ever carries
// a token, a handle, a secret, a digest, a metadata value or a query
// argument; the agent ID is recorded on spans only with [WithAgentID].
//
// # Outcomes
//
// Every operation span ends with agentsessions.outcome, one of:
//
//	ok        success
//	denied    the caller was refused: a bad, expired or revoked token, another agent's token,
//	          an unknown handle, the agent at its limit (HTTP 401, 403, 404, 409)
//	invalid   the caller's input was malformed (HTTP 400, 413, 415)
//	canceled  the caller's context was canceled (HTTP 499)
//	error     the store failed or something else went wrong (HTTP 5xx)
//
// and, unless ok, agentsessions.error.code (the code of
// [sessions.HTTPError], e.g. "unauthorized", "limit_exceeded") and
// agentsessions.failure_reason (the finer reason of the
// agentsessions_authentication_failures_total Prometheus metric, e.g.
// "digest_mismatch"). Only "error" sets the span's status to Error (with
// error.type set to the code): a denial is the service doing its job, not
// a failure of it, just as an HTTP server span is not an error for a 4xx.
// Error messages are never recorded: they may name an agent or hold a
// store's error text.
package otelsessions

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// ScopeName is the instrumentation scope of the tracer and meter.
const ScopeName = "github.com/agentsessions/agentsessions/otelsessions"

// Attribute keys of spans, span events and metrics.
const (
	AttrOperation     = attribute.Key("agentsessions.operation")      // "issue", "authenticate", ... (sessions.Op*)
	AttrKind          = attribute.Key("agentsessions.kind")           // "session" or the handle kind
	AttrAgentID       = attribute.Key("agentsessions.agent_id")       // spans only, with WithAgentID
	AttrOutcome       = attribute.Key("agentsessions.outcome")        // ok, denied, invalid, canceled, error
	AttrErrorCode     = attribute.Key("agentsessions.error.code")     // sessions.HTTPError(err).Code
	AttrFailureReason = attribute.Key("agentsessions.failure_reason") // finer reason: sessions.FailureReason
	AttrStoreOp       = attribute.Key("agentsessions.store.operation")
	AttrRetryReason   = attribute.Key("agentsessions.retry.reason") // pgxstore.RetrySerialization, RetrySharedMemory, RetryReconnect
	AttrRetryAttempt  = attribute.Key("agentsessions.retry.attempt")
	AttrRetryBackoff  = attribute.Key("agentsessions.retry.backoff") // seconds
	AttrRetryGaveUp   = attribute.Key("agentsessions.retry.gave_up")
	AttrResyncReason  = attribute.Key("agentsessions.cache.resync_reason")
	AttrPruneDeleted  = attribute.Key("agentsessions.prune.deleted")
	AttrPruneBatches  = attribute.Key("agentsessions.prune.batches")
	AttrPruneSkipped  = attribute.Key("agentsessions.prune.skipped")
)

// Stable OpenTelemetry semantic-convention attributes used here.
var (
	attrDBSystem  = attribute.String("db.system.name", "postgresql")
	keyDBStatus   = attribute.Key("db.response.status_code")
	keyErrorType  = attribute.Key("error.type")
	eventRetry    = "agentsessions.store.retry"
	spanPruneName = "agentsessions.prune"
)

// Outcomes (AttrOutcome).
const (
	OutcomeOK       = "ok"
	OutcomeDenied   = "denied"
	OutcomeInvalid  = "invalid"
	OutcomeCanceled = "canceled"
	OutcomeError    = "error"
)

// Option configures an [Observer] or [PgxTracer].
type Option func(*config)

type config struct {
	tp      trace.TracerProvider
	mp      metric.MeterProvider
	agentID bool
}

// WithTracerProvider sets the tracer provider. Default: otel's global one
// at the time New is called.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithMeterProvider sets the meter provider. Default: otel's global one at
// the time New is called.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithAgentID records the agent ID (for handles: the principal) of each
// operation that takes one as the agentsessions.agent_id span attribute.
// Off by default: an agent ID may identify a person or a customer, and
// traces often travel further than the session store's own data. It is
// never a metric attribute (its cardinality is unbounded).
func WithAgentID() Option {
	return func(c *config) { c.agentID = true }
}

func newConfig(opts []Option) config {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	return c
}

// Observer traces and measures agentsessions operations. It implements
// [sessions.Observer], [sessions.AgentIDObserver] and [pgxstore.Observer];
// one Observer may serve any number of managers and stores.
type Observer struct {
	tracer  trace.Tracer
	meter   metric.Meter
	agentID bool

	duration                           metric.Float64Histogram
	issued, refreshed, revoked         metric.Int64Counter
	limitDenials, authOK, authFailures metric.Int64Counter
	retries, exhausted                 metric.Int64Counter
	resyncs, pruned, pruneErrors       metric.Int64Counter
}

// durationBuckets are those of the Prometheus histogram
// agentsessions_store_operation_duration_seconds: 12 exponential buckets
// from 250µs to 2.5s.
var durationBuckets = []float64{
	0.00025, 0.000577, 0.001331, 0.003071, 0.007088, 0.016357,
	0.037748, 0.087110, 0.201017, 0.463876, 1.070453, 2.5,
}

// New returns an Observer on the providers of opts.
func New(opts ...Option) (*Observer, error) {
	c := newConfig(opts)
	o := &Observer{
		tracer:  c.tp.Tracer(ScopeName),
		meter:   c.mp.Meter(ScopeName),
		agentID: c.agentID,
	}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		ctr, err := o.meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return ctr
	}
	var err error
	o.duration, err = o.meter.Float64Histogram("agentsessions.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("Latency of session operations (one Manager or Handles call: token checks plus the store round trips), by operation and outcome."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	errs = append(errs, err)
	o.issued = counter("agentsessions.sessions.issued", "{session}", "Sessions issued.")
	o.refreshed = counter("agentsessions.sessions.refreshed", "{session}", "Sessions refreshed with a new token.")
	o.revoked = counter("agentsessions.sessions.revoked", "{call}", "Successful Revoke calls (idempotent revokes of unknown IDs included).")
	o.limitDenials = counter("agentsessions.limit_denials", "{call}", "Issues refused because the agent was at its session limit.")
	o.authOK = counter("agentsessions.authentications", "{call}", "Successful token authentications (Authenticate and Verify).")
	o.authFailures = counter("agentsessions.authentication_failures", "{call}", "Refused Authenticate, Verify and Refresh calls, by reason.")
	o.retries = counter("agentsessions.store.retries", "{rerun}", "Store attempts rerun, by store operation and reason (serialization_failure, reconnect).")
	o.exhausted = counter("agentsessions.store.retries_exhausted", "{call}", "Store calls that gave up after their retries (ErrRetriesExhausted).")
	o.resyncs = counter("agentsessions.cache.resyncs", "{resync}", "Times the verified-session cache was emptied, by reason.")
	o.pruned = counter("agentsessions.pruned_sessions", "{session}", "Expired sessions deleted by prune passes.")
	o.pruneErrors = counter("agentsessions.prune_errors", "{pass}", "Prune passes that failed.")
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return o, nil
}

// ObserveAgentID implements [sessions.AgentIDObserver]: true with
// [WithAgentID].
func (o *Observer) ObserveAgentID() bool { return o.agentID }

// Start implements [sessions.Observer]: it starts the span
// "agentsessions."+op.Name and returns its context and its end.
func (o *Observer) Start(ctx context.Context, op sessions.Op) (context.Context, func(error)) {
	start := time.Now()
	attrs := make([]attribute.KeyValue, 0, 3)
	attrs = append(attrs, AttrOperation.String(op.Name))
	if op.Kind != "" {
		attrs = append(attrs, AttrKind.String(op.Kind))
	}
	spanAttrs := attrs
	if o.agentID && op.AgentID != "" {
		spanAttrs = append(spanAttrs[:len(spanAttrs):len(spanAttrs)], AttrAgentID.String(op.AgentID))
	}
	ctx, span := o.tracer.Start(ctx, "agentsessions."+op.Name, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(spanAttrs...))
	return ctx, func(err error) {
		outcome, code, reason := classify(err)
		mattrs := append(attrs, AttrOutcome.String(outcome))
		if span.IsRecording() {
			span.SetAttributes(AttrOutcome.String(outcome))
			if err != nil {
				span.SetAttributes(AttrErrorCode.String(code), AttrFailureReason.String(reason))
			}
			if outcome == OutcomeError {
				span.SetAttributes(keyErrorType.String(code))
				span.SetStatus(codes.Error, code)
			}
		}
		span.End()
		o.duration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(mattrs...))
		o.count(ctx, op.Name, err, code, reason)
	}
}

// count updates the counters that mirror the service's Prometheus ones.
func (o *Observer) count(ctx context.Context, op string, err error, code, reason string) {
	switch op {
	case sessions.OpIssue:
		switch {
		case err == nil:
			o.issued.Add(ctx, 1)
		case code == sessions.CodeLimitExceeded:
			o.limitDenials.Add(ctx, 1)
		}
	case sessions.OpAuthenticate, sessions.OpVerify, sessions.OpRefresh:
		switch {
		case err != nil:
			o.authFailures.Add(ctx, 1, metric.WithAttributes(AttrFailureReason.String(reason)))
		case op == sessions.OpRefresh:
			o.refreshed.Add(ctx, 1)
		default:
			o.authOK.Add(ctx, 1)
		}
	case sessions.OpRevoke:
		if err == nil {
			o.revoked.Add(ctx, 1)
		}
	case sessions.OpRevokeOthers:
		// The token is checked as Authenticate checks it; how many
		// sessions went is not known here (end carries no result).
		if err != nil {
			o.authFailures.Add(ctx, 1, metric.WithAttributes(AttrFailureReason.String(reason)))
		}
	}
}

// classify returns err's outcome, error code and failure reason.
func classify(err error) (outcome, code, reason string) {
	if err == nil {
		return OutcomeOK, "", ""
	}
	info := sessions.HTTPError(err)
	switch {
	case info.Code == sessions.CodeCanceled:
		outcome = OutcomeCanceled
	case info.Status >= 500:
		outcome = OutcomeError
	case info.Status == http.StatusBadRequest || info.Status == http.StatusRequestEntityTooLarge ||
		info.Status == http.StatusUnsupportedMediaType:
		outcome = OutcomeInvalid
	default:
		outcome = OutcomeDenied
	}
	return outcome, info.Code, sessions.FailureReason(err)
}

// Retry implements [pgxstore.Observer]: an event on the caller's span
// (when it is recording) and the retry counters.
func (o *Observer) Retry(ctx context.Context, ev pgxstore.RetryEvent) {
	if ev.GaveUp {
		o.exhausted.Add(ctx, 1, metric.WithAttributes(AttrStoreOp.String(ev.Op)))
	} else {
		o.retries.Add(ctx, 1, metric.WithAttributes(AttrStoreOp.String(ev.Op), AttrRetryReason.String(ev.Reason)))
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{attrDBSystem, AttrStoreOp.String(ev.Op), AttrRetryReason.String(ev.Reason),
		AttrRetryAttempt.Int(ev.Attempt), AttrRetryBackoff.Float64(ev.Backoff.Seconds()), AttrRetryGaveUp.Bool(ev.GaveUp)}
	if ev.SQLState != "" {
		attrs = append(attrs, keyDBStatus.String(ev.SQLState))
	}
	span.AddEvent(eventRetry, trace.WithAttributes(attrs...))
}

// Prune implements [pgxstore.Observer]: a span "agentsessions.prune"
// around the pass (its queries are its children) and the prune counters.
func (o *Observer) Prune(ctx context.Context) (context.Context, func(pgxstore.PruneResult, error)) {
	ctx, span := o.tracer.Start(ctx, spanPruneName, trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(attrDBSystem))
	return ctx, func(res pgxstore.PruneResult, err error) {
		if err != nil {
			o.pruneErrors.Add(ctx, 1)
			span.SetAttributes(keyErrorType.String(sessions.HTTPError(err).Code))
			span.SetStatus(codes.Error, "prune failed")
		} else {
			o.pruned.Add(ctx, res.Deleted)
		}
		span.SetAttributes(AttrPruneDeleted.Int64(res.Deleted), AttrPruneBatches.Int(res.Batches), AttrPruneSkipped.Bool(res.Skipped))
		span.End()
	}
}

// CacheResync implements [pgxstore.Observer]: the resync counter, and an
// event on the context's span if it is recording.
func (o *Observer) CacheResync(ctx context.Context, reason string) {
	o.resyncs.Add(ctx, 1, metric.WithAttributes(AttrResyncReason.String(reason)))
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent("agentsessions.cache.resync", trace.WithAttributes(AttrResyncReason.String(reason)))
	}
}

// LiveSessionsTTL is how long ObserveStore reuses a live-session count.
const LiveSessionsTTL = 10 * time.Second

// ObserveStore registers the store's own counters and gauges with the
// Observer's meter, read at each collection: agentsessions.store.transactions,
// agentsessions.store.lookups, agentsessions.store.lookup_round_trips,
// agentsessions.cache.hits, agentsessions.cache.misses (their ratio is the
// cache hit ratio), agentsessions.cache.invalidations, the gauges
// agentsessions.cache.fresh (1 while the cache answers) and
// agentsessions.live_sessions (counted in the database at most once per
// LiveSessionsTTL, all instances together). Unregister the returned
// registration when the store goes away.
func (o *Observer) ObserveStore(store *pgxstore.Store) (metric.Registration, error) {
	var errs []error
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := o.meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := o.meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	txns := counter("agentsessions.store.transactions", "{transaction}", "Limit-check transactions (Insert calls) run by this store.")
	lookups := counter("agentsessions.store.lookups", "{lookup}", "Session lookups sent to the database.")
	trips := counter("agentsessions.store.lookup_round_trips", "{round_trip}", "Round trips the lookups took (lookups/round trips is the mean batch size).")
	hits := counter("agentsessions.cache.hits", "{lookup}", "Session lookups answered by the verified-session cache.")
	misses := counter("agentsessions.cache.misses", "{lookup}", "Session lookups the cache sent to the database.")
	invals := counter("agentsessions.cache.invalidations", "{invalidation}", "Revocations applied to the cache.")
	fresh := gauge("agentsessions.cache.fresh", "1", "1 while the cache answers (its listener confirmed within the staleness bound), else 0.")
	live := gauge("agentsessions.live_sessions", "{session}", "Unexpired sessions in the store, all instances together (counted at most every 10s).")
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	lc := &liveCount{count: store.LiveSessions}
	return o.meter.RegisterCallback(func(ctx context.Context, obs metric.Observer) error {
		s := store.Stats()
		obs.ObserveInt64(txns, int64(s.Transactions))
		obs.ObserveInt64(lookups, int64(s.Lookups))
		obs.ObserveInt64(trips, int64(s.LookupTrips))
		if cs := store.CacheStats(); cs.Running {
			obs.ObserveInt64(hits, int64(cs.Hits))
			obs.ObserveInt64(misses, int64(cs.Misses))
			obs.ObserveInt64(invals, int64(cs.Invalidations))
			f := int64(0)
			if cs.Fresh {
				f = 1
			}
			obs.ObserveInt64(fresh, f)
		}
		if n, ok := lc.get(ctx); ok {
			obs.ObserveInt64(live, n)
		}
		return nil
	}, txns, lookups, trips, hits, misses, invals, fresh, live)
}

// liveCount caches the live-session count for LiveSessionsTTL.
type liveCount struct {
	count func(context.Context, time.Time) (int64, error)

	mu  sync.Mutex
	at  time.Time
	val int64
	ok  bool
}

func (c *liveCount) get(ctx context.Context) (int64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= LiveSessionsTTL {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		n, err := c.count(ctx, time.Now())
		cancel()
		c.at, c.val, c.ok = time.Now(), n, err == nil
	}
	return c.val, c.ok
}
