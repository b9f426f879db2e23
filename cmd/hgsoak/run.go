package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// logf prints a progress line with the time.
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s hgsoak: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}

// run sets everything up, runs the load and the faults, and reports. It
// returns the exit status.
func run(ctx context.Context, o options, steps []step) int {
	dir, err := os.MkdirTemp("", "hgsoak-")
	if err != nil {
		logf("%v", err)
		return 2
	}
	logf("run directory %s", dir)
	rg := &rig{dir: dir}
	defer rg.close()
	if err := rg.start(ctx, o.bin); err != nil {
		logf("%v", err)
		return 2
	}
	fl := &faults{redis: rg.redis, registry: rg.registry, issuer: rg.issuer, sim: rg.sim, logf: logf}
	fl.addKid(rg.sim.CurrentKid())
	printSchedule(steps)

	d := newDriver(rg, fl, o.conc)
	took, err := d.warmUp(ctx)
	if err != nil {
		logf("warm-up: %v", err)
		return 2
	}
	logf("warm-up: every replica and route answered 200 after %.2fs (a fresh Redis refuses proofs issued before its start + dpop_future_skew)", took.Seconds())
	res, err := soak(ctx, o, d, fl, rg.reps, steps)
	if err != nil {
		logf("%v", err)
		return 2
	}
	v := res.report(os.Stdout, o.duration, d.skipped.Load(), rg.reps)
	return finish(dir, o.keep, res.interrupted, len(v.wrong))
}

// finish removes the run directory unless it is to be kept (-keep, an
// interrupted run, wrong 200s) and returns the exit status.
func finish(dir string, keep, interrupted bool, wrong int) int {
	if wrong == 0 && !keep && !interrupted {
		_ = os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "run directory kept: %s\n", dir)
	}
	switch {
	case interrupted:
		return 2
	case wrong > 0:
		return 1
	}
	return 0
}

// printSchedule prints the fault schedule and what each phase accepts.
func printSchedule(steps []step) {
	fmt.Println("== schedule (from the start of the load)")
	for _, s := range steps {
		fmt.Printf("  %-19s at %5.0fs, fault %4.0fs, then %3.0fs settling\n", s.Phase, s.At.Seconds(), s.For.Seconds(), s.Settle.Seconds())
	}
	fmt.Println("== acceptable answers per phase (anything else is unexpected; a 200 for a non-valid kind is a wrong 200)")
	for _, p := range append([]string{famSteady}, phaseNames(steps)...) {
		fmt.Printf("  %s: %s\n", p, acceptableLine(p))
	}
}

// newDriver is the driver of the rig's replicas, in the phases of fl.
func newDriver(rg *rig, fl *faults, conc int) *driver {
	return &driver{
		ids: rg.ids, replicas: rg.reps, phase: fl.phase, pool: map[string][]*accepted{},
		hc: &http.Client{
			// Bounded: a hanging registry holds a request ~1 s (the
			// configured timeout); 10 s means something is really stuck.
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: conc, IdleConnTimeout: 30 * time.Second},
		},
	}
}

// soakResult is what a soak collected, for the report.
type soakResult struct {
	start   time.Time
	recs    []*record
	audits  []map[string][]auditEntry // per replica: path -> entries
	outs    []outage
	spans   []phaseSpan
	samples [][]sample
	// interrupted: the soak was stopped (SIGINT, or its overall bound)
	// before the load's end.
	interrupted bool
}

// soak runs the load, the fault schedule, the sampler and the progress
// lines for o.duration, then collects the records and the audit logs.
func soak(ctx context.Context, o options, d *driver, fl *faults, reps []*replica, steps []step) (soakResult, error) {
	loadCtx, endLoad := context.WithTimeout(ctx, o.duration)
	defer endLoad()
	start := time.Now()
	d.start = start
	logf("load: %d requests/s, at most %d in flight, for %s", o.rate, o.conc, o.duration)

	samplesDone := make(chan [][]sample, 1)
	go func() { samplesDone <- sampleLoop(loadCtx, start, reps, make([][]sample, len(reps))) }()
	faultErr := make(chan error, 1)
	go func() { faultErr <- fl.run(loadCtx, start, steps) }()
	go progress(loadCtx, d, reps)
	d.run(loadCtx, o.rate, o.conc)
	if err := <-faultErr; err != nil {
		return soakResult{}, err
	}
	res := soakResult{start: start, samples: <-samplesDone, interrupted: ctx.Err() != nil}
	for _, r := range reps {
		if !r.proc.Alive() {
			logf("replica r%d died during the run: %v\n%s", r.index, r.proc.ExitErr(), gatewayproc.Tail(r.logPath, 20))
		}
	}

	// Caddy writes the audit log synchronously; give the last lines a moment.
	time.Sleep(500 * time.Millisecond)
	res.recs = d.snapshot()
	for _, r := range reps {
		a, err := readAudit(r.auditPath)
		if err != nil {
			logf("audit log r%d: %v", r.index, err)
		}
		res.audits = append(res.audits, a)
	}
	res.outs, res.spans = fl.snapshot()
	return res, nil
}

// phaseNames lists the schedule's phases.
func phaseNames(steps []step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.Phase)
	}
	return out
}

// progress prints a line every 30 s so a long run shows it is alive.
func progress(ctx context.Context, d *driver, reps []*replica) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		recs := d.snapshot()
		ok, wrong := 0, 0
		for _, r := range recs {
			if r.status == 200 {
				ok++
				if r.kind.mustNotPass() {
					wrong++
				}
			}
		}
		logf("%d requests, %d answered 200 (%d of them for kinds that must not pass, before classification)", len(recs), ok, wrong)
	}
}
