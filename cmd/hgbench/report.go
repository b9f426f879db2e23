package main

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// tableHeader names the columns of the result table.
var tableHeader = []string{
	"configuration",
	"plain req/s", "gateway req/s", "gateway/plain",
	"plain p50 ms", "plain p99 ms", "gateway p50 ms", "gateway p99 ms",
	"plain CPU µs/req", "gateway CPU µs/req", "added CPU µs/req", "added min–max",
	"verify floor µs", "added/floor",
}

// writeTable prints one row per configuration as a Markdown table (so that
// it can be pasted into the README as it is), columns padded for a
// terminal. A configuration with a non-200 response in any run is marked
// with "!" and explained under the table.
func writeTable(w io.Writer, rows []summary) {
	cells := [][]string{tableHeader}
	flagged := false
	for _, s := range rows {
		name := s.name
		if s.errors > 0 {
			name += " !"
			flagged = true
		}
		floor, ratio := "–", "–"
		if s.floor > 0 {
			floor, ratio = fmt.Sprintf("%.1f", s.floor), fmt.Sprintf("%.2f", s.floorRatio())
		}
		cells = append(cells, []string{
			name,
			fmt.Sprintf("%.0f", s.plainRPS), fmt.Sprintf("%.0f", s.gwRPS), fmt.Sprintf("%.2f", s.throughputRatio),
			ms(s.plainP50), ms(s.plainP99), ms(s.gwP50), ms(s.gwP99),
			fmt.Sprintf("%.1f", s.plainCPU), fmt.Sprintf("%.1f", s.gwCPU), fmt.Sprintf("%.1f", s.addedCPU),
			fmt.Sprintf("%.0f–%.0f", s.addedMin, s.addedMax),
			floor, ratio,
		})
	}
	writeCells(w, cells)
	if flagged {
		fmt.Fprintln(w, "! a run of this configuration had non-200 responses or transport errors (listed above): its numbers are suspect")
	}
}

// writeCells prints rows of cells as a Markdown table (the first row is the
// header), columns padded for a terminal, the first left-aligned and the
// others right-aligned.
func writeCells(w io.Writer, cells [][]string) {
	widths := make([]int, len(cells[0]))
	for _, row := range cells {
		for i, c := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for r, row := range cells {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i == 0 {
				b.WriteString(" " + c + pad + " |")
			} else {
				b.WriteString(" " + pad + c + " |")
			}
		}
		fmt.Fprintln(w, b.String())
		if r == 0 {
			b.Reset()
			b.WriteString("|")
			for i, wd := range widths {
				if i == 0 {
					b.WriteString(strings.Repeat("-", wd+2) + "|")
				} else {
					b.WriteString(strings.Repeat("-", wd+1) + ":|")
				}
			}
			fmt.Fprintln(w, b.String())
		}
	}
}

// writeLoadedFloors prints, under the table, the verify floor measured
// beside a gateway run and the ratio against it, for the rows that have one.
// The goals are checked against the idle floor of the table.
func writeLoadedFloors(w io.Writer, rows []summary) {
	var parts []string
	for _, s := range rows {
		if s.loadedFloor > 0 && s.floor > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f µs (%.2f× idle; added/it %.2f)",
				s.name, s.loadedFloor, s.loadedFloor/s.floor, s.addedCPU/s.loadedFloor))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(w, "verify floor under load (thread CPU time of one verification beside an untimed gateway run; the goals use the idle floor): %s\n", strings.Join(parts, ", "))
	}
}

// ms formats a duration in milliseconds with two decimals.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

// target is one goal of issue 6, checked on the table.
type target struct {
	what   string
	value  float64
	limit  float64
	atMost bool // value must be <= limit; otherwise >= limit
}

func (t target) met() bool {
	if t.atMost {
		return t.value <= t.limit
	}
	return t.value >= t.limit
}

// targets returns the goals of issue 6 that the table measures, for the
// configurations present in rows (looked up by name).
func targets(rows []summary) []target {
	by := map[string]summary{}
	for _, s := range rows {
		by[s.name] = s
	}
	var ts []target
	if s, ok := by["ES256"]; ok {
		ts = append(ts,
			target{"ES256 added CPU / verify floor", s.floorRatio(), 1.3, true},
			target{"ES256 throughput gateway/plain", s.throughputRatio, 0.5, false})
	}
	if s, ok := by["RS256"]; ok {
		ts = append(ts, target{"RS256 added CPU / verify floor", s.floorRatio(), 1.6, true})
	}
	if s, ok := by[bearerName]; ok {
		ts = append(ts, target{"bearer added CPU µs/request", s.addedCPU, 15, true})
	}
	return ts
}

// writeTargets prints each goal with its measured value and whether it holds.
func writeTargets(w io.Writer, ts []target) {
	for _, t := range ts {
		op, verdict := "≥", "met"
		if t.atMost {
			op = "≤"
		}
		if !t.met() {
			verdict = "NOT MET"
		}
		fmt.Fprintf(w, "target: %-32s %s %5.2f   measured %6.2f   %s\n", t.what, op, t.limit, t.value, verdict)
	}
}

// writeReport prints the legend, the table, the goals and, last, the
// ES256 ratio line. It reports whether a configuration is flagged.
func writeReport(w io.Writer, rows []summary, busyRuns int) (flagged bool) {
	fmt.Fprintln(w, "CPU = helsegate utime+stime (/proc/<pid>/stat) over a run ÷ its requests; added = median over pairs of gateway − plain;")
	fmt.Fprintln(w, "verify floor = one proof signature verification in-process; every column is a median over the pairs,")
	fmt.Fprintln(w, "but added min–max: the smallest and largest gateway − plain of a pair, the spread the median is taken from.")
	fmt.Fprintln(w)
	writeTable(w, rows)
	writeLoadedFloors(w, rows)
	fmt.Fprintln(w)
	writeTargets(w, targets(rows))
	es256 := summary{name: "ES256"}
	for _, r := range rows {
		flagged = flagged || r.errors > 0
		if r.name == "ES256" {
			es256 = r
		}
	}
	if busyRuns > 0 {
		fmt.Fprintf(w, "warning: in %d timed runs other processes used more than %.2f CPUs (the \"others\" column above): the machine was not quiet, the numbers are noisy\n", busyRuns, busyOthers)
	}
	if flagged {
		fmt.Fprintf(w, "hgbench: %v\n", errFlagged)
	}
	fmt.Fprintln(w, ratioLine(es256))
	return flagged
}

// ratioLine is the last line of the output, for scripts and the issue.
func ratioLine(es256 summary) string {
	if es256.floor <= 0 {
		return "added_cpu_per_request/verify_floor = n/a (ES256 not measured)"
	}
	return fmt.Sprintf("added_cpu_per_request/verify_floor = %.2f (ES256)", es256.floorRatio())
}
