package main

import (
	"slices"
	"time"
)

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, which must be in ascending order; 0 for an empty slice.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// Nearest rank: the smallest value with at least p% of the values at or
	// below it, i.e. index ceil(p/100*n)-1.
	rank := int(p / 100 * float64(len(sorted)))
	if float64(rank) < p/100*float64(len(sorted)) {
		rank++
	}
	return sorted[min(max(rank-1, 0), len(sorted)-1)]
}

// median returns the median of xs (the mean of the middle two for an even
// count); 0 for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// medianDuration is median for durations.
func medianDuration(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

// cpuMicrosPerRequest converts a CPU time in clock ticks spent on n
// requests into microseconds per request; 0 when n is 0.
func cpuMicrosPerRequest(ticks, hz int64, n int) float64 {
	if n <= 0 || hz <= 0 {
		return 0
	}
	return float64(ticks) * 1e6 / float64(hz) / float64(n)
}

// pairStats is one A/B pair of a configuration: the plain run, the
// gateway run right after it, and the verify floor measured after them (0
// for the Bearer configuration).
type pairStats struct {
	plain, gateway runStats
	floor          float64 // µs
}

// runStats is what the table needs of one timed run.
type runStats struct {
	rps      float64
	p50, p99 time.Duration
	cpuUS    float64 // gateway process CPU µs per request
	errors   int     // non-200 responses and transport errors
	others   float64 // CPUs used by other processes (Redis included) during the run
}

// summary is one row of the table: medians over the pairs of one
// configuration.
type summary struct {
	name               string
	pairs              int
	plainRPS, gwRPS    float64
	plainP50, plainP99 time.Duration
	gwP50, gwP99       time.Duration
	plainCPU, gwCPU    float64 // µs/request
	addedCPU           float64 // median over pairs of (gateway - plain) µs/request
	addedMin, addedMax float64 // the smallest and largest of those
	floor              float64 // µs per proof verification; 0 when not applicable
	loadedFloor        float64 // the same beside a gateway run (thread CPU time); 0 when not measured
	throughputRatio    float64 // median over pairs of gateway/plain requests/s
	errors             int     // over every run of the configuration
}

// summarize reduces the pairs of one configuration to medians. The added
// CPU and the throughput ratio are medians of per-pair differences and
// ratios: each pair's two runs are adjacent in time, so slow drifts of the
// machine cancel within a pair.
func summarize(name string, pairs []pairStats) summary {
	s := summary{name: name, pairs: len(pairs)}
	var pr, gr, pc, gc, added, ratio, floors []float64
	var p50p, p99p, p50g, p99g []time.Duration
	for _, p := range pairs {
		pr = append(pr, p.plain.rps)
		gr = append(gr, p.gateway.rps)
		pc = append(pc, p.plain.cpuUS)
		gc = append(gc, p.gateway.cpuUS)
		added = append(added, p.gateway.cpuUS-p.plain.cpuUS)
		if p.plain.rps > 0 {
			ratio = append(ratio, p.gateway.rps/p.plain.rps)
		}
		p50p = append(p50p, p.plain.p50)
		p99p = append(p99p, p.plain.p99)
		p50g = append(p50g, p.gateway.p50)
		p99g = append(p99g, p.gateway.p99)
		s.errors += p.plain.errors + p.gateway.errors
		if p.floor > 0 {
			floors = append(floors, p.floor)
		}
	}
	s.floor = median(floors)
	s.plainRPS, s.gwRPS = median(pr), median(gr)
	s.plainCPU, s.gwCPU = median(pc), median(gc)
	s.addedCPU, s.throughputRatio = median(added), median(ratio)
	if len(added) > 0 {
		s.addedMin, s.addedMax = slices.Min(added), slices.Max(added)
	}
	s.plainP50, s.plainP99 = medianDuration(p50p), medianDuration(p99p)
	s.gwP50, s.gwP99 = medianDuration(p50g), medianDuration(p99g)
	return s
}

// floorRatio is added CPU over the verify floor; 0 when there is no floor.
func (s summary) floorRatio() float64 {
	if s.floor <= 0 {
		return 0
	}
	return s.addedCPU / s.floor
}
