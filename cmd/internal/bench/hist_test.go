package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The histogram's quantiles are the exact nearest-rank ones to within its
// stated precision (never below them), over values spread across nine
// decades, and its memory does not grow with the number of values.
func TestHistogramQuantilesWithinPrecision(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	h := &histogram{}
	var exact []time.Duration
	for range 200_000 {
		// Log-uniform from 1ns to ~1000s.
		d := time.Duration(math.Pow(10, rng.Float64()*12))
		h.record(d)
		exact = append(exact, d)
	}
	slices.Sort(exact)
	for _, p := range []float64{1, 10, 50, 90, 95, 99, 99.9, 99.99, 100} {
		want := Percentile(exact, p)
		got := h.quantile(p)
		if got < want || float64(got-want) > HistogramPrecision*float64(want)+1 {
			t.Errorf("p%v = %v, exact %v: outside +%.2f%%", p, got, want, 100*HistogramPrecision)
		}
	}
	if l := h.latency(); l.N != len(exact) || l.Max != exact[len(exact)-1] || l.P999 < l.P99 {
		t.Errorf("latency %+v", l)
	}
	if len(h.counts) > histBuckets {
		t.Fatalf("%d buckets, more than the bound %d", len(h.counts), histBuckets)
	}
	before := len(h.counts)
	for range 1_000_000 {
		h.record(time.Duration(rng.Int64N(int64(1000 * time.Second))))
	}
	if len(h.counts) != before {
		t.Errorf("buckets grew from %d to %d with values in the range already covered", before, len(h.counts))
	}
	// Every int64 has a bucket, and each bucket's upper bound maps back to it.
	for _, v := range []int64{0, 1, 255, 256, 257, 511, 512, 1 << 40, 1<<63 - 1} {
		i := histIndex(v)
		if i >= histBuckets || histUpper(i) < v || histIndex(histUpper(i)) != i {
			t.Errorf("value %d: bucket %d, upper bound %d", v, i, histUpper(i))
		}
	}
}

// Merging histograms is the same as recording everything in one.
func TestHistogramMerge(t *testing.T) {
	a, b, all := &histogram{}, &histogram{}, &histogram{}
	for i := range 1000 {
		d := time.Duration(i*i) * time.Microsecond
		all.record(d)
		if i%3 == 0 {
			a.record(d)
		} else {
			b.record(d)
		}
	}
	a.merge(b)
	a.merge(nil)
	if a.latency() != all.latency() {
		t.Errorf("merged %+v, recorded in one %+v", a.latency(), all.latency())
	}
}
