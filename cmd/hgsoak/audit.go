package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

// auditEntry is what the soak reads of one audit log line.
type auditEntry struct {
	TS     float64 `json:"ts"`
	Path   string  `json:"path"`
	Reason string  `json:"reason"`
	Status int     `json:"status"`
	Msg    string  `json:"msg"`
	line   string
}

// readAudit returns a replica's audit entries by path, in time order.
func readAudit(path string) (map[string][]auditEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]auditEntry{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		var e auditEntry
		if json.Unmarshal(s.Bytes(), &e) != nil || e.Path == "" {
			continue
		}
		e.line = s.Text()
		out[e.Path] = append(out[e.Path], e)
	}
	for _, es := range out {
		sort.SliceStable(es, func(i, j int) bool { return es[i].TS < es[j].TS })
	}
	return out, s.Err()
}

// joinAudit fills in each record's reason from its replica's audit log. A
// path is used by one request, or by a proof and its replays: the n-th
// request to a path on a replica (by send time) is its n-th audit entry
// there. A denial whose logged status differs from the one received is
// left without a reason (the class then shows the body's error code).
func joinAudit(recs []*record, audits []map[string][]auditEntry) (joined, missing int) {
	type key struct {
		rep  int
		path string
	}
	byKey := map[key][]*record{}
	for _, r := range recs {
		k := key{r.replica, r.path}
		byKey[k] = append(byKey[k], r)
	}
	for k, rs := range byKey {
		sort.Slice(rs, func(i, j int) bool { return rs[i].sent.Before(rs[j].sent) })
		es := audits[k.rep][k.path]
		for i, r := range rs {
			if i >= len(es) || (es[i].Status != 0 && es[i].Status != r.status) {
				missing++
				continue
			}
			r.reason = es[i].Reason
			joined++
		}
	}
	return joined, missing
}

// logLinesAround returns up to n lines of a gateway's log within ±d of t
// whose level is not info, or that mention redis, replay or breaker.
func logLinesAround(path string, t time.Time, d time.Duration, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{"(" + err.Error() + ")"}
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() && len(out) < n {
		var e struct {
			TS    float64 `json:"ts"`
			Level string  `json:"level"`
		}
		if json.Unmarshal(s.Bytes(), &e) != nil {
			continue
		}
		at := unixFloat(e.TS)
		if at.Before(t.Add(-d)) || at.After(t.Add(d)) {
			continue
		}
		l := strings.ToLower(s.Text())
		if e.Level != "info" || strings.Contains(l, "redis") || strings.Contains(l, "replay") || strings.Contains(l, "breaker") {
			out = append(out, s.Text())
		}
	}
	return out
}

// logDigest counts a gateway log's lines above info by level, logger and
// message.
func logDigest(path string) map[string]int {
	out := map[string]int{}
	f, err := os.Open(path)
	if err != nil {
		out["(unreadable: "+err.Error()+")"]++
		return out
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		var e struct {
			Level  string `json:"level"`
			Logger string `json:"logger"`
			Msg    string `json:"msg"`
		}
		if json.Unmarshal(s.Bytes(), &e) != nil || e.Level == "info" || e.Level == "debug" {
			continue
		}
		out[fmt.Sprintf("%-5s %s: %s", e.Level, e.Logger, e.Msg)]++
	}
	return out
}

// unixFloat converts Caddy's ts (Unix seconds with fractions).
func unixFloat(ts float64) time.Time {
	sec, frac := math.Modf(ts)
	return time.Unix(int64(sec), int64(frac*1e9))
}
