package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The instructions mode (-instructions, make bench-instructions) counts
// what the gateway executes instead of timing it: CPU time on these shared
// machines drifts by a quarter within minutes, an instruction count does
// not.
//
//   - Instructions: the same helsegate process and sites as the CPU-time
//     mode, under valgrind --tool=callgrind with GOMAXPROCS=1 and
//     instrumentation off from the start (--instr-atstart=no). Per
//     configuration, after an untimed warm-up of both sites, instrumentation
//     is switched on (callgrind_control -i on) around exactly
//     -instr-requests requests to the plain site, then around as many to the
//     gateway site, and each window is dumped (callgrind_control -d) and
//     its total read. The plain site is sent the same bytes as the gateway
//     site. Every thread of the process counts (the collector's too).
//   - The verify floor: hgbench runs itself (-floor-child) under callgrind,
//     collecting only inside a loop of jws.NewVerifier(alg).Verify on one
//     proof (--toggle-collect), divided by its iterations.
//   - System calls: the same Caddyfile in a helsegate process run directly
//     (GOMAXPROCS=1 as well), strace -c -f attached around the same kind of
//     window.

// instrRow is one configuration of the instructions table.
type instrRow struct {
	name                string
	plainIr, gatewayIr  float64 // instructions per request
	floorIr             float64 // instructions of one verification; 0 for Bearer
	plainSys, gwSys     float64 // system calls per request; <0 when not counted
	plainCalls, gwCalls map[string]float64
	errors              int
}

func (r instrRow) added() float64 { return r.gatewayIr - r.plainIr }

func (r instrRow) ratio() float64 {
	if r.floorIr <= 0 {
		return 0
	}
	return r.added() / r.floorIr
}

// gatewayEnv is the environment of the gateway in this mode: one P, so that
// valgrind (which runs one thread at a time) and the count see the schedule
// a one-core replica has.
var gatewayEnv = []string{"GOMAXPROCS=1"}

// callgrindEnv is added under callgrind: valgrind 3.19's callgrind fails an
// assertion (threads.c, post_signal) when a signal arrives while it handles
// another, which Go's asynchronous preemption (SIGURG) does now and then.
// Preemption by signal only matters for goroutines that run for over 10 ms
// without a function call; no request here does.
var callgrindEnv = append([]string{"GODEBUG=asyncpreemptoff=1"}, gatewayEnv...)

// instructions runs the instructions mode and prints its report.
func (b *bench) instructions(ctx context.Context, bin, dir string, cfg gatewayConfig, scenarios []*scenario) error {
	for _, tool := range []string{"valgrind", "callgrind_control"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("-instructions needs %s (apt-get install valgrind)", tool)
		}
	}
	began := time.Now()
	rows := make([]instrRow, len(scenarios))
	for i, s := range scenarios {
		rows[i] = instrRow{name: s.name, plainSys: -1, gwSys: -1}
	}
	if err := floors(ctx, dir, scenarios, rows); err != nil {
		return err
	}
	if err := b.countSyscalls(ctx, bin, dir, cfg, scenarios, rows); err != nil {
		return err
	}
	out := filepath.Join(dir, "callgrind.out")
	if err := b.countAllInstructions(ctx, bin, dir, out, cfg, scenarios, rows); err != nil {
		return err
	}

	fmt.Println()
	fmt.Printf("hgbench: measured in %s\n", time.Since(began).Round(time.Second))
	fmt.Println(instrMachineLine(b.redis, b.o))
	if writeInstrReport(os.Stdout, rows) {
		return errFlagged
	}
	if b.o.keep {
		fmt.Printf("callgrind dumps of every window (plain, then gateway, per configuration): %s.*\n", out)
	}
	return nil
}

// floors counts the verify floors, one callgrind child per algorithm.
func floors(ctx context.Context, dir string, scenarios []*scenario, rows []instrRow) error {
	for i, s := range scenarios {
		if s.alg == "" {
			continue
		}
		ir, err := floorInstructions(ctx, dir, s.alg)
		if err != nil {
			return fmt.Errorf("verify floor %s: %w", s.alg, err)
		}
		rows[i].floorIr = ir
		fmt.Printf("verify floor %s: %.0f instructions (jws.NewVerifier(%s).Verify under callgrind)\n", s.alg, ir, s.alg)
	}
	return nil
}

