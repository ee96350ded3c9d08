package server

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/agentsessions/agentsessions/sessions"
	"github.com/agentsessions/agentsessions/sessions/pgxstore"
)

// AuthFailureReasons are the values of the reason label of
// agentsessions_authentication_failures_total; each starts at 0.
var AuthFailureReasons = []string{
	"invalid_token", "invalid_signature", "expired", "idle_timeout", "lifetime_exceeded",
	"agent_mismatch", "unknown_session", "metadata_mismatch", "digest_mismatch",
	"clock_before_epoch", "access_denied", "invalid_agent_id", "store_error", "other",
}

type metrics struct {
	issued, refreshed, revoked, evicted prometheus.Counter
	limitDenials, authOK, adminDenials  prometheus.Counter
	pruned, pruneErrors                 prometheus.Counter
	authFailures                        *prometheus.CounterVec
	opDuration                          *prometheus.HistogramVec
	httpRequests                        *prometheus.CounterVec
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

func newMetrics(reg prometheus.Registerer, stats func() pgxstore.Stats, lastUse func() sessions.LastUseStats,
	live func(context.Context) (int64, error), liveTTL time.Duration, log *slog.Logger) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "agentsessions", Name: name, Help: help})
	}
	m := &metrics{
		issued:       counter("sessions_issued_total", "Sessions issued (POST /v1/sessions)."),
		refreshed:    counter("sessions_refreshed_total", "Sessions refreshed with a new token."),
		revoked:      counter("sessions_revoked_total", "Sessions revoked through the admin routes (idempotent revokes of unknown IDs included)."),
		evicted:      counter("sessions_evicted_total", "Sessions revoked by the evict-oldest or evict-least-recently-used policy to make room."),
		limitDenials: counter("limit_denials_total", "Issues refused because the agent was at its session limit."),
		authOK:       counter("authentications_total", "Successful token authentications."),
		adminDenials: counter("admin_auth_failures_total", "Admin requests refused for a missing or wrong admin key."),
		pruned:       counter("pruned_sessions_total", "Expired sessions deleted by this instance's pruner."),
		pruneErrors:  counter("prune_errors_total", "Pruner passes that failed."),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "agentsessions", Name: "authentication_failures_total",
			Help: "Refused authenticate and refresh calls, by reason.",
		}, []string{"reason"}),
		opDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "agentsessions", Name: "store_operation_duration_seconds",
			Help: "Latency of session operations (one Manager call: token checks plus the store round trips), by op.",
			// 250µs (memory store) to 2.5s (a contended limit transaction's retries).
			Buckets: prometheus.ExponentialBucketsRange(0.00025, 2.5, 12),
		}, []string{"op"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "agentsessions", Name: "http_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
	}
	for _, r := range AuthFailureReasons {
		m.authFailures.WithLabelValues(r)
	}
	cs := []prometheus.Collector{
		m.issued, m.refreshed, m.revoked, m.evicted, m.limitDenials, m.authOK, m.adminDenials,
		m.pruned, m.pruneErrors, m.authFailures, m.opDuration, m.httpRequests,
	}
	if stats != nil {
		storeCounter := func(name, help string, field func(pgxstore.Stats) uint64) prometheus.Collector {
			return statCounter(stats, name, help, field)
		}
		cs = append(cs,
			storeCounter("store_transactions_total", "Limit-check transactions run by this instance's PostgreSQL store.",
				func(s pgxstore.Stats) uint64 { return s.Transactions }),
			storeCounter("store_serialization_retries_total", "Store calls rerun after a serialization failure or deadlock (SQLSTATE 40001/40P01).",
				func(s pgxstore.Stats) uint64 { return s.Retries }),
			storeCounter("store_retries_exhausted_total", "Store calls that gave up after their retries (ErrRetriesExhausted).",
				func(s pgxstore.Stats) uint64 { return s.Exhausted }),
			storeCounter("store_reconnects_total", "Store calls rerun because their connection broke before commit.",
				func(s pgxstore.Stats) uint64 { return s.Reconnects }),
		)
	}
	useCounter := func(name, help string, field func(sessions.LastUseStats) uint64) prometheus.Collector {
		return statCounter(lastUse, name, help, field)
	}
	cs = append(cs,
		useCounter("last_use_flushes_total", "Batches of session last uses written by this instance (--idle-timeout, evict-least-recently-used).",
			func(s sessions.LastUseStats) uint64 { return s.Flushes }),
		useCounter("last_use_writes_total", "Session last uses written by this instance, in those batches.",
			func(s sessions.LastUseStats) uint64 { return s.Uses }),
		useCounter("last_use_flush_errors_total", "Batches of last uses that failed; they are kept and written with the next.",
			func(s sessions.LastUseStats) uint64 { return s.Failures }),
	)
	if live != nil {
		cs = append(cs, &liveCollector{
			desc: prometheus.NewDesc("agentsessions_live_sessions",
				"Unexpired sessions in the store, all instances together (cached; see the server's docs).", nil, nil),
			count: live, ttl: liveTTL, log: log,
		})
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// statCounter is a counter read at scrape time from one field of what
// stats returns (the store's or the manager's counters).
func statCounter[S any](stats func() S, name, help string, field func(S) uint64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "agentsessions", Name: name, Help: help},
		func() float64 { return float64(field(stats())) })
}

// liveCollector exports the live-session count, running the count at most
// once per ttl however often /metrics is scraped. A failed count is logged
// and the gauge omitted from that scrape.
type liveCollector struct {
	desc  *prometheus.Desc
	count func(context.Context) (int64, error)
	ttl   time.Duration
	log   *slog.Logger

	mu  sync.Mutex
	at  time.Time
	val int64
	ok  bool
}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= c.ttl {
		ctx, cancel := context.WithTimeout(context.Background(), DefaultReadyTimeout)
		n, err := c.count(ctx)
		cancel()
		c.at, c.val, c.ok = time.Now(), n, err == nil
		if err != nil {
			c.log.Warn("counting live sessions for /metrics failed", "error", err)
		}
	}
	if c.ok {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(c.val))
	}
}

// registerCacheMetrics exports the counters of pgxstore.Store's
// verified-session cache.
func registerCacheMetrics(reg prometheus.Registerer, stats func() pgxstore.CacheStats) error {
	counter := func(name, help string, field func(pgxstore.CacheStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "agentsessions", Name: name, Help: help},
			func() float64 { return float64(field(stats())) })
	}
	cs := []prometheus.Collector{
		counter("cache_hits_total", "Session lookups answered by this instance's verified-session cache.",
			func(s pgxstore.CacheStats) uint64 { return s.Hits }),
		counter("cache_misses_total", "Session lookups the cache sent to the database.",
			func(s pgxstore.CacheStats) uint64 { return s.Misses }),
		counter("cache_invalidations_total", "Revocations applied to the cache (notifications and local revokes).",
			func(s pgxstore.CacheStats) uint64 { return s.Invalidations }),
		counter("cache_resyncs_total", "Cache listener (re)connections, each emptying the cache.",
			func(s pgxstore.CacheStats) uint64 { return s.Resyncs }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "agentsessions", Name: "cache_fresh",
			Help: "1 while the cache answers (its listener confirmed within the staleness bound), else 0."},
			func() float64 {
				if stats().Fresh {
					return 1
				}
				return 0
			}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
