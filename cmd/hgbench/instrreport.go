package main

import (
	"fmt"
	"io"
)

// writeInstrReport prints the instructions table, the added system calls,
// the goals and, last, the ES256 ratio line. It reports whether a
// configuration is flagged.
func writeInstrReport(w io.Writer, rows []instrRow) (flagged bool) {
	fmt.Fprintln(w, "instructions per request = callgrind's total over the window ÷ its requests (every thread of the gateway process);")
	fmt.Fprintln(w, "added = gateway − plain (the plain site is sent the same bytes); verify floor = one jws.NewVerifier(alg).Verify;")
	fmt.Fprintln(w, "system calls per request from strace -c -f over a window of the same size, the gateway run directly.")
	fmt.Fprintln(w)
	header := []string{"configuration", "plain instr/req", "gateway instr/req", "added instr/req", "verify floor", "added/floor",
		"plain syscalls/req", "gateway syscalls/req", "added syscalls/req"}
	cells := [][]string{header}
	for _, r := range rows {
		name := r.name
		if r.errors > 0 {
			name += " !"
			flagged = true
		}
		floor, ratio := "–", "–"
		if r.floorIr > 0 {
			floor, ratio = kilo(r.floorIr), fmt.Sprintf("%.2f", r.ratio())
		}
		ps, gs, as := "–", "–", "–"
		if r.plainSys >= 0 && r.gwSys >= 0 {
			ps, gs, as = fmt.Sprintf("%.2f", r.plainSys), fmt.Sprintf("%.2f", r.gwSys), fmt.Sprintf("%+.2f", r.gwSys-r.plainSys)
		}
		cells = append(cells, []string{name, kilo(r.plainIr), kilo(r.gatewayIr), kilo(r.added()), floor, ratio, ps, gs, as})
	}
	writeCells(w, cells)
	for _, r := range rows {
		if r.plainCalls != nil && r.gwCalls != nil {
			fmt.Fprintf(w, "added system calls per request, %s: %s\n", r.name, addedCalls(r.plainCalls, r.gwCalls))
		}
	}
	fmt.Fprintln(w)
	writeTargets(w, instrTargets(rows))
	es := instrRow{}
	for _, r := range rows {
		if r.name == "ES256" {
			es = r
		}
	}
	if flagged {
		fmt.Fprintf(w, "hgbench: %v\n", errFlagged)
	}
	if es.floorIr > 0 {
		fmt.Fprintf(w, "added_instructions/verify_floor = %.2f (ES256)\n", es.ratio())
	} else {
		fmt.Fprintln(w, "added_instructions/verify_floor = n/a (ES256 not measured)")
	}
	return flagged
}

// kilo formats an instruction count in thousands, e.g. "1,065.3k".
func kilo(v float64) string {
	return fmt.Sprintf("%sk", thousands(v/1e3))
}

// thousands formats v with one decimal and comma separators.
func thousands(v float64) string {
	s := fmt.Sprintf("%.1f", v)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	dot := len(s) - 2
	out := s[dot:]
	for i := dot; i > 0; i -= 3 {
		out = s[max(i-3, 0):i] + out
		if i-3 > 0 {
			out = "," + out
		}
	}
	if neg {
		out = "-" + out
	}
	return out
}

// instrTargets are the goals of the instructions mode, for the
// configurations present.
func instrTargets(rows []instrRow) []target {
	var ts []target
	for _, r := range rows {
		switch r.name {
		case "ES256":
			ts = append(ts, target{"ES256 added / verify floor", r.ratio(), 1.15, true})
		case "PS256", "RS256":
			ts = append(ts, target{r.name + " added / verify floor", r.ratio(), 1.30, true})
		case bearerName:
			ts = append(ts, target{"bearer added k-instructions/req", r.added() / 1e3, 50, true})
		}
		if r.plainCalls != nil && r.gwCalls != nil {
			short := r.name[:min(len(r.name), 6)]
			// One write for the audit entry, and for a proof one more for
			// the Redis pipeline; its reply is read by read(2) (and
			// go-redis checks a pooled connection with recvfrom(2)).
			writes := 1.0
			if r.floorIr > 0 {
				writes = 2.0
			}
			ts = append(ts,
				target{short + " added write(2)/req", r.gwCalls["write"] - r.plainCalls["write"], writes, true},
				target{short + " added other I/O calls/req", otherIO(r.plainCalls, r.gwCalls), 0.05, true})
		}
	}
	return ts
}

// runtimeCalls are the system calls of Go's scheduler and memory manager,
// which follow the timing of a run (idle waits, thread wake-ups), not the
// requests' own I/O.
var runtimeCalls = map[string]bool{
	"epoll_pwait": true, "epoll_wait": true, "nanosleep": true, "futex": true, "sched_yield": true,
	"madvise": true, "mmap": true, "munmap": true, "mprotect": true, "rt_sigprocmask": true,
	"rt_sigreturn": true, "sigaltstack": true, "clone": true, "clone3": true, "gettid": true,
	"rseq": true, "set_robust_list": true, "tgkill": true, "getpid": true,
}

// otherIO is the added calls per request that are neither the runtime's nor
// write, read or recvfrom.
func otherIO(plain, gw map[string]float64) float64 {
	sum := 0.0
	for n, v := range gw {
		if runtimeCalls[n] || n == "write" || n == "read" || n == "recvfrom" {
			continue
		}
		sum += v - plain[n]
	}
	for n, v := range plain {
		if _, ok := gw[n]; !ok && !runtimeCalls[n] && n != "write" && n != "read" && n != "recvfrom" {
			sum -= v
		}
	}
	if sum > -0.005 && sum < 0.005 {
		return 0 // not "-0.00"
	}
	return sum
}
