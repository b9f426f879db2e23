package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// cell is the tally of one (phase, kind, route).
type cell struct {
	n, ok   int
	classes map[string]int
}

// verdicts of the run, computed from the records.
type verdicts struct {
	cells      map[[3]string]*cell // phase, kind, route
	wrong      []*record           // wrong 200s (bugs)
	exceptions []*record           // replay 200s of the documented local-outage exception
	unexpected int                 // answers outside the acceptable set that are not wrong 200s
}

// judge classifies every record.
func judge(recs []*record, outs []outage) verdicts {
	v := verdicts{cells: map[[3]string]*cell{}}
	for _, r := range recs {
		c := class(r.status, r.reason, r.code)
		k := [3]string{r.phase, string(r.kind), r.route}
		ce := v.cells[k]
		if ce == nil {
			ce = &cell{classes: map[string]int{}}
			v.cells[k] = ce
		}
		ce.n++
		ce.classes[c]++
		switch {
		case r.status == 200 && r.kind.mustNotPass():
			if documentedException(r.kind, r.route, r.origSent, r.sent, outs) {
				v.exceptions = append(v.exceptions, r)
			} else {
				v.wrong = append(v.wrong, r)
			}
		case isAcceptable(c, r.kind, r.route, r.phase):
			ce.ok++
		default:
			v.unexpected++
		}
	}
	return v
}

// phaseOrder returns the phases seen, in the order they first occurred.
func phaseOrder(recs []*record) []string {
	first := map[string]time.Time{}
	for _, r := range recs {
		if t, ok := first[r.phase]; !ok || r.sent.Before(t) {
			first[r.phase] = r.sent
		}
	}
	var ps []string
	for p := range first {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return first[ps[i]].Before(first[ps[j]]) })
	return ps
}

// printAnswers prints expected vs observed per phase, kind and route.
func printAnswers(w io.Writer, recs []*record, v verdicts) {
	fmt.Fprintln(w, "\n== answers per phase, kind and route (ok = acceptable for that phase; observed classes with counts)")
	fmt.Fprintf(w, "%-19s %-13s %-5s %6s %6s  %s\n", "phase", "kind", "route", "n", "ok", "observed")
	for _, p := range phaseOrder(recs) {
		for _, k := range allKinds {
			for _, rt := range []string{routeDeny, routeLocal} {
				ce := v.cells[[3]string{p, string(k), rt}]
				if ce == nil {
					continue
				}
				var cls []string
				for c := range ce.classes {
					cls = append(cls, c)
				}
				sort.Slice(cls, func(i, j int) bool { return ce.classes[cls[i]] > ce.classes[cls[j]] })
				var parts []string
				for _, c := range cls {
					mark := ""
					if !isAcceptable(c, k, rt, p) {
						mark = " (!)"
					}
					parts = append(parts, fmt.Sprintf("%s ×%d%s", c, ce.classes[c], mark))
				}
				fmt.Fprintf(w, "%-19s %-13s %-5s %6d %6d  %s\n", p, k, rt, ce.n, ce.ok, strings.Join(parts, ", "))
			}
		}
	}
	fmt.Fprintln(w, "(!) = not in the acceptable set of that phase")
}

// printRecovery prints, per Redis restart, the first 200 of a valid request
// sent after the new server's first PONG, per replica and route; the valid
// 200s per second after it; and the last valid request refused.
func printRecovery(w io.Writer, recs []*record, outs []outage, nrep int) {
	fmt.Fprintln(w, "\n== recovery after each Redis restart (first 200 of a valid request sent after Redis answered PING again; time from that PONG to the 200's answer)")
	routes := []string{routeDeny, routeLocal}
	for i, o := range outs {
		fmt.Fprintf(w, "restart %d: SIGKILL %s, PONG %s (%.2fs down)\n", i+1, o.killed.Format("15:04:05.000"), o.back.Format("15:04:05.000"), o.back.Sub(o.killed).Seconds())
		for rep := range nrep {
			for _, rt := range routes {
				first, refused := firstRecovered(recs, o, rep, rt)
				if first == nil {
					fmt.Fprintf(w, "  r%d %-5s no 200 after the restart\n", rep, rt)
					continue
				}
				fmt.Fprintf(w, "  r%d %-5s first 200 after %6.3fs (%d valid requests refused before it)\n", rep, rt, first.done.Sub(o.back).Seconds(), refused)
			}
		}
		// What each route answered valid requests in the seconds after the
		// PONG, by second: the local route may go from fallback answers to
		// recovering refusals once the new server is verified.
		for _, rt := range routes {
			fmt.Fprintf(w, "  %-5s valid 200s per second after the PONG (both replicas): %s\n", rt, strings.Join(validPerSecond(recs, o, rt, 8), " "))
		}
		// The end of the refusals: the last valid request refused as
		// recovering, which bounds how long honest clients lost requests.
		for _, rt := range routes {
			if last := lastRefused(recs, o, rt); !last.IsZero() {
				fmt.Fprintf(w, "  %-5s last valid request refused (503) sent %.3fs after the PONG\n", rt, last.Sub(o.back).Seconds())
			}
		}
	}
}

