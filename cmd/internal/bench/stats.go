package bench

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// Operation kinds, as they appear in reports.
const (
	OpIssue        = "issue"
	OpAuthenticate = "authenticate"
	OpRevoke       = "revoke"
)

// Outcome classes. ClassOK and ClassLimit are expected outcomes; every
// other class counts as an error.
const (
	ClassOK               = "ok"
	ClassLimit            = "limit_exceeded"    // ErrLimitExceeded: the agent was full (expected)
	ClassRetriesExhausted = "retries_exhausted" // ErrRetriesExhausted
	ClassTimeout          = "timeout"           // the per-operation deadline passed
	ClassCanceled         = "canceled"          // the run was interrupted
	ClassStore            = "store_error"       // any other ErrStore
	ClassDenied           = "access_denied"     // ErrAccessDenied: a session the worker owns was not found
	ClassExpired          = "expired"           // ErrSessionExpired
	ClassFailed           = "failed"            // a reference engine's failed transaction or command
	ClassOther            = "other"
)

// Classify maps an error returned by the library to an outcome class.
func Classify(err error) string {
	switch {
	case err == nil:
		return ClassOK
	case errors.Is(err, sessions.ErrLimitExceeded):
		return ClassLimit
	case errors.Is(err, pgxstore.ErrRetriesExhausted):
		return ClassRetriesExhausted
	case errors.Is(err, context.DeadlineExceeded):
		return ClassTimeout
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.Is(err, sessions.ErrStore):
		return ClassStore
	case errors.Is(err, sessions.ErrAccessDenied):
		return ClassDenied
	case errors.Is(err, sessions.ErrSessionExpired):
		return ClassExpired
	default:
		return ClassOther
	}
}

// IsError reports whether an outcome class is an error (not ok, not the
// expected limit refusal).
func IsError(class string) bool { return class != ClassOK && class != ClassLimit }

// Latency summarises a set of latency samples exactly: every sample is
// kept, and percentiles are nearest-rank over the sorted samples (the
// p-th percentile is the smallest sample that at least p % of all samples
// are less than or equal to). No interpolation, no bucketing.
//
// Results of a run come from a [histogram] instead (bounded memory): the
// same nearest-rank percentiles, each at most [HistogramPrecision] above
// the exact one; N, Mean and Max are exact.
type Latency struct {
	N    int
	Mean time.Duration
	P50  time.Duration
	P95  time.Duration
	P99  time.Duration
	P999 time.Duration // p99.9
	Max  time.Duration
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, which must be in ascending order; 0 for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = max(1, min(n, rank))
	return sorted[rank-1]
}

// Summarize sorts samples in place and summarises them.
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum float64
	for _, s := range samples {
		sum += float64(s)
	}
	return Latency{
		N:    len(samples),
		Mean: time.Duration(sum / float64(len(samples))),
		P50:  Percentile(samples, 50),
		P95:  Percentile(samples, 95),
		P99:  Percentile(samples, 99),
		P999: Percentile(samples, 99.9),
		Max:  samples[len(samples)-1],
	}
}

type latencyJSON struct {
	N      int     `json:"samples"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P95MS  float64 `json:"p95_ms"`
	P99MS  float64 `json:"p99_ms"`
	P999MS float64 `json:"p99_9_ms,omitempty"`
	MaxMS  float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMS(v float64) time.Duration { return time.Duration(math.Round(v * float64(time.Millisecond))) }

// MarshalJSON writes milliseconds (fractional) for readability.
func (l Latency) MarshalJSON() ([]byte, error) {
	return json.Marshal(latencyJSON{l.N, ms(l.Mean), ms(l.P50), ms(l.P95), ms(l.P99), ms(l.P999), ms(l.Max)})
}

// UnmarshalJSON reads what MarshalJSON writes (to nanosecond precision).
func (l *Latency) UnmarshalJSON(b []byte) error {
	var j latencyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*l = Latency{j.N, fromMS(j.MeanMS), fromMS(j.P50MS), fromMS(j.P95MS), fromMS(j.P99MS), fromMS(j.P999MS), fromMS(j.MaxMS)}
	return nil
}

// recorder collects one worker's latencies (a histogram per operation)
// and outcomes; it is not shared, so recording takes no lock. Recorders
// are merged when the run ends.
type recorder struct {
	samples  map[string]*histogram
	outcomes map[string]map[string]int64
	examples map[string]string // first error message per class
}

func newRecorder() *recorder {
	return &recorder{
		samples:  map[string]*histogram{},
		outcomes: map[string]map[string]int64{},
		examples: map[string]string{},
	}
}

func (r *recorder) record(op, class string, d time.Duration, err error) {
	h := r.samples[op]
	if h == nil {
		h = &histogram{}
		r.samples[op] = h
	}
	h.record(d)
	r.count(op, class, err)
}

// count records an outcome without a latency (a reference engine's
// failed transaction, whose time is unknown).
func (r *recorder) count(op, class string, err error) {
	m := r.outcomes[op]
	if m == nil {
		m = map[string]int64{}
		r.outcomes[op] = m
	}
	m[class]++
	if err != nil && IsError(class) {
		if _, ok := r.examples[class]; !ok {
			r.examples[class] = err.Error()
		}
	}
}

// OpResult is what one kind of operation did within a run.
type OpResult struct {
	Ops      int64            `json:"ops"`
	Latency  Latency          `json:"latency"`
	Outcomes map[string]int64 `json:"outcomes"`
}

// merge combines recorders into per-operation results, plus the combined
// latency and outcomes of the operations named in counted.
func merge(recs []*recorder, counted []string) (byOp map[string]OpResult, lat Latency, outcomes map[string]int64, examples map[string]string) {
	byOp = map[string]OpResult{}
	outcomes = map[string]int64{}
	examples = map[string]string{}
	ops := map[string]bool{}
	for _, r := range recs {
		for op := range r.outcomes {
			ops[op] = true
		}
		for class, msg := range r.examples {
			if _, ok := examples[class]; !ok {
				examples[class] = msg
			}
		}
	}
	all := &histogram{}
	for op := range ops {
		s := &histogram{}
		oc := map[string]int64{}
		for _, r := range recs {
			s.merge(r.samples[op])
			for c, n := range r.outcomes[op] {
				oc[c] += n
			}
		}
		if slices.Contains(counted, op) {
			all.merge(s)
			for c, n := range oc {
				outcomes[c] += n
			}
		}
		var n int64
		for _, v := range oc {
			n += v
		}
		byOp[op] = OpResult{Ops: n, Latency: s.latency(), Outcomes: oc}
	}
	return byOp, all.latency(), outcomes, examples
}

// errorCount adds up the error classes of outcomes.
func errorCount(outcomes map[string]int64) int64 {
	var n int64
	for c, v := range outcomes {
		if IsError(c) {
			n += v
		}
	}
	return n
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
