// Command hgbench measures what the helseid gateway costs on top of a plain
// reverse_proxy, in one run on one machine (make bench).
//
// It starts, on loopback: a fixed-response upstream (in this process, so its
// CPU is not the gateway's), the HelseID simulator, the membership registry
// simulator, a Redis (the one at -redis, or redis-server on a free port when
// none answers there and it is installed), and ONE helsegate process
// (`helsegate run`) with a plain reverse_proxy site and one helseid site per
// configuration:
//
//   - ES256, PS256, RS256: dpop required, membership from the registry
//     (warmed up before measuring), replay store in Redis under a unique
//     key_prefix, public_origin set;
//   - bearer: the same with dpop optional, called with one unbound token
//     as Bearer.
//
// Each client has one access token, so the gateway verifies its signature
// once and then hits its verified-token cache. Caddy's access log is off; the
// audit log is on at INFO and written to a file, as in production. Two
// settings differ from production, neither changes the work per request:
// dpop_max_age is 10m (proofs are signed before a pair, and the replay keys
// must outlive the configuration for the key count check), and
// on_store_error is deny (a Redis failure shows as errors, not as a silent
// fallback to the in-process store).
//
// For each configuration it warms the gateway up and sizes the first pair
// from a short untimed run, and each later pair from the rates of the one
// before, so that a run lasts about -run. It does -pairs A/B pairs: it
// pre-signs one fresh proof per request on
// every core, sends the same requests to the plain site (A) and to the
// gateway site (B) over -conns keep-alive connections, and reads the
// gateway process's utime+stime from /proc/<pid>/stat before and after each
// run. After each pair, with the gateway idle, it measures the "verify
// floor": one jws.NewVerifier(alg).Verify of a proof, in-process, on one
// goroutine; after the pairs it measures that floor once more, by the
// verifying thread's CPU clock, beside an extra, untimed gateway run (shown
// under the table; the goals use the idle floor). It also reads the machine's busy time from /proc/stat: before
// a pair it waits (up to -quiet-wait in all) while other processes use the
// CPUs, and a timed run disturbed by them shows ("others") and is warned
// about under the table.
//
// It prints one line per run, a Markdown table of medians over the pairs
// (with the smallest and largest added CPU of a pair beside its median),
// the goals of issue 6, and last:
//
//	added_cpu_per_request/verify_floor = X (ES256)
//
// Every non-200 answer is counted and shown, and flags its configuration
// (the exit status is then 1); after each gateway run the Redis replay keys
// under the site's prefix must have grown by the number of accepted proofs.
// Everything it starts is stopped at the end, on an error and on SIGINT; its
// Redis keys are deleted.
//
// Usage:
//
//	hgbench [-bin bin/helsegate] [-conns 32] [-pairs 12] [-run 1s]
//	        [-redis host:port] [-configs ES256,PS256,RS256,bearer]
//	        [-cpuprofile es256.pprof [-cpuprofile-seconds 10]] [-keep]
//	        [-quiet-wait 60s] [-timeout 15m]
//	hgbench -instructions [-instr-requests 2000] [-instr-warmup 1000]
//	        [-instr-conns 2] [-no-strace] [-configs …] [-keep]
//
// With -instructions (make bench-instructions) it counts instructions
// instead of CPU time: the same sites and requests, the gateway under
// valgrind's callgrind, the verify floor counted the same way, and system
// calls per request from strace -c (instructions.go says how; the last line
// is then added_instructions/verify_floor = X (ES256)). docs/performance.md
// has a run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	bin         string
	conns       int
	pairs       int
	runTime     time.Duration
	maxRequests int
	redisAddr   string
	startRedis  bool
	configs     []string
	profilePath string
	profileSecs int
	keep        bool
	timeout     time.Duration
	quietWait   time.Duration
	// The instructions mode (-instructions).
	instructions  bool
	instrRequests int
	instrWarmup   int
	instrConns    int
	noStrace      bool
}

