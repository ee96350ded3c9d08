package bench

import (
	"math"
	"math/bits"
	"time"
)

// histogram records latencies in bounded memory, the way an HDR histogram
// does: values below 2^(histSubBits+1) ns get a bucket each; above that,
// every power of two is split into 2^histSubBits equal buckets. A bucket's
// width is then at most 1/2^histSubBits (0.78 %) of the values in it, so
// a quantile read back is within that relative precision of the exact
// nearest-rank one. The count, minimum, maximum and sum are exact.
//
// Memory is at most histBuckets counters (58 KiB) however many values are
// recorded; the slice grows only as far as the largest value needs.
type histogram struct {
	counts   []uint64
	n        uint64
	sum      float64 // ns
	min, max int64   // ns
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits // buckets per power of two
	histLinear  = 2 * histSub      // values below this have a bucket each
	// histBuckets covers every non-negative int64.
	histBuckets = histLinear + (63-histSubBits-1)*histSub
)

// HistogramPrecision is the histogram's relative precision: a quantile it
// reports is at most this fraction above the exact one, never below.
const HistogramPrecision = 1.0 / histSub

func histIndex(v int64) int {
	if v < histLinear {
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - histSubBits - 1 // v>>shift in [histSub, 2*histSub)
	return histLinear + (shift-1)*histSub + int(v>>shift) - histSub
}

// histUpper is the largest value that lands in bucket i.
func histUpper(i int) int64 {
	if i < histLinear {
		return int64(i)
	}
	shift := (i-histLinear)/histSub + 1
	m := int64((i-histLinear)%histSub + histSub)
	return (m+1)<<shift - 1
}

func (h *histogram) record(d time.Duration) {
	v := max(int64(d), 0)
	i := histIndex(v)
	if i >= len(h.counts) {
		grown := make([]uint64, min(histBuckets, max(i+1, 2*len(h.counts))))
		copy(grown, h.counts)
		h.counts = grown
	}
	h.counts[i]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	h.max = max(h.max, v)
	h.n++
	h.sum += float64(v)
}

func (h *histogram) merge(o *histogram) {
	if o == nil || o.n == 0 {
		return
	}
	if len(o.counts) > len(h.counts) {
		grown := make([]uint64, len(o.counts))
		copy(grown, h.counts)
		h.counts = grown
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// quantile returns the nearest-rank p-th percentile (0 < p <= 100): the
// upper bound of the bucket holding it, clamped to the exact minimum and
// maximum; 0 when empty.
func (h *histogram) quantile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p / 100 * float64(h.n)))
	rank = max(1, min(h.n, rank))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(max(h.min, min(h.max, histUpper(i))))
		}
	}
	return time.Duration(h.max)
}

func (h *histogram) latency() Latency {
	if h == nil || h.n == 0 {
		return Latency{}
	}
	return Latency{
		N: int(h.n), Mean: time.Duration(h.sum / float64(h.n)),
		P50: h.quantile(50), P95: h.quantile(95), P99: h.quantile(99), P999: h.quantile(99.9),
		Max: time.Duration(h.max),
	}
}
