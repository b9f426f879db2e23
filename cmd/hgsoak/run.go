package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
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

	// The doubles, each behind a fault proxy.
	sim, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		logf("helseid simulator: %v", err)
		return 2
	}
	defer sim.Close()
	ids, memberOrgs, err := newIdentities(sim)
	if err != nil {
		logf("identities: %v", err)
		return 2
	}
	var members []authz.Authorization
	for _, org := range memberOrgs {
		members = append(members, authz.Authorization{Organization: org, Service: service, Member: true, Status: "active"})
	}
	reg, err := registrysim.Start(registrysim.Options{Members: members, Token: regToken})
	if err != nil {
		logf("registry simulator: %v", err)
		return 2
	}
	defer reg.Close()
	issProxy, err := startFaultProxy("issuer", sim.Issuer())
	if err != nil {
		logf("issuer proxy: %v", err)
		return 2
	}
	defer issProxy.close()
	regProxy, err := startFaultProxy("registry", reg.URL())
	if err != nil {
		logf("registry proxy: %v", err)
		return 2
	}
	defer regProxy.close()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("upstream ok\n"))
	}))
	defer upstream.Close()

	rds, err := newRedis(dir)
	if err != nil {
		logf("%v", err)
		return 2
	}
	if _, err := rds.start(); err != nil {
		logf("%v", err)
		return 2
	}
	defer rds.kill()

	// Two replicas.
	var reps []*replica
	for i := range 2 {
		var addrs [3]string
		for j := range addrs {
			if addrs[j], err = freeAddr(); err != nil {
				logf("%v", err)
				return 2
			}
		}
		r, err := startReplica(ctx, o.bin, dir, i, replicaConfig{
			Admin: addrs[0], DenyAddr: addrs[1], LocalAddr: addrs[2],
			LogPath:   filepath.Join(dir, fmt.Sprintf("r%d.log", i)),
			AuditPath: filepath.Join(dir, fmt.Sprintf("r%d-audit.log", i)),
			// Tokens carry the simulator's own issuer; only the key set is
			// fetched, through the proxy (jwks_url), so the proxy can fail it.
			Issuer: sim.Issuer(), JWKSURL: issProxy.URL() + helseidsim.JWKSPath,
			Registry: regProxy.URL(), RedisAddr: rds.addr, Upstream: upstream.URL,
		})
		if err != nil {
			logf("%v", err)
			return 2
		}
		defer r.proc.kill()
		reps = append(reps, r)
		logf("replica r%d: pid %d, admin %s, deny %s, local %s", i, r.proc.pid(), r.admin, r.sites[routeDeny], r.sites[routeLocal])
	}
	logf("redis %s, issuer %s (proxy %s), registry %s (proxy %s)", rds.addr, sim.Issuer(), issProxy.URL(), reg.URL(), regProxy.URL())

	fl := &faults{redis: rds, registry: regProxy, issuer: issProxy, sim: sim, logf: logf}
	fl.addKid(sim.CurrentKid())
	fmt.Println("== schedule (from the start of the load)")
	for _, s := range steps {
		fmt.Printf("  %-19s at %5.0fs, fault %4.0fs, then %3.0fs settling\n", s.Phase, s.At.Seconds(), s.For.Seconds(), s.Settle.Seconds())
	}
	fmt.Println("== acceptable answers per phase (anything else is unexpected; a 200 for a non-valid kind is a wrong 200)")
	for _, p := range append([]string{famSteady}, phaseNames(steps)...) {
		fmt.Printf("  %s: %s\n", p, acceptableLine(p))
	}

	d := &driver{
		ids: ids, replicas: reps, phase: fl.phase, pool: map[string][]*accepted{},
		hc: &http.Client{
			// Bounded: a hanging registry holds a request ~1 s (the
			// configured timeout); 10 s means something is really stuck.
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: o.conc, IdleConnTimeout: 30 * time.Second},
		},
	}
	took, err := d.warmUp(ctx)
	if err != nil {
		logf("warm-up: %v", err)
		return 2
	}
	logf("warm-up: every replica and route answered 200 after %.2fs (a fresh Redis refuses proofs issued before its start + dpop_future_skew)", took.Seconds())
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
		logf("%v", err)
		return 2
	}
	samples := <-samplesDone
	interrupted := ctx.Err() != nil
	for _, r := range reps {
		if !r.proc.alive() {
			logf("replica r%d died during the run: %v\n%s", r.index, r.proc.waitErr, tail(r.logPath, 20))
		}
	}

	// Caddy writes the audit log synchronously; give the last lines a moment.
	time.Sleep(500 * time.Millisecond)
	recs := d.snapshot()
	var audits []map[string][]auditEntry
	for _, r := range reps {
		a, err := readAudit(r.auditPath)
		if err != nil {
			logf("audit log r%d: %v", r.index, err)
		}
		audits = append(audits, a)
	}
	joined, missing := joinAudit(recs, audits)
	outs, spans := fl.snapshot()
	v := judge(recs, outs)

	fmt.Printf("\n== run: %d requests in %s (%d ticks skipped at the concurrency limit); audit reasons joined for %d, missing for %d\n",
		len(recs), o.duration, d.skipped.Load(), joined, missing)
	fmt.Println("== phases as run")
	for _, s := range spans {
		fmt.Printf("  %-19s %s – %s (+%.0fs – +%.0fs) %s\n", s.name, s.start.Format("15:04:05"), s.end.Format("15:04:05"),
			s.start.Sub(start).Seconds(), s.end.Sub(start).Seconds(), s.note)
	}
	printAnswers(os.Stdout, recs, v)
	printRecovery(os.Stdout, recs, outs, len(reps))
	printResources(os.Stdout, samples)

	fmt.Println("\n== gateway log lines above info (count, level logger: msg)")
	for _, r := range reps {
		dg := logDigest(r.logPath)
		keys := make([]string, 0, len(dg))
		for k := range dg {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return dg[keys[i]] > dg[keys[j]] })
		fmt.Printf("r%d (%s):\n", r.index, r.logPath)
		for _, k := range keys[:min(len(keys), 12)] {
			fmt.Printf("  %6d %s\n", dg[k], k)
		}
	}

	if len(v.exceptions) > 0 {
		fmt.Printf("\n== replays accepted on the local route of proofs first used during a Redis outage (documented on_store_error local exception): %d\n", len(v.exceptions))
		for _, r := range v.exceptions[:min(len(v.exceptions), 10)] {
			fmt.Println("  " + describe(r, start))
		}
	}
	if len(v.wrong) > 0 {
		fmt.Printf("\n== WRONG 200s: %d\n", len(v.wrong))
		sort.Slice(v.wrong, func(i, j int) bool { return v.wrong[i].sent.Before(v.wrong[j].sent) })
		for i, r := range v.wrong {
			fmt.Println("  " + describe(r, start))
			if i >= 20 {
				continue // the first 20 with their log lines
			}
			for _, rep := range reps {
				for _, e := range audits[rep.index][r.path] {
					fmt.Printf("    r%d audit: %s\n", rep.index, e.line)
				}
				for _, l := range logLinesAround(rep.logPath, r.sent, 2*time.Second, 6) {
					fmt.Printf("    r%d log: %s\n", rep.index, l)
				}
			}
		}
	}
	fmt.Printf("\nunexpected_answers=%d (not acceptable for their phase, not wrong 200s)\n", v.unexpected)
	fmt.Printf("documented_local_outage_replays=%d\n", len(v.exceptions))
	fmt.Printf("wrong_200s=%d\n", len(v.wrong))

	if len(v.wrong) == 0 && !o.keep && !interrupted {
		_ = os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "run directory kept: %s\n", dir)
	}
	if interrupted {
		return 2
	}
	if len(v.wrong) > 0 {
		return 1
	}
	return 0
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
