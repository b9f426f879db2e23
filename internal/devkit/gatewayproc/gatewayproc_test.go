package gatewayproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The tests run this test binary as the process: with fakeEnv set, TestMain
// becomes a fake gateway instead of running the tests.
const fakeEnv = "GATEWAYPROC_FAKE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fake(mode))
	}
	os.Exit(m.Run())
}

// fake is a stand-in for helsegate: with mode "serve" it answers GET
// /config/ with the file after --config and POST /load on the admin address
// ($FAKE_ADMIN), listens on $FAKE_SITE, writes a JSON log line to stderr and
// one more on SIGINT, then exits. With mode "exit" it exits at once with
// status 3; with "deaf" it never listens.
func fake(mode string) int {
	switch mode {
	case "exit":
		fmt.Fprintln(os.Stderr, "fake: giving up")
		return 3
	case "deaf":
		time.Sleep(time.Minute)
		return 0
	}
	cfg := ""
	for i, a := range os.Args {
		if a == "--config" && i+1 < len(os.Args) {
			cfg = os.Args[i+1]
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config/", func(w http.ResponseWriter, _ *http.Request) {
		b, _ := os.ReadFile(cfg)
		_, _ = w.Write(b)
	})
	mux.HandleFunc("POST /load", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "text/caddyfile" || string(b) == "bad" {
			http.Error(w, "refused", http.StatusBadRequest)
			return
		}
		fmt.Fprintf(os.Stderr, "{\"msg\":\"loaded\",\"home\":%q}\n", os.Getenv("HOME"))
	})
	// SIGINT is caught before anything listens: a Stop that follows the
	// first successful probe must find the handler in place.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt)
	go func() { _ = http.ListenAndServe(os.Getenv("FAKE_ADMIN"), mux) }()
	site, err := net.Listen("tcp", os.Getenv("FAKE_SITE"))
	if err != nil {
		return 4
	}
	defer site.Close()
	fmt.Fprintln(os.Stderr, `{"msg":"started"}`)
	<-stop
	fmt.Fprintln(os.Stderr, `{"msg":"stopped"}`)
	return 0
}

// options starts the fake in mode on fresh addresses.
func options(t *testing.T, mode string) Options {
	t.Helper()
	admin, site := mustAddr(t), mustAddr(t)
	return Options{
		Name: "fake", Bin: os.Args[0], Dir: t.TempDir(), Caddyfile: "the config\n",
		Env:   []string{fakeEnv + "=" + mode, "FAKE_ADMIN=" + admin, "FAKE_SITE=" + site},
		Admin: admin, Addrs: []string{site}, ReadyTimeout: 10 * time.Second,
	}
}

func mustAddr(t *testing.T) string {
	t.Helper()
	a, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestStartLoadStop(t *testing.T) {
	o := options(t, "serve")
	p, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if b, err := os.ReadFile(filepath.Join(o.Dir, "Caddyfile")); err != nil || string(b) != o.Caddyfile {
		t.Errorf("Caddyfile written: %q %v", b, err)
	}
	if err := p.Load("new config"); err != nil {
		t.Errorf("Load: %v", err)
	}
	if err := p.Load("bad"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("Load of a refused config: %v, want the 400", err)
	}
	p.Stop()
	if p.Alive() || p.ExitErr() != nil {
		t.Fatalf("after Stop: alive %v, exit %v; want a clean exit after SIGINT", p.Alive(), p.ExitErr())
	}
	var msgs []string
	for _, e := range p.LogEntries() {
		msgs = append(msgs, fmt.Sprint(e["msg"]))
		if e["msg"] == "loaded" && e["home"] != o.Dir {
			t.Errorf("HOME %v, want the run directory %s", e["home"], o.Dir)
		}
	}
	if strings.Join(msgs, " ") != "started loaded stopped" {
		t.Errorf("log entries %q, want started loaded stopped", msgs)
	}
	if tail := p.LogTail(1); tail != `{"msg":"stopped"}` {
		t.Errorf("LogTail(1) = %q", tail)
	}
}

func TestStartFailures(t *testing.T) {
	for _, tc := range []struct {
		mode, want string
		ready      time.Duration // short only where the timeout is the point
	}{
		{"exit", "fake exited during start: exit status 3", 30 * time.Second},
		{"deaf", "fake not ready after", 500 * time.Millisecond},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			o := options(t, tc.mode)
			o.ReadyTimeout = tc.ready
			_, err := Start(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--- output (") {
				t.Fatalf("Start: %v; want %q and the output's tail", err, tc.want)
			}
			if tc.mode == "exit" && !strings.Contains(err.Error(), "fake: giving up") {
				t.Errorf("the error lacks the process's output: %v", err)
			}
		})
	}
}

func TestStartCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Start(ctx, options(t, "deaf")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Start with a canceled context: %v", err)
	}
}

func TestKillGroup(t *testing.T) {
	o := options(t, "serve")
	o.OwnGroup = true
	p, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	var ee *exec.ExitError
	if p.Alive() || !errors.As(p.ExitErr(), &ee) {
		t.Fatalf("after Kill: alive %v, exit %v", p.Alive(), p.ExitErr())
	}
}

// FreeAddr hands out loopback ports below the kernel's ephemeral range,
// never the same one twice.
func TestFreeAddrBelowEphemeralRange(t *testing.T) {
	lo, hi := belowEphemeral()
	if hi <= lo {
		t.Skip("no /proc/sys/net/ipv4/ip_local_port_range on this system")
	}
	seen := map[string]bool{}
	for range 50 {
		addr, err := FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("FreeAddr() = %q, %v", addr, err)
		}
		p, _ := strconv.Atoi(port)
		if p < lo || p >= hi {
			t.Errorf("port %d outside [%d, %d)", p, lo, hi)
		}
		if seen[addr] {
			t.Errorf("%s handed out twice", addr)
		}
		seen[addr] = true
	}
}
