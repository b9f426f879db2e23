package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// upstreamBody is the fixed answer of the upstream.
var upstreamBody = []byte(`{"resourceType":"Patient","id":"example","active":true}` + "\n")

// startUpstream starts the fixed-response upstream in this process.
func startUpstream() (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	length := strconv.Itoa(len(upstreamBody))
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			h := w.Header()
			h["Content-Type"] = []string{"application/fhir+json"}
			h["Content-Length"] = []string{length}
			_, _ = w.Write(upstreamBody)
		}),
	}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr().String(), nil
}

// machineLine describes where the numbers come from.
func machineLine(r *redisServer, o options) string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel := "?"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("machine: %s, %d CPUs, Linux %s, %s; Redis %s at %s; %d connections, %d A/B pairs, ~%s per run",
		cpu, runtime.NumCPU(), kernel, runtime.Version(), r.version, r.addr, o.conns, o.pairs, o.runTime)
}

// randHex returns n random bytes in hex.
func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
