package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// measure warms one configuration up, sizes its runs and does the A/B
// pairs, printing a line per run.
func (b *bench) measure(ctx context.Context, s *scenario) (summary, error) {
	floor, err := floorOf(s)
	if err != nil {
		return summary{}, err
	}
	if err := b.warmUp(ctx, s); err != nil {
		return summary{}, err
	}
	nPlain, nGw, err := b.calibrate(ctx, s)
	if err != nil {
		return summary{}, err
	}
	pairs, replayProblems, nGw, err := b.pairs(ctx, s, floor, nPlain, nGw)
	if err != nil {
		return summary{}, err
	}
	var loaded float64
	if floor != nil {
		if loaded, err = b.floorUnderLoad(ctx, s, floor, nGw); err != nil {
			return summary{}, err
		}
	}
	if s.profiled && b.o.profilePath != "" {
		if err := b.profile(ctx, s, nGw); err != nil {
			return summary{}, err
		}
	}
	sum := summarize(s.name, pairs)
	sum.errors += replayProblems
	sum.loadedFloor = loaded
	return sum, nil
}

// floorOf is the proof of s's verify floor; nil for Bearer.
func floorOf(s *scenario) (*floorProof, error) {
	if s.alg == "" {
		return nil, nil
	}
	return newFloorProof(s.alg)
}

// pairs does the -pairs A/B pairs, the first sized nPlain and nGw. It
// returns their stats, how many of them found the replay store unused for
// some proof, and the size of a gateway run sized on the last pair's rate.
func (b *bench) pairs(ctx context.Context, s *scenario, floor *floorProof, nPlain, nGw int) (pairs []pairStats, replayProblems, next int, err error) {
	for i := range b.o.pairs {
		p, err := b.pair(ctx, s, floor, i, nPlain, nGw)
		if err != nil {
			return nil, 0, 0, err
		}
		pairs = append(pairs, p.stats)
		if p.replayShort {
			replayProblems++
		}
		// The next pair is sized on this one's rates, which are steadier
		// than the warm-up's.
		nPlain, nGw = b.runSize(p.plain.rps()), b.runSize(p.gateway.rps())
	}
	return pairs, replayProblems, nGw, nil
}

// warmUp sends warmupRequests one at a time: the first fetches the
// issuer's keys and verifies the token, and asks the registry; all must be
// 200.
func (b *bench) warmUp(ctx context.Context, s *scenario) error {
	reqs, err := s.requests(ctx, warmupRequests)
	if err != nil {
		return err
	}
	r, err := load{addr: s.site, reqs: reqs, n: warmupRequests, conns: 1, deadline: time.Minute}.run(ctx)
	if err != nil {
		return err
	}
	if r.errors() > 0 {
		return fmt.Errorf("warm-up: %s; first: %s (gateway log: %s)", r.describeErrors(), r.sample, b.gw.LogPath())
	}
	return nil
}

// calibrate sizes the first pair's runs from a short untimed run on each
// site.
func (b *bench) calibrate(ctx context.Context, s *scenario) (nPlain, nGw int, err error) {
	reqs, err := s.requests(ctx, calibrateRequests)
	if err != nil {
		return 0, 0, err
	}
	deadline := b.o.runTime * runDeadlineFactor
	rp, err := load{addr: b.plain, reqs: reqs, n: 2 * calibrateRequests, conns: b.o.conns, deadline: deadline}.run(ctx)
	if err != nil {
		return 0, 0, err
	}
	rg, err := load{addr: s.site, reqs: reqs, n: calibrateRequests, conns: b.o.conns, deadline: deadline}.run(ctx)
	if err != nil {
		return 0, 0, err
	}
	if rg.errors() > 0 || rp.errors() > 0 {
		return 0, 0, fmt.Errorf("calibration: plain %s, gateway %s; first: %s %s",
			rp.describeErrors(), rg.describeErrors(), rp.sample, rg.sample)
	}
	fmt.Printf("\n%s: warm-up rates %.0f req/s plain, %.0f gateway; each pair is sized on the rates of the one before\n",
		s.name, rp.rps(), rg.rps())
	return b.runSize(rp.rps()), b.runSize(rg.rps()), nil
}

// runSize is the number of requests that last about -run at rps, within
// minRunRequests and -max-requests.
func (b *bench) runSize(rps float64) int {
	return min(max(int(rps*b.o.runTime.Seconds()), minRunRequests), b.o.maxRequests)
}

// pairRun is one A/B pair as measured.
type pairRun struct {
	stats          pairStats
	plain, gateway result
	replayShort    bool // the replay store did not get a key for every accepted proof
}

