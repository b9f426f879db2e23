package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestBuildRequest(t *testing.T) {
	got := string(buildRequest("DPoP tok", "proof"))
	want := "GET " + benchPath + " HTTP/1.1\r\nHost: kjernejournal.bench.invalid\r\nUser-Agent: hgbench\r\n" +
		"Accept: application/fhir+json\r\nAuthorization: DPoP tok\r\nDPoP: proof\r\n\r\n"
	if got != want {
		t.Errorf("buildRequest =\n%q\nwant\n%q", got, want)
	}
	if got := string(buildRequest("Bearer tok", "")); strings.Contains(got, "DPoP:") || !strings.HasSuffix(got, "Authorization: Bearer tok\r\n\r\n") {
		t.Errorf("Bearer request = %q", got)
	}
}

func TestLoadRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "DPoP bad" {
			// A refusal that also ends the connection: the client reconnects.
			w.Header().Set("Connection", "close")
			http.Error(w, `{"error":"invalid_dpop_proof"}`, http.StatusUnauthorized)
			return
		}
		_, _ = w.Write(upstreamBody)
	}))
	defer srv.Close()

	reqs := [][]byte{buildRequest("DPoP good", "p"), buildRequest("DPoP bad", "p")}
	samples := 0
	l := load{
		addr: strings.TrimPrefix(srv.URL, "http://"), reqs: reqs, n: 20, conns: 3, deadline: 10 * time.Second,
		cpu: func() (cpuSample, error) {
			samples++
			return cpuSample{gateway: int64(samples * 10)}, nil
		},
	}
	r, err := l.run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.done != 20 || len(r.lat) != 20 {
		t.Errorf("done = %d with %d latencies, want 20", r.done, len(r.lat))
	}
	if r.errors() != 10 || r.statuses[http.StatusUnauthorized] != 10 {
		t.Errorf("statuses = %v, want 401 ×10", r.statuses)
	}
	if got := r.describeErrors(); got != "401 ×10" {
		t.Errorf("describeErrors = %q", got)
	}
	if !strings.HasPrefix(r.sample, "401 ") || !strings.Contains(r.sample, "invalid_dpop_proof") {
		t.Errorf("sample = %q", r.sample)
	}
	if samples != 2 || r.cpu.gateway != 10 {
		t.Errorf("cpu read %d times, delta %d; want 2 reads, delta 10", samples, r.cpu.gateway)
	}
	if r.elapsed <= 0 || r.rps() <= 0 {
		t.Errorf("elapsed %v, rps %v", r.elapsed, r.rps())
	}
	for i := 1; i < len(r.lat); i++ {
		if r.lat[i] < r.lat[i-1] {
			t.Fatal("latencies are not sorted")
		}
	}
}

func TestLoadRunCPUErrorSendsNothing(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	l := load{
		addr: strings.TrimPrefix(srv.URL, "http://"), reqs: [][]byte{buildRequest("Bearer x", "")}, n: 5, conns: 2,
		deadline: 10 * time.Second, cpu: func() (cpuSample, error) { return cpuSample{}, errors.New("gone") },
	}
	if _, err := l.run(context.Background()); err == nil {
		t.Fatal("run succeeded without a CPU sample")
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests sent after the CPU sample failed", n)
	}
}
