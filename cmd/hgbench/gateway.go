package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// launch says how the gateway process is started: directly (the zero
// value), or under a wrapper such as valgrind, with more environment and a
// longer start (the zero value: gatewayproc's 30 s).
type launch struct {
	wrapper []string // command and arguments before the helsegate binary
	env     []string // added to the environment
	ready   time.Duration
}

// gateway is the one helsegate process under test.
type gateway struct {
	*gatewayproc.Process
}

// startGateway writes caddyfile into dir and runs `bin run --config` on
// it, waiting until the admin endpoint answers and every site in addrs
// accepts connections. The process gets SIGKILL if hgbench dies.
func startGateway(ctx context.Context, l launch, bin, dir, caddyfile, admin, logPath string, addrs []string) (*gateway, error) {
	p, err := gatewayproc.Start(ctx, gatewayproc.Options{
		Bin: bin, Wrapper: l.wrapper, Env: l.env, Dir: dir, Caddyfile: caddyfile,
		OutPath: filepath.Join(dir, "helsegate.out"), LogPath: logPath,
		Admin: admin, Addrs: addrs, ReadyTimeout: l.ready,
	})
	if err != nil {
		return nil, err
	}
	return &gateway{p}, nil
}

// cpu samples the gateway's utime+stime so far, with hgbench's and the
// machine's.
func (g *gateway) cpu() (cpuSample, error) {
	if !g.Alive() {
		return cpuSample{}, fmt.Errorf("helsegate exited: %v (log: %s)", g.ExitErr(), g.LogPath())
	}
	return sampleCPU(g.Pid())
}

// cpuProfile fetches a CPU profile of seconds from the admin endpoint's
// /debug/pprof/profile into path.
func (g *gateway) cpuProfile(ctx context.Context, seconds int, path string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds+30)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", g.Admin(), seconds), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("pprof: %s: %s", resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// collect makes the gateway run a full garbage collection now, through the
// admin endpoint's heap profile (?gc=1 collects before the profile).
func (g *gateway) collect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.Admin()+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return fmt.Errorf("collection through the admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("collection through the admin endpoint: %s", resp.Status)
	}
	return nil
}
