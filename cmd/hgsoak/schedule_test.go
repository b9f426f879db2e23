package main

import (
	"testing"
	"time"
)

func TestPlanScales(t *testing.T) {
	for _, d := range []time.Duration{5 * time.Minute, 6 * time.Minute, 10 * time.Minute, 30 * time.Minute, 2 * time.Hour} {
		steps, err := plan(d)
		if err != nil {
			t.Fatalf("plan(%s): %v", d, err)
		}
		if len(steps) != 7 {
			t.Fatalf("plan(%s): %d steps", d, len(steps))
		}
		seen := map[string]bool{}
		for _, s := range steps {
			seen[family(s.Phase)] = true
			if s.End() > d {
				t.Errorf("plan(%s): %s ends at %s", d, s.Phase, s.End())
			}
		}
		for _, f := range []string{famRedis, famRegistry, famRotate, famIssuer} {
			if !seen[f] {
				t.Errorf("plan(%s): no %s phase", d, f)
			}
		}
	}
	// Starts scale with the duration; fixed timings do not.
	a, _ := plan(6 * time.Minute)
	b, _ := plan(12 * time.Minute)
	if b[0].At != 2*a[0].At {
		t.Errorf("redis-quick at %s for 6m, %s for 12m: not scaled", a[0].At, b[0].At)
	}
	if a[4].For != redisSlowDown || b[4].For != redisSlowDown {
		t.Errorf("the slow Redis restart should stay %s down", redisSlowDown)
	}
}

func TestPlanRefusesShortRuns(t *testing.T) {
	if _, err := plan(2 * time.Minute); err == nil {
		t.Fatal("plan(2m) should fail")
	}
}

func TestCheckPlan(t *testing.T) {
	overlap := []step{{Phase: phReg503, At: 10 * time.Second, For: 20 * time.Second}, {Phase: phRedisQuick, At: 20 * time.Second}}
	if err := checkPlan(overlap, time.Hour); err == nil {
		t.Error("overlapping phases accepted")
	}
	close := []step{{Phase: phRotAnnounce, At: 10 * time.Second}, {Phase: phRotSilent, At: 30 * time.Second}}
	if err := checkPlan(close, time.Hour); err == nil {
		t.Error("rotations 20 s apart accepted")
	}
}