// pair does pair i: a timed run of nPlain requests on the plain site, then
// one of nGw on the gateway site, counting the replay keys around it, then
// the verify floor (when floor is set).
func (b *bench) pair(ctx context.Context, s *scenario, floor *floorProof, i, nPlain, nGw int) (pairRun, error) {
	// One fresh proof per gateway request; the plain run sends the same
	// requests (cycling through them), before the gateway run uses them.
	reqs, err := s.requests(ctx, nGw)
	if err != nil {
		return pairRun{}, err
	}
	label := fmt.Sprintf("%s pair %d/%d", s.name, i+1, b.o.pairs)
	if err := b.waitQuiet(ctx); err != nil {
		return pairRun{}, err
	}
	var p pairRun
	if p.plain, p.stats.plain, err = b.timed(ctx, label, "plain", b.plain, reqs, nPlain); err != nil {
		return pairRun{}, err
	}
	keys0, err := b.replayKeys(ctx, s)
	if err != nil {
		return pairRun{}, err
	}
	if p.gateway, p.stats.gateway, err = b.timed(ctx, label, "gateway", s.site, reqs, nGw); err != nil {
		return pairRun{}, err
	}
	keys1, err := b.replayKeys(ctx, s)
	if err != nil {
		return pairRun{}, err
	}
	if s.key != nil {
		p.replayShort = !replayKeysLine(s, p.gateway, keys0, keys1)
	}
	if floor != nil {
		// Measured next to each pair, so that it sees the machine as the
		// runs did.
		if p.stats.floor, err = floor.measure(); err != nil {
			return pairRun{}, err
		}
		fmt.Printf("    verify floor %s: %.1f µs (jws.NewVerifier(%s).Verify, one goroutine, gateway idle)\n", s.alg, p.stats.floor, s.alg)
	}
	return p, nil
}

// replayKeysLine prints how the replay keys of s grew over the gateway run
// gw, and reports whether every accepted proof added one. No key of this
// configuration expires during the bench (dpopMaxAge), so every accepted
// proof adds exactly one.
func replayKeysLine(s *scenario, gw result, keys0, keys1 int) bool {
	accepted := gw.done - gw.errors()
	grown := keys1 - keys0
	note := ""
	ok := grown >= accepted
	if !ok {
		note = "   !! fewer keys than accepted proofs: the replay store was not used for every proof"
	}
	fmt.Printf("    replay keys %sv1:dpop:*: %d → %d (+%d for %d accepted proofs)%s\n", s.prefix, keys0, keys1, grown, accepted, note)
	return ok
}

// floorUnderLoad measures the verify floor again beside one more, untimed
// run of n requests on the gateway site (the table's runs are not disturbed
// by it): what one verification costs while the two vCPUs are as busy as in
// a gateway run.
func (b *bench) floorUnderLoad(ctx context.Context, s *scenario, floor *floorProof, n int) (float64, error) {
	reqs, err := s.requests(ctx, n)
	if err != nil {
		return 0, err
	}
	done := make(chan struct{})
	type answer struct {
		us  float64
		err error
	}
	got := make(chan answer, 1)
	go func() {
		us, err := floor.measureUnderLoad(done)
		got <- answer{us, err}
	}()
	r, err := load{addr: s.site, reqs: reqs, n: n, conns: b.o.conns, deadline: b.o.runTime * runDeadlineFactor}.run(ctx)
	close(done)
	a := <-got
	switch {
	case err != nil:
		return 0, err
	case r.errors() > 0:
		return 0, fmt.Errorf("the run beside the verify floor under load: %s; first: %s", r.describeErrors(), r.sample)
	case a.err != nil:
		return 0, a.err
	}
	fmt.Printf("    verify floor under load %s: %.1f µs (thread CPU time, batches of %d beside an untimed gateway run of %d requests)\n", s.alg, a.us, floorLoadBatch, r.done)
	return a.us, nil
}

