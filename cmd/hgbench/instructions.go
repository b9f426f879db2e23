package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
func (b *bench) instructions(ctx context.Context, bin, dir string, cfg gatewayConfig, addrs []string, scenarios []*scenario) error {
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
	caddyfile := renderCaddyfile(cfg)

	// The verify floors, one callgrind child per algorithm.
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

	// System calls, with the gateway run directly.
	if _, err := exec.LookPath("strace"); err != nil || b.o.noStrace {
		fmt.Println("system calls: not counted (strace not installed, or -no-strace)")
	} else {
		gw, err := startGateway(ctx, launch{env: gatewayEnv}, bin, dir, caddyfile, cfg.Admin, cfg.LogPath, addrs)
		if err != nil {
			return err
		}
		b.gw = gw
		for i, s := range scenarios {
			if err := b.syscalls(ctx, dir, s, &rows[i]); err != nil {
				gw.Stop()
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
		gw.Stop()
	}

	// Instructions, with the gateway under callgrind.
	out := filepath.Join(dir, "callgrind.out")
	l := launch{
		wrapper: []string{"valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out},
		env:     callgrindEnv,
		ready:   3 * time.Minute,
	}
	fmt.Fprintf(os.Stderr, "hgbench: starting %s under callgrind (run directory %s)\n", b.o.bin, dir)
	gw, err := startGateway(ctx, l, bin, dir, caddyfile, cfg.Admin, cfg.LogPath, addrs)
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
		keys0, err := b.replayKeys(ctx, s)
		if err != nil {
			return err
		}
		var total int64
		for attempt := 1; ; attempt++ {
			// The first requests after instrumentation is switched on
			// run while valgrind translates the code again, instrumented,
			// and the slowest of them miss the replay store's deadline:
			// they are sent, counted and dropped, before the window.
			settle := func() error {
				reqs, err := s.requests(ctx, instrSettle)
				if err != nil {
					return err
				}
				// Their answers do not matter (a 503 among them is why).
				if _, err := (load{addr: site.addr, reqs: reqs, n: instrSettle, conns: b.o.instrConns, deadline: 10 * time.Minute}).run(ctx); err != nil {
					return err
				}
				// A collection now, so that every window starts right after
				// one: the cycles that fall in a window (a few million
				// instructions each) are then the same from run to run.
				if err := b.gw.collect(ctx); err != nil {
					return err
				}
				_, err = cg.dump(s.name + " " + site.kind + " settle")
				return err
			}
			_, werr := b.window(ctx, s, site.addr, n, cg.on, settle, cg.off)
			if total, err = cg.dump(s.name + " " + site.kind); err != nil {
				return err
			}
			if werr == nil {
				break
			}
			// Under callgrind the gateway runs ~50 times slower, and a
			// request can now and then miss the replay store's 250 ms
			// deadline (503): that window's count is of other work, so
			// it is done again.
			if attempt == instrAttempts || ctx.Err() != nil {
				return fmt.Errorf("%s: %w", site.kind, werr)
			}
			fmt.Printf("    %s %s window again: %v\n", s.name, site.kind, werr)
			if keys0, err = b.replayKeys(ctx, s); err != nil {
				return err
			}
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

// callgrind drives the gateway's callgrind through callgrind_control.
type callgrind struct {
	pid int
	out string // --callgrind-out-file
}

func (c *callgrind) control(args ...string) error {
	cmd := exec.Command("callgrind_control", append(args, strconv.Itoa(c.pid))...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("callgrind_control %s: %v: %s", strings.Join(args, " "), err, out)
	}
	if !strings.Contains(string(out), "OK") {
		return fmt.Errorf("callgrind_control %s: %s", strings.Join(args, " "), out)
	}
	return nil
}

func (c *callgrind) on() error  { return c.control("-i", "on") }
func (c *callgrind) off() error { return c.control("-i", "off") }

// dump writes the counts since the last dump and returns their total.
// callgrind numbers its dumps itself (out.1, out.2, …); the new file is
// the one that was not there before.
func (c *callgrind) dump(label string) (int64, error) {
	before, _ := filepath.Glob(c.out + ".*")
	// callgrind takes the label up to the first space or parenthesis.
	label = strings.Map(func(r rune) rune {
		if r == ' ' || r == '(' || r == ')' || r == ',' {
			return '-'
		}
		return r
	}, label)
	if err := c.control("-d", label); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		after, _ := filepath.Glob(c.out + ".*")
		for _, f := range after {
			if !slices.Contains(before, f) {
				// callgrind_control answers once the dump is written.
				return readCallgrindTotal(f)
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("callgrind_control -d %s: no new dump beside %s", label, c.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readCallgrindTotal reads the "totals:" line of a callgrind output file
// (instructions: Ir is the only event collected).
func readCallgrindTotal(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseCallgrindTotal(f, path)
}

func parseCallgrindTotal(r interface{ Read([]byte) (int, error) }, name string) (int64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "totals:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no totals: line", name)
}

// straceRun is strace -c -f attached to the gateway for one window.
type straceRun struct {
	pid int
	out string
	cmd *exec.Cmd
}

func (s *straceRun) start() error {
	s.cmd = exec.Command("strace", "-c", "-f", "-p", strconv.Itoa(s.pid), "-o", s.out)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	// Wait until every thread of the gateway is traced.
	deadline := time.Now().Add(10 * time.Second)
	for !allTraced(s.pid) {
		if time.Now().After(deadline) {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
			return errors.New("strace did not attach to every thread within 10 s (ptrace allowed? see /proc/sys/kernel/yama/ptrace_scope)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// stop detaches strace (SIGINT), which then writes its table. Its exit
// status says it was interrupted; the table is what counts.
func (s *straceRun) stop() error {
	_ = s.cmd.Process.Signal(os.Interrupt)
	err := s.cmd.Wait()
	if _, ok := err.(*exec.ExitError); ok {
		return nil
	}
	return err
}

// allTraced reports whether every thread of pid has a tracer.
func allTraced(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			return false
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "TracerPid:"); ok && strings.TrimSpace(v) == "0" {
				return false
			}
		}
	}
	return true
}

// parseStraceSummary reads the calls per system call of a strace -c table:
//
//	% time     seconds  usecs/call     calls    errors syscall
//	------ ----------- ----------- --------- --------- ----------------
//	 45.00    0.000045           1        30           write
func parseStraceSummary(path string) (map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	calls := map[string]int{}
	rows := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[len(f)-1] == "total" || f[len(f)-1] == "syscall" {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue
		}
		c, err := strconv.Atoi(f[3])
		if err != nil {
			continue
		}
		calls[f[len(f)-1]] += c
		rows++
	}
	if rows == 0 && !strings.Contains(string(b), "total") {
		return nil, fmt.Errorf("%s: no strace -c table", path)
	}
	return calls, nil
}

// formatCalls lists the system calls of a window per request, the most
// frequent first, e.g. "write 2.00, read 1.27".
func formatCalls(per map[string]float64) string {
	names := make([]string, 0, len(per))
	for n := range per {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		if per[a] != per[b] {
			if per[a] > per[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, n := range names {
		if per[n] >= 0.005 {
			parts = append(parts, fmt.Sprintf("%s %.2f", n, per[n]))
		}
	}
	return strings.Join(parts, ", ")
}

// addedCalls is gateway minus plain per system call, the differences of
// at least 0.02 per request, largest first.
func addedCalls(plain, gw map[string]float64) string {
	diff := map[string]float64{}
	for n, v := range gw {
		if d := v - plain[n]; d >= 0.02 || d <= -0.02 {
			diff[n] = d
		}
	}
	for n, v := range plain {
		if _, ok := gw[n]; !ok && v >= 0.02 {
			diff[n] = -v
		}
	}
	s := formatCallsSigned(diff)
	if s == "" {
		return "none"
	}
	return s
}

func formatCallsSigned(d map[string]float64) string {
	names := make([]string, 0, len(d))
	for n := range d {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		if d[a] != d[b] {
			if d[a] > d[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %+.2f", n, d[n]))
	}
	return strings.Join(parts, ", ")
}

// floorInstructions counts one verification of alg: hgbench itself under
// callgrind with -floor-child, collecting only inside verifyLoop.
func floorInstructions(ctx context.Context, dir, alg string) (float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	const n = 200
	out := filepath.Join(dir, "floor-"+strings.ToLower(alg)+".callgrind")
	// valgrind 3.19 now and then dies in a Go runtime thread's start
	// (runtime.templateThread) before the count: try again.
	for attempt := 1; ; attempt++ {
		cmd := exec.CommandContext(ctx, "valgrind", "--tool=callgrind", "--collect-atstart=no",
			"--toggle-collect=main.verifyLoop", "--callgrind-out-file="+out,
			self, "-floor-child", alg, "-floor-n", strconv.Itoa(n))
		cmd.Env = append(os.Environ(), callgrindEnv...)
		b, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		if attempt == 3 || ctx.Err() != nil {
			return 0, fmt.Errorf("%v: %s", err, tail2(string(b), 20))
		}
	}
	total, err := readCallgrindTotal(out)
	if err != nil {
		return 0, err
	}
	return float64(total) / n, nil
}

func tail2(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// runFloorChild is hgbench -floor-child: a proof of alg, verified a few
// times uncounted, then n times in verifyLoop (the one function callgrind
// collects in). The collector is off from then on: callgrind follows calls
// by the stack pointer, and a goroutine stack that a collection shrinks and
// the next call grows again (copied elsewhere) looks to it like a return
// from verifyLoop, which would stop the count. The floor is the
// verification's own instructions; what its few allocations cost the
// collector is in the gateway's added instructions.
func runFloorChild(alg string, n int) error {
	p, err := newFloorProof(alg)
	if err != nil {
		return err
	}
	runtime.GC()
	debug.SetGCPercent(-1)
	for range 20 {
		if err := p.v.Verify(p.input, p.sig, p.pub); err != nil {
			return err
		}
	}
	return verifyLoop(p, n)
}

// verifyLoop verifies the proof n times. Not inlined: callgrind collects
// inside it by its name.
//
//go:noinline
func verifyLoop(p *floorProof, n int) error {
	for range n {
		if err := p.v.Verify(p.input, p.sig, p.pub); err != nil {
			return err
		}
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
