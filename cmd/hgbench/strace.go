package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

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
	var parts []string
	for _, n := range largestFirst(per) {
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

// formatCallsSigned lists signed differences per system call, largest
// first, e.g. "write +1.00, read -0.10".
func formatCallsSigned(d map[string]float64) string {
	var parts []string
	for _, n := range largestFirst(d) {
		parts = append(parts, fmt.Sprintf("%s %+.2f", n, d[n]))
	}
	return strings.Join(parts, ", ")
}

// largestFirst is the names of m by value, largest first, ties by name.
func largestFirst(m map[string]float64) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		if m[a] != m[b] {
			if m[a] > m[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return names
}