// timed does one measured run of n requests and prints its line.
func (b *bench) timed(ctx context.Context, label, kind, addr string, reqs [][]byte, n int) (result, runStats, error) {
	r, err := load{addr: addr, reqs: reqs, n: n, conns: b.o.conns, deadline: b.o.runTime * runDeadlineFactor, cpu: b.gw.cpu}.run(ctx)
	if err != nil {
		return r, runStats{}, err
	}
	st := b.stats(r, n)
	fmt.Printf("%-44s %-7s %7d req in %5.2f s %7.0f req/s   p50 %6s ms   p99 %6s ms   CPU %6.1f µs/req   hgbench %5.1f µs/req   others %.2f CPUs\n",
		label, kind, r.done, r.elapsed.Seconds(), st.rps, ms(st.p50), ms(st.p99), st.cpuUS,
		cpuMicrosPerRequest(r.cpu.self, b.hz, r.done), st.others)
	if st.others > busyOthers {
		b.busy++
	}
	if r.done < n {
		fmt.Printf("    !! stopped after %d of %d requests (deadline %s)\n", r.done, n, b.o.runTime*runDeadlineFactor)
	}
	if r.errors() > 0 {
		fmt.Printf("    !! %d of %d not 200: %s; first: %.300s\n", r.errors(), r.done, r.describeErrors(), r.sample)
	}
	return r, st, nil
}

// stats reduces a run of n requests to what the table needs; requests not
// made because the run hit its deadline count as errors.
func (b *bench) stats(r result, n int) runStats {
	errs := r.errors() + max(n-r.done, 0)
	return runStats{
		rps: r.rps(), p50: percentile(r.lat, 50), p99: percentile(r.lat, 99),
		cpuUS: cpuMicrosPerRequest(r.cpu.gateway, b.hz, r.done), errors: errs,
		others: max(float64(r.cpu.others())/float64(b.hz)/max(r.elapsed.Seconds(), 1e-9), 0),
	}
}

// replayKeys counts the replay keys of a configuration's site.
func (b *bench) replayKeys(ctx context.Context, s *scenario) (int, error) {
	if s.key == nil {
		return 0, nil
	}
	return b.redis.countKeys(ctx, s.prefix+"v1:dpop:*")
}

// profile takes CPU profiles of the gateway process from its admin endpoint
// during two extra runs of the first configuration that the table does not
// use: one on its gateway site (to -cpuprofile) and one on the plain site
// (to -cpuprofile with ".plain" before its extension), so that
// `go tool pprof -diff_base` shows what the gateway adds.
func (b *bench) profile(ctx context.Context, s *scenario, perRun int) error {
	secs := b.o.profileSecs
	// perRun requests last about -run; send enough for the profile and a margin.
	n := min(int(float64(perRun)*(float64(secs)+2)/b.o.runTime.Seconds()), 4*b.o.maxRequests)
	path, err := filepath.Abs(b.o.profilePath)
	if err != nil {
		return err
	}
	ext := filepath.Ext(path)
	plainPath := strings.TrimSuffix(path, ext) + ".plain" + ext
	for _, run := range []struct{ kind, addr, path string }{{"gateway", s.site, path}, {"plain", b.plain, plainPath}} {
		reqs, err := s.requests(ctx, n)
		if err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() { done <- b.gw.cpuProfile(ctx, secs, run.path) }()
		time.Sleep(100 * time.Millisecond)
		if _, _, err := b.timed(ctx, s.name+" profile run (not in the table)", run.kind, run.addr, reqs, n); err != nil {
			return err
		}
		if err := <-done; err != nil {
			return fmt.Errorf("CPU profile: %w", err)
		}
	}
	fmt.Printf("    CPU profiles of the gateway process (%d s of each run): go tool pprof -top -cum -nodecount=15 %s %s\n", secs, b.o.bin, path)
	fmt.Printf("    what the gateway adds: go tool pprof -top -diff_base %s %s %s\n", plainPath, b.o.bin, path)
	return nil
}

// quietProbe is how long waitQuiet watches the machine at a time.
const quietProbe = 500 * time.Millisecond

// waitQuiet returns once other processes use less than busyOthers CPUs
// over a quietProbe, or at once when the -quiet-wait budget of the whole
// bench is spent. Another benchmark or a build on the same machine would
// otherwise land in the timed runs.
func (b *bench) waitQuiet(ctx context.Context) error {
	said := false
	for {
		start := time.Now()
		s0, err := b.gw.cpu()
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(quietProbe):
		}
		s1, err := b.gw.cpu()
		if err != nil {
			return err
		}
		others := float64(s1.sub(s0).others()) / float64(b.hz) / time.Since(start).Seconds()
		if others <= busyOthers {
			return nil
		}
		b.quietBudget -= time.Since(start)
		if b.quietBudget <= 0 {
			fmt.Printf("    the machine is busy (%.2f CPUs used by other processes) and the -quiet-wait budget is spent: measuring anyway\n", others)
			return nil
		}
		if !said {
			fmt.Printf("    waiting for the machine to go quiet: other processes use %.2f CPUs (budget left %s)\n", others, b.quietBudget.Round(time.Second))
			said = true
		}
	}
}
