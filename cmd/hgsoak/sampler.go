package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// sampleEvery is the resource sampling period: a 6-minute soak gives ~36
// samples per replica, enough to see a leak's slope, and a sample (one
// /proc read and one scrape) costs the gateway nothing measurable.
const sampleEvery = 10 * time.Second

// sample is one reading of a replica.
type sample struct {
	at         time.Duration // since the start of the load
	rssKB      int64         // VmRSS, -1 when unreadable
	goroutines int64         // go_goroutines, -1 when unreadable
}

// sampler reads RSS and goroutines of every replica every sampleEvery.
func sampleLoop(ctx context.Context, start time.Time, reps []*replica, out [][]sample) [][]sample {
	hc := &http.Client{Timeout: 2 * time.Second}
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	take := func() {
		for i, r := range reps {
			out[i] = append(out[i], sample{at: time.Since(start), rssKB: rssKB(r.proc.Pid()), goroutines: goroutines(hc, r.admin)})
		}
	}
	take()
	for {
		select {
		case <-ctx.Done():
			take()
			return out
		case <-t.C:
			take()
		}
	}
}

// rssKB reads VmRSS (kB) from /proc/<pid>/status.
func rssKB(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// goroutines reads go_goroutines from the admin endpoint's /metrics (Caddy
// serves its metrics registry, with the Go collector, there).
func goroutines(hc *http.Client, admin string) int64 {
	resp, err := hc.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return parseGoroutines(string(body))
}

// parseGoroutines finds the go_goroutines sample in a Prometheus text page.
func parseGoroutines(page string) int64 {
	for _, line := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int64(f)
			}
		}
	}
	return -1
}
