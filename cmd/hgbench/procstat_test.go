package main

import (
	"os"
	"testing"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name    string
		stat    string
		want    int64
		wantErr bool
	}{
		{
			name: "plain command",
			// pid comm state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
			stat: "4242 (helsegate) S 1 4242 4242 0 -1 4194560 9000 0 3 0 1234 567 0 0 20 0 9 0 100 2000000 3000",
			want: 1234 + 567,
		},
		{
			name: "command with spaces and parentheses",
			stat: "7 (a b) (c)) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 5 0 0",
			want: 30,
		},
		{name: "no command", stat: "4242 helsegate S 1", wantErr: true},
		{name: "truncated", stat: "4242 (helsegate) S 1 4242 4242 0 -1 4194560 9000 0 3 0 1234", wantErr: true},
		{name: "not a number", stat: "4242 (helsegate) S 1 4242 4242 0 -1 4194560 9000 0 3 0 x 567 0", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU(tt.stat)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStatCPU() error = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseStatCPU() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestParseSystemBusy(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	got, err := parseSystemBusy("cpu  100 2 30 5000 7 1 4 3 50 0")
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(100 + 2 + 30 + 1 + 4 + 3); got != want {
		t.Errorf("parseSystemBusy() = %d, want %d", got, want)
	}
	if _, err := parseSystemBusy("cpu0 1 2 3 4 5 6 7 8"); err == nil {
		t.Error("parseSystemBusy accepted a per-CPU line")
	}
}

func TestSampleCPU(t *testing.T) {
	// The test process itself stands in for the gateway.
	s, err := sampleCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.gateway < 0 || s.self < s.gateway || s.machine < s.self {
		t.Errorf("sampleCPU(self) = %+v: want 0 ≤ gateway ≤ self (read later) ≤ machine", s)
	}
	if _, err := readCPUTicks(1 << 30); err == nil {
		t.Error("readCPUTicks of a pid that does not exist succeeded")
	}
}

func TestCPUSample(t *testing.T) {
	a := cpuSample{gateway: 100, self: 50, machine: 400}
	b := cpuSample{gateway: 250, self: 90, machine: 620}
	d := b.sub(a)
	if d != (cpuSample{150, 40, 220}) {
		t.Errorf("sub = %+v", d)
	}
	if got := d.others(); got != 30 {
		t.Errorf("others = %d, want 30", got)
	}
}
