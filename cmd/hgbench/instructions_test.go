package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseStraceSummary(t *testing.T) {
	const out = `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 45.00    0.000045           1        30           write
 30.00    0.000030           0      4012      2006 read
 25.00    0.000025           2        10           epoll_pwait
------ ----------- ----------- --------- --------- ----------------
100.00    0.000100           0      4052      2006 total
`
	path := filepath.Join(t.TempDir(), "strace.txt")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := parseStraceSummary(path)
	if err != nil {
		t.Fatal(err)
	}
	if got["write"] != 30 || got["read"] != 4012 || got["epoll_pwait"] != 10 || len(got) != 3 {
		t.Fatalf("parsed %v", got)
	}
}

func TestParseCallgrindTotal(t *testing.T) {
	in := "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 18446744073677270779\n\nfn=(1) main\n1 2\ntotals: 2943796171\n"
	got, err := parseCallgrindTotal(strings.NewReader(in), "x")
	if err != nil || got != 2943796171 {
		t.Fatalf("got %d, %v", got, err)
	}
	if _, err := parseCallgrindTotal(strings.NewReader("events: Ir\n"), "x"); err == nil {
		t.Fatal("no totals line: want an error")
	}
}

func TestKilo(t *testing.T) {
	for v, want := range map[float64]string{
		1_065_312: "1,065.3k", 858_574: "858.6k", 71_640: "71.6k", -1_500: "-1.5k", 999: "1.0k",
	} {
		if got := kilo(v); got != want {
			t.Errorf("kilo(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestOtherIO(t *testing.T) {
	plain := map[string]float64{"read": 4, "write": 2, "epoll_pwait": 0.5}
	gw := map[string]float64{"read": 6, "write": 4, "recvfrom": 1, "epoll_pwait": 2, "futex": 0.1, "openat": 0.5}
	if got := otherIO(plain, gw); got != 0.5 {
		t.Fatalf("otherIO = %v, want 0.5 (openat)", got)
	}
}