// firstRecovered returns the valid request to replica rep and route rt
// sent after o's PONG whose 200 came first, and how many valid requests
// sent after the PONG and before it were refused; nil when none got a 200.
func firstRecovered(recs []*record, o outage, rep int, rt string) (first *record, refused int) {
	after := func(r *record) bool {
		return r.kind == kindValid && r.replica == rep && r.route == rt && !r.sent.Before(o.back)
	}
	for _, r := range recs {
		if after(r) && r.status == 200 && (first == nil || r.done.Before(first.done)) {
			first = r
		}
	}
	if first == nil {
		return nil, 0
	}
	for _, r := range recs {
		if after(r) && r.sent.Before(first.sent) && r.status != 200 {
			refused++
		}
	}
	return first, refused
}

// validPerSecond is "ok/all" of the valid requests to route rt (both
// replicas) sent in each of the first n seconds after o's PONG.
func validPerSecond(recs []*record, o outage, rt string, n int) []string {
	var line []string
	for sec := range n {
		ok, no := 0, 0
		for _, r := range recs {
			if r.kind != kindValid || r.route != rt {
				continue
			}
			if d := r.sent.Sub(o.back); d >= time.Duration(sec)*time.Second && d < time.Duration(sec+1)*time.Second {
				if r.status == 200 {
					ok++
				} else {
					no++
				}
			}
		}
		line = append(line, fmt.Sprintf("%d/%d", ok, ok+no))
	}
	return line
}

// lastRefused is when the last valid request to route rt refused with 503
// during o and its settling was sent; zero when none was.
func lastRefused(recs []*record, o outage, rt string) time.Time {
	var last time.Time
	for _, r := range recs {
		if r.kind == kindValid && r.route == rt && r.status == 503 && !r.sent.Before(o.killed) && r.sent.Before(o.back.Add(redisSettle)) && r.sent.After(last) {
			last = r.sent
		}
	}
	return last
}

// printResources prints the RSS and goroutine samples of every replica.
func printResources(w io.Writer, samples [][]sample) {
	fmt.Fprintln(w, "\n== resources per replica (VmRSS from /proc/<pid>/status; go_goroutines from the admin endpoint's /metrics)")
	fmt.Fprintf(w, "%8s", "t")
	for i := range samples {
		fmt.Fprintf(w, " %10s %8s", fmt.Sprintf("r%d RSS MB", i), fmt.Sprintf("r%d gor", i))
	}
	fmt.Fprintln(w)
	n := 0
	for _, s := range samples {
		n = max(n, len(s))
	}
	for j := range n {
		fmt.Fprintf(w, "%7.0fs", samples[0][min(j, len(samples[0])-1)].at.Seconds())
		for i := range samples {
			if j >= len(samples[i]) {
				fmt.Fprintf(w, " %10s %8s", "-", "-")
				continue
			}
			s := samples[i][j]
			fmt.Fprintf(w, " %10.1f %8d", float64(s.rssKB)/1024, s.goroutines)
		}
		fmt.Fprintln(w)
	}
}

// describe is one line about a record, for the wrong-200 and exception lists.
func describe(r *record, start time.Time) string {
	s := fmt.Sprintf("#%d %s route=%s replica=r%d path=%s sent=%s (+%.1fs) phase=%s answer=%s",
		r.id, r.kind, r.route, r.replica, r.path, r.sent.Format("15:04:05.000"), r.sent.Sub(start).Seconds(), r.phase, class(r.status, r.reason, r.code))
	if r.kind.isReplay() {
		s += fmt.Sprintf(" original=#%d on r%d sent %s (%.2fs earlier)", r.origID, r.origReplica, r.origSent.Format("15:04:05.000"), r.sent.Sub(r.origSent).Seconds())
	}
	return s
}