// allConfigs are the configurations of the table, in order.
var allConfigs = []string{"ES256", "PS256", "RS256", "bearer"}

func main() {
	var o options
	redisDefault := os.Getenv("HELSEGATE_TEST_REDIS")
	if redisDefault == "" {
		redisDefault = "127.0.0.1:6379"
	}
	var configs string
	flag.StringVar(&o.bin, "bin", "bin/helsegate", "the helsegate binary to measure")
	flag.IntVar(&o.conns, "conns", 32, "keep-alive connections (the concurrency of every run)")
	flag.IntVar(&o.pairs, "pairs", 12, "plain/gateway pairs per configuration (many short pairs: a median of more pairs, and slow drifts of the machine cancel within each)")
	flag.DurationVar(&o.runTime, "run", time.Second, "target duration of one timed run")
	flag.IntVar(&o.maxRequests, "max-requests", 200_000, "upper bound on the requests of one run")
	flag.StringVar(&o.redisAddr, "redis", redisDefault, "Redis host:port (default $HELSEGATE_TEST_REDIS or 127.0.0.1:6379)")
	flag.BoolVar(&o.startRedis, "start-redis", true, "start redis-server on a free port when none answers at -redis")
	flag.StringVar(&configs, "configs", strings.Join(allConfigs, ","), "configurations to run, comma-separated")
	flag.StringVar(&o.profilePath, "cpuprofile", "", "write a CPU profile of the gateway during an extra, untimed run of the first of -configs to this file")
	flag.IntVar(&o.profileSecs, "cpuprofile-seconds", 10, "length of that profile")
	flag.BoolVar(&o.keep, "keep", false, "keep the run directory (Caddyfile, logs, audit log)")
	flag.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up (and stop everything) after this long")
	flag.DurationVar(&o.quietWait, "quiet-wait", 60*time.Second, "how long, in all, to wait for other processes to go quiet before pairs")
	flag.BoolVar(&o.instructions, "instructions", false, "count instructions instead of CPU time: the gateway under valgrind --tool=callgrind (GOMAXPROCS=1), system calls under strace -c (make bench-instructions)")
	flag.IntVar(&o.instrRequests, "instr-requests", 2000, "with -instructions: requests counted per site and configuration (ten times as many for Bearer)")
	flag.IntVar(&o.instrWarmup, "instr-warmup", 1000, "with -instructions: untimed requests to each site before counting")
	flag.IntVar(&o.instrConns, "instr-conns", 2, "with -instructions: keep-alive connections (few: under callgrind a request that waits behind many others misses the replay store's 250 ms deadline)")
	flag.BoolVar(&o.noStrace, "no-strace", false, "with -instructions: skip the system call counts")
	floorChild := flag.String("floor-child", "", "internal: count one algorithm's verify floor under callgrind (hgbench runs itself with it)")
	floorN := flag.Int("floor-n", 200, "internal: verifications for -floor-child")
	flag.Parse()
	if *floorChild != "" {
		if err := runFloorChild(*floorChild, *floorN); err != nil {
			fmt.Fprintf(os.Stderr, "hgbench -floor-child: %v\n", err)
			os.Exit(1)
		}
		return
	}

	for _, c := range strings.Split(configs, ",") {
		c = strings.TrimSpace(c)
		if !slices.Contains(allConfigs, c) {
			fmt.Fprintf(os.Stderr, "hgbench: unknown configuration %q (want some of %s)\n", c, strings.Join(allConfigs, ","))
			os.Exit(2)
		}
		o.configs = append(o.configs, c)
	}
	if o.conns < 1 || o.instrRequests < 1 || o.instrWarmup < 0 || o.instrConns < 1 || o.pairs < 1 || o.runTime <= 0 || o.maxRequests < 1 || o.profileSecs < 1 || o.timeout <= 0 {
		fmt.Fprintln(os.Stderr, "hgbench: -conns, -pairs, -run, -max-requests, -cpuprofile-seconds and -timeout must be positive")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	code := run(ctx, o)
	cancel()
	stop()
	os.Exit(code)
}
