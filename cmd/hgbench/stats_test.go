package main

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		out := make([]time.Duration, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100", hundred, 50, 50 * time.Millisecond},
		{"p99 of 1..100", hundred, 99, 99 * time.Millisecond},
		{"p100 of 1..100", hundred, 100, 100 * time.Millisecond},
		{"p50 of four", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of four", ms(1, 2, 3, 4), 99, 4 * time.Millisecond},
		{"p1 of four", ms(1, 2, 3, 4), 1, 1 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		xs   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		in := append([]float64(nil), tt.xs...)
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.xs[i] {
				t.Errorf("median reordered its argument: %v", tt.xs)
			}
		}
	}
}

func TestCPUMicrosPerRequest(t *testing.T) {
	// 250 ticks at 100 Hz = 2.5 s of CPU over 10 000 requests = 250 µs each.
	if got := cpuMicrosPerRequest(250, 100, 10_000); got != 250 {
		t.Errorf("cpuMicrosPerRequest = %v, want 250", got)
	}
	if got := cpuMicrosPerRequest(250, 100, 0); got != 0 {
		t.Errorf("cpuMicrosPerRequest with no requests = %v, want 0", got)
	}
}

func TestSummarize(t *testing.T) {
	run := func(rps, cpu float64, errs int) runStats {
		return runStats{rps: rps, cpuUS: cpu, p50: time.Duration(rps), p99: 2 * time.Duration(rps), errors: errs}
	}
	pairs := []pairStats{
		{plain: run(1000, 80, 0), gateway: run(500, 200, 0), floor: 58},
		{plain: run(1100, 90, 0), gateway: run(400, 260, 1), floor: 70}, // a noisy pair
		{plain: run(900, 70, 0), gateway: run(450, 190, 0), floor: 60},
	}
	s := summarize("ES256", pairs)
	if s.plainRPS != 1000 || s.gwRPS != 450 {
		t.Errorf("rps medians = %v, %v", s.plainRPS, s.gwRPS)
	}
	if s.plainCPU != 80 || s.gwCPU != 200 {
		t.Errorf("CPU medians = %v, %v", s.plainCPU, s.gwCPU)
	}
	// Per-pair differences 120, 170, 120: median 120.
	if s.addedCPU != 120 {
		t.Errorf("addedCPU = %v, want 120", s.addedCPU)
	}
	if s.addedMin != 120 || s.addedMax != 170 {
		t.Errorf("added min–max = %v–%v, want 120–170", s.addedMin, s.addedMax)
	}
	// Per-pair ratios 0.5, 0.3636, 0.5: median 0.5.
	if s.throughputRatio != 0.5 {
		t.Errorf("throughputRatio = %v, want 0.5", s.throughputRatio)
	}
	if s.floor != 60 {
		t.Errorf("floor = %v, want the median 60", s.floor)
	}
	if got := summarize(bearerName, pairs[:1:1]); got.floor != 58 {
		t.Errorf("one pair: floor = %v", got.floor)
	}
	if got := summarize(bearerName, []pairStats{{plain: run(1, 1, 0), gateway: run(1, 1, 0)}}); got.floor != 0 {
		t.Errorf("no floor measured: floor = %v, want 0", got.floor)
	}
	if s.errors != 1 {
		t.Errorf("errors = %d, want 1", s.errors)
	}
	if got := s.floorRatio(); got != 2 {
		t.Errorf("floorRatio = %v, want 2", got)
	}
	if got := (summary{addedCPU: 10}).floorRatio(); got != 0 {
		t.Errorf("floorRatio without a floor = %v, want 0", got)
	}
}
