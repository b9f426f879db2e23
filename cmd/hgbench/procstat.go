package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// defaultClockTicks is USER_HZ, the unit of utime and stime in
// /proc/<pid>/stat. It has been 100 on every Linux architecture for decades;
// clockTicks asks getconf once and falls back to it.
const defaultClockTicks = 100

// clockTicks returns sysconf(_SC_CLK_TCK) as reported by `getconf CLK_TCK`,
// or defaultClockTicks when getconf is missing or says something odd.
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return defaultClockTicks
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return defaultClockTicks
	}
	return n
}

// readCPUTicks returns utime+stime of process pid (all its threads), in
// clock ticks.
func readCPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU returns utime+stime (fields 14 and 15, proc(5)) of one
// /proc/<pid>/stat line. The command name (field 2) is in parentheses and
// may itself hold spaces and parentheses, so the fields are counted from
// the last ')'.
func parseStatCPU(stat string) (int64, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("procstat: no command name in %q", stat)
	}
	// fields[0] is field 3 (state), so field n is fields[n-3].
	fields := strings.Fields(stat[end+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("procstat: %d fields after the command name, want at least 13", len(fields))
	}
	utime, err := strconv.ParseInt(fields[14-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("procstat: utime: %w", err)
	}
	stime, err := strconv.ParseInt(fields[15-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("procstat: stime: %w", err)
	}
	return utime + stime, nil
}

// readSystemBusy returns the ticks all CPUs spent busy so far, from the
// first line of /proc/stat.
func readSystemBusy() (int64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return parseSystemBusy(line)
}

// parseSystemBusy returns user+nice+system+irq+softirq+steal of the
// aggregate "cpu" line of /proc/stat (guest time is already in user).
func parseSystemBusy(line string) (int64, error) {
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, fmt.Errorf("procstat: not the aggregate cpu line: %q", line)
	}
	var busy int64
	// user nice system idle iowait irq softirq steal
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("procstat: cpu field %d: %w", i, err)
		}
		busy += n
	}
	return busy, nil
}

// cpuSample is the CPU time, in clock ticks, of the gateway, of hgbench
// itself and of the whole machine at one instant.
type cpuSample struct {
	gateway, self, machine int64
}

// sub returns the ticks spent between earlier and s.
func (s cpuSample) sub(earlier cpuSample) cpuSample {
	return cpuSample{s.gateway - earlier.gateway, s.self - earlier.self, s.machine - earlier.machine}
}

// others is what neither the gateway nor hgbench used (Redis, and anything
// else that runs on the machine and disturbs the measurement).
func (s cpuSample) others() int64 {
	return s.machine - s.gateway - s.self
}

// sampleCPU reads the gateway's (pid), hgbench's and the machine's ticks.
func sampleCPU(pid int) (cpuSample, error) {
	var s cpuSample
	var err error
	if s.gateway, err = readCPUTicks(pid); err != nil {
		return s, err
	}
	if s.self, err = readCPUTicks(os.Getpid()); err != nil {
		return s, err
	}
	s.machine, err = readSystemBusy()
	return s, err
}
