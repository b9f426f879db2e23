package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestWriteTable(t *testing.T) {
	rows := []summary{
		{name: "ES256", plainRPS: 9000, gwRPS: 4500, throughputRatio: 0.5, plainP50: 2500 * time.Microsecond,
			plainP99: 9 * time.Millisecond, gwP50: 6 * time.Millisecond, gwP99: 15 * time.Millisecond,
			plainCPU: 80, gwCPU: 158, addedCPU: 78, addedMin: 70.4, addedMax: 91.6, floor: 60},
		{name: bearerName, plainRPS: 9000, gwRPS: 8000, throughputRatio: 0.89, plainCPU: 80, gwCPU: 92, addedCPU: 12, errors: 3},
	}
	var b bytes.Buffer
	writeTable(&b, rows)
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("want header, rule, 2 rows and a flag note, got %d lines:\n%s", len(lines), b.String())
	}
	for i, l := range lines[:4] {
		if !strings.HasPrefix(l, "| ") && !strings.HasPrefix(l, "|-") {
			t.Errorf("line %d is not a table row: %q", i, l)
		}
		if got, want := strings.Count(l, "|"), len(tableHeader)+1; got != want {
			t.Errorf("line %d has %d bars, want %d: %q", i, got, want, l)
		}
		// Padded columns: every row is as wide as the header.
		if n, w := len([]rune(l)), len([]rune(lines[0])); n != w {
			t.Errorf("line %d is %d runes wide, header %d", i, n, w)
		}
	}
	cells := strings.Split(lines[2], "|")
	for i, want := range []string{"ES256", "9000", "4500", "0.50", "2.50", "9.00", "6.00", "15.00", "80.0", "158.0", "78.0", "70–92", "60.0", "1.30"} {
		if got := strings.TrimSpace(cells[i+1]); got != want {
			t.Errorf("ES256 column %q = %q, want %q", tableHeader[i], got, want)
		}
	}
	bearer := strings.Split(lines[3], "|")
	if strings.TrimSpace(bearer[1]) != bearerName+" !" || strings.TrimSpace(bearer[13]) != "–" || strings.TrimSpace(bearer[14]) != "–" {
		t.Errorf("bearer row: want the ! flag and – for the floor and the ratio: %q", lines[3])
	}
	if !strings.HasPrefix(lines[4], "! ") {
		t.Errorf("want a note explaining !, got %q", lines[4])
	}
}

func TestTargetsAndRatioLine(t *testing.T) {
	rows := []summary{
		{name: "ES256", addedCPU: 75, floor: 60, throughputRatio: 0.55},
		{name: "RS256", addedCPU: 60, floor: 30},
		{name: bearerName, addedCPU: 12},
	}
	ts := targets(rows)
	if len(ts) != 4 {
		t.Fatalf("want 4 targets, got %+v", ts)
	}
	wantMet := []bool{true, true, false, true} // 1.25 ≤ 1.3; 0.55 ≥ 0.5; 2.0 > 1.6; 12 ≤ 15
	for i, tg := range ts {
		if tg.met() != wantMet[i] {
			t.Errorf("target %q (%.2f vs %.2f): met = %v, want %v", tg.what, tg.value, tg.limit, tg.met(), wantMet[i])
		}
	}
	var b bytes.Buffer
	writeTargets(&b, ts)
	if !strings.Contains(b.String(), "NOT MET") {
		t.Errorf("writeTargets does not report the missed target:\n%s", b.String())
	}
	if got, want := ratioLine(rows[0]), "added_cpu_per_request/verify_floor = 1.25 (ES256)"; got != want {
		t.Errorf("ratioLine = %q, want %q", got, want)
	}
	if got := ratioLine(summary{name: "ES256"}); !strings.Contains(got, "n/a") {
		t.Errorf("ratioLine without ES256 = %q, want n/a", got)
	}
}

func TestWriteReportEndsWithTheRatio(t *testing.T) {
	rows := []summary{
		{name: "ES256", addedCPU: 120, floor: 60, loadedFloor: 90, errors: 2},
		{name: bearerName, addedCPU: 20},
	}
	var b bytes.Buffer
	if flagged := writeReport(&b, rows, 3); !flagged {
		t.Error("a configuration with errors is not flagged")
	}
	out := b.String()
	for _, want := range []string{"| ES256 ! ", "warning: in 3 timed runs", errFlagged.Error(),
		"verify floor under load", "ES256 90.0 µs (1.50× idle; added/it 1.33)"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if last := lines[len(lines)-1]; last != "added_cpu_per_request/verify_floor = 2.00 (ES256)" {
		t.Errorf("last line = %q", last)
	}
}
