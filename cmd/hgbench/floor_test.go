package main

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestThreadCPUCountsThisThreadsWork(t *testing.T) {
	p, err := newFloorProof("ES256")
	if err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0, err := threadCPU()
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if err := p.v.Verify(p.input, p.sig, p.pub); err != nil {
			t.Fatal(err)
		}
	}
	t1, err := threadCPU()
	if err != nil {
		t.Fatal(err)
	}
	if t1 <= t0 {
		t.Fatalf("50 ES256 verifications on this thread: thread CPU time went from %s to %s", t0, t1)
	}
	// An idle wait is not CPU time.
	time.Sleep(50 * time.Millisecond)
	t2, err := threadCPU()
	if err != nil {
		t.Fatal(err)
	}
	if slept := t2 - t1; slept >= 40*time.Millisecond {
		t.Errorf("a 50 ms sleep counted %s of thread CPU time", slept)
	}
}

func TestMeasureUnderLoad(t *testing.T) {
	p, err := newFloorProof("ES256")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	close(done)
	if _, err := p.measureUnderLoad(done); err == nil || !strings.Contains(err.Error(), "before a batch") {
		t.Errorf("a run that ended at once: want an error, got %v", err)
	}

	done = make(chan struct{})
	time.AfterFunc(4*floorLoadGap, func() { close(done) })
	us, err := p.measureUnderLoad(done)
	if err != nil {
		t.Fatal(err)
	}
	if us <= 0 {
		t.Errorf("verify floor under load = %v µs, want a positive cost", us)
	}
}