// countSyscalls counts the system calls of every configuration, with the
// gateway run directly; it says so and does nothing without strace or with
// -no-strace.
func (b *bench) countSyscalls(ctx context.Context, bin, dir string, cfg gatewayConfig, scenarios []*scenario, rows []instrRow) error {
	if _, err := exec.LookPath("strace"); err != nil || b.o.noStrace {
		fmt.Println("system calls: not counted (strace not installed, or -no-strace)")
		return nil
	}
	gw, err := startGateway(ctx, launch{env: gatewayEnv}, bin, dir, renderCaddyfile(cfg), cfg.Admin, cfg.LogPath, cfg.addrs())
	if err != nil {
		return err
	}
	defer gw.Stop()
	b.gw = gw
	for i, s := range scenarios {
		if err := b.syscalls(ctx, dir, s, &rows[i]); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// countAllInstructions counts the instructions of every configuration, with
// the gateway under callgrind writing its dumps to out.*.
func (b *bench) countAllInstructions(ctx context.Context, bin, dir, out string, cfg gatewayConfig, scenarios []*scenario, rows []instrRow) error {
	l := launch{
		wrapper: []string{"valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out},
		env:     callgrindEnv,
		ready:   3 * time.Minute,
	}
	fmt.Fprintf(os.Stderr, "hgbench: starting %s under callgrind (run directory %s)\n", b.o.bin, dir)
	gw, err := startGateway(ctx, l, bin, dir, renderCaddyfile(cfg), cfg.Admin, cfg.LogPath, cfg.addrs())
	if err != nil {
		return err
	}
	b.gw = gw
	defer gw.Stop()
	cg := &callgrind{pid: gw.Pid(), out: out}
	for i, s := range scenarios {
		if err := b.countInstructions(ctx, cg, s, &rows[i]); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// warm sends n untimed requests of s to addr (the first few one at a time:
// they fetch the issuer's keys and ask the registry). Under valgrind the
// first requests after start run while their code is translated and can
// miss the replay store's 250 ms deadline (503): answers are not checked
// until the end, where requests go one at a time until one is a 200.
func (b *bench) warm(ctx context.Context, s *scenario, addr string, n int) error {
	for _, w := range []struct{ n, conns int }{{warmupRequests, 1}, {n, b.o.instrConns}} {
		if w.n == 0 {
			continue
		}
		reqs, err := s.requests(ctx, w.n)
		if err != nil {
			return err
		}
		if _, err := (load{addr: addr, reqs: reqs, n: w.n, conns: w.conns, deadline: 10 * time.Minute}).run(ctx); err != nil {
			return err
		}
	}
	var last result
	for range 10 {
		reqs, err := s.requests(ctx, 1)
		if err != nil {
			return err
		}
		if last, err = (load{addr: addr, reqs: reqs, n: 1, conns: 1, deadline: time.Minute}).run(ctx); err != nil {
			return err
		}
		if last.errors() == 0 {
			return nil
		}
	}
	return fmt.Errorf("warm-up: %s; last: %s (gateway log: %s)", last.describeErrors(), last.sample, b.gw.LogPath())
}

// window sends exactly n requests of s to addr between around() calls: on
// before the first request is sent, off after the last answer is read.
//
// settle, when set, runs after on and before the window's own requests.
func (b *bench) window(ctx context.Context, s *scenario, addr string, n int, on, settle, off func() error) (result, error) {
	reqs, err := s.requests(ctx, n)
	if err != nil {
		return result{}, err
	}
	if err := on(); err != nil {
		return result{}, err
	}
	if settle != nil {
		if err := settle(); err != nil {
			_ = off()
			return result{}, err
		}
	}
	r, err := load{addr: addr, reqs: reqs, n: n, conns: b.o.instrConns, deadline: 20 * time.Minute}.run(ctx)
	if offErr := off(); err == nil {
		err = offErr
	}
	if err != nil {
		return r, err
	}
	if r.done < n || r.errors() > 0 {
		return r, fmt.Errorf("%d of %d requests done, not 200: %s; first: %s", r.done, n, r.describeErrors(), r.sample)
	}
	return r, nil
}

// bearerWindowFactor multiplies -instr-requests for the Bearer windows.
const bearerWindowFactor = 10

// instrAttempts bounds the tries of one counted window.
const instrAttempts = 6

// instrSettle is the number of requests sent, instrumented but not
// counted, before each window.
const instrSettle = 100

// countInstructions fills the instruction counts of one configuration.
func (b *bench) countInstructions(ctx context.Context, cg *callgrind, s *scenario, row *instrRow) error {
	n := b.o.instrRequests
	if s.key == nil {
		// A collection cycle costs a few million instructions wherever it
		// falls, and whether one more falls in a window moves a row by
		// about 15k per request over 2,000 requests: ~1.5 % of a proof
		// row, a quarter of the Bearer row. Bearer requests are cheap, so
		// its windows are longer.
		n *= bearerWindowFactor
	}
	t0 := time.Now()
	for _, addr := range []string{b.plain, s.site} {
		if err := b.warm(ctx, s, addr, b.o.instrWarmup); err != nil {
			return err
		}
	}
	for _, site := range []struct {
		kind, addr string
		ir         *float64
	}{{"plain", b.plain, &row.plainIr}, {"gateway", s.site, &row.gatewayIr}} {
		keys0, total, err := b.countWindow(ctx, cg, s, site.kind, site.addr, n)
		if err != nil {
			return err
		}
		*site.ir = float64(total) / float64(n)
		keys1, err := b.replayKeys(ctx, s)
		if err != nil {
			return err
		}
		note := ""
		if site.kind == "gateway" && s.key != nil && keys1-keys0 < n {
			note = fmt.Sprintf("   !! replay keys grew by %d for %d proofs: the replay store was not used for every proof", keys1-keys0, n)
			row.errors++
		}
		fmt.Printf("%-40s %-7s %6d requests   %12d instructions   %9.0f per request%s\n", s.name, site.kind, n, total, *site.ir, note)
	}
	fmt.Printf("    (%s for this configuration under callgrind)\n", time.Since(t0).Round(time.Second))
	return nil
}

// countWindow counts the instructions of a window of n requests of s to
// addr (kind names the site). Under callgrind the gateway runs ~50 times
// slower, and a request can now and then miss the replay store's 250 ms
// deadline (503): that window's count is of other work, so it is done
// again. It returns the count of replay keys before the window that
// counted, and the window's total.
func (b *bench) countWindow(ctx context.Context, cg *callgrind, s *scenario, kind, addr string, n int) (keys0 int, total int64, err error) {
	if keys0, err = b.replayKeys(ctx, s); err != nil {
		return 0, 0, err
	}
	settle := func() error { return b.settle(ctx, cg, s, kind, addr) }
	for attempt := 1; ; attempt++ {
		_, werr := b.window(ctx, s, addr, n, cg.on, settle, cg.off)
		if total, err = cg.dump(s.name + " " + kind); err != nil {
			return 0, 0, err
		}
		if werr == nil {
			return keys0, total, nil
		}
		if attempt == instrAttempts || ctx.Err() != nil {
			return 0, 0, fmt.Errorf("%s: %w", kind, werr)
		}
		fmt.Printf("    %s %s window again: %v\n", s.name, kind, werr)
		if keys0, err = b.replayKeys(ctx, s); err != nil {
			return 0, 0, err
		}
	}
}

// settle runs with instrumentation on, before a window's own requests. The
// first requests after instrumentation is switched on run while valgrind
// translates the code again, instrumented, and the slowest of them miss the
// replay store's deadline: instrSettle requests are sent, counted and
// dropped (their answers do not matter: a 503 among them is why). Then a
// collection, so that every window starts right after one: the cycles that
// fall in a window (a few million instructions each) are then the same
// from run to run.
func (b *bench) settle(ctx context.Context, cg *callgrind, s *scenario, kind, addr string) error {
	reqs, err := s.requests(ctx, instrSettle)
	if err != nil {
		return err
	}
	if _, err := (load{addr: addr, reqs: reqs, n: instrSettle, conns: b.o.instrConns, deadline: 10 * time.Minute}).run(ctx); err != nil {
		return err
	}
	if err := b.gw.collect(ctx); err != nil {
		return err
	}
	_, err = cg.dump(s.name + " " + kind + " settle")
	return err
}

// syscalls fills the system call counts of one configuration.
func (b *bench) syscalls(ctx context.Context, dir string, s *scenario, row *instrRow) error {
	n := b.o.instrRequests
	for _, addr := range []string{b.plain, s.site} {
		if err := b.warm(ctx, s, addr, b.o.instrWarmup); err != nil {
			return err
		}
	}
	for _, site := range []struct {
		kind, addr string
		total      *float64
		calls      *map[string]float64
	}{{"plain", b.plain, &row.plainSys, &row.plainCalls}, {"gateway", s.site, &row.gwSys, &row.gwCalls}} {
		st := &straceRun{pid: b.gw.Pid(), out: filepath.Join(dir, "strace-"+strings.ToLower(s.alg)+"-"+site.kind+".txt")}
		if _, err := b.window(ctx, s, site.addr, n, st.start, nil, st.stop); err != nil {
			return fmt.Errorf("%s under strace: %w", site.kind, err)
		}
		calls, err := parseStraceSummary(st.out)
		if err != nil {
			return err
		}
		per := map[string]float64{}
		sum := 0
		for name, c := range calls {
			per[name] = float64(c) / float64(n)
			sum += c
		}
		*site.total, *site.calls = float64(sum)/float64(n), per
		fmt.Printf("%-40s %-7s %6d requests   %6d system calls   %5.2f per request   %s\n", s.name, site.kind, n, sum, *site.total, formatCalls(per))
	}
	return nil
}

// instrMachineLine describes where the counts come from.
func instrMachineLine(r *redisServer, o options) string {
	line := machineLine(r, o)
	if i := strings.Index(line, "; "+strconv.Itoa(o.conns)+" connections"); i >= 0 {
		line = line[:i]
	}
	v := "valgrind"
	if b, err := exec.Command("valgrind", "--version").Output(); err == nil {
		v = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%s; %s, gateway GOMAXPROCS=1; %d connections, %d requests per site (Bearer %d) after %d untimed",
		line, v, o.instrConns, o.instrRequests, o.instrRequests*bearerWindowFactor, o.instrWarmup)
}
