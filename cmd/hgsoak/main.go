// Command hgsoak is a soak test of two helsegate replicas sharing one Redis,
// under faults (make soak). It is not part of make test.
//
// It starts, on free loopback ports: its own redis-server without
// persistence (so a restart comes back empty), the HelseID and registry
// simulators in this process, each behind a fault-injecting proxy of its own
// (503, hang, down), a stand-in upstream answering 200, and two gateway
// replicas (the built binary, `run --config` with a generated Caddyfile,
// JSON logs and audit log to files). Each replica has two sites, one with
// on_store_error deny and one with on_store_error local (see
// renderCaddyfile for why their key prefixes differ).
//
// A driver sends a bounded mix at a bounded rate: valid requests, replays
// of accepted proofs (to the other replica and to the same one), non-member
// requests and bad requests (bad proof signature, wrong htu, expired token).
// Every answer is classified by status and by the reason the replica's audit
// log gives for it, and compared with what is acceptable for its kind,
// route and the fault phase it was sent in. Meanwhile a schedule scaled to
// the duration restarts Redis twice (quick, and after 8 s down), makes the
// registry answer 503 then hang, rotates the issuer's key (announced, then
// unannounced: the old keys retired at once) and takes the issuer down.
//
// At the end it prints the answers per phase, kind and route, the recovery
// after each Redis restart, RSS and goroutines of each replica every 10 s,
// every wrong 200 with the gateways' log lines around it, and last:
//
//	documented_local_outage_replays=N
//	wrong_200s=N
//
// The exit status is 1 when wrong_200s > 0 (a 200 for a replay, a non-member
// or a bad request; a replay accepted on the local route of a proof first
// used during a Redis outage is the documented exception, counted apart),
// 2 when the soak could not run.
//
// Usage:
//
//	hgsoak [-bin bin/helsegate] [-duration 6m] [-rate 150] [-conc 32] [-keep]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	bin      string
	duration time.Duration
	rate     int
	conc     int
	keep     bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/helsegate", "the helsegate binary")
	flag.DurationVar(&o.duration, "duration", 6*time.Minute, "length of the load (the fault schedule scales with it; at least 5m)")
	// 150/s: enough that every phase sees hundreds of requests of each kind
	// and a recovery time is resolved to ~10 ms per replica and route, while
	// two replicas, Redis and the soak itself share 2 cores without
	// saturating them (saturation would turn into timeouts, not findings).
	flag.IntVar(&o.rate, "rate", 150, "requests per second, all replicas and routes together")
	flag.IntVar(&o.conc, "conc", 32, "requests in flight at most")
	flag.BoolVar(&o.keep, "keep", false, "keep the run directory (configs, logs, audit logs) even without findings")
	flag.Parse()
	if o.rate < 1 || o.rate > 2000 || o.conc < 1 || o.conc > 512 {
		fmt.Fprintln(os.Stderr, "hgsoak: -rate must be 1..2000 and -conc 1..512")
		os.Exit(2)
	}
	if abs, err := filepath.Abs(o.bin); err == nil {
		o.bin = abs // the gateways run in the run directory
	}
	steps, err := plan(o.duration)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hgsoak:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A hard bound on the whole run: the load, plus start-up and the report.
	ctx, cancel := context.WithTimeout(ctx, o.duration+3*time.Minute)
	code := 2
	func() {
		defer killAll() // also on a panic: nothing the soak started outlives it
		code = run(ctx, o, steps)
	}()
	cancel()
	stop()
	os.Exit(code)
}
