package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

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
			return 0, fmt.Errorf("%v: %s", err, gatewayproc.TailString(string(b), 20))
		}
	}
	total, err := readCallgrindTotal(out)
	if err != nil {
		return 0, err
	}
	return float64(total) / n, nil
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
