package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// Sizes of the untimed parts of a configuration.
const (
	warmupRequests    = 5    // one at a time; they fetch the JWKS and the membership
	calibrateRequests = 1000 // sizes the timed runs
	minRunRequests    = 1000
	// runDeadlineFactor bounds a timed run at this many times -run.
	runDeadlineFactor = 10
	registryToken     = "hgbench-registry-token"
)

// bench is one hgbench run: what it started and the knobs every
// configuration shares.
type bench struct {
	o     options
	hz    int64
	redis *redisServer
	gw    *gateway
	plain string // host:port of the plain site
	busy  int    // timed runs during which other processes used more than busyOthers
	// quietBudget is what is left of -quiet-wait.
	quietBudget time.Duration
}

// busyOthers is how many CPUs other processes (Redis included) may use
// during a timed run before the report warns that the machine was busy.
// Redis alone takes about 0.1–0.2 in a gateway run.
const busyOthers = 0.35

// run starts everything, measures every configuration and prints the
// report. It returns the exit code: 0, or 1 when something failed or a run
// had errors.
func run(ctx context.Context, o options) int {
	err := runBench(ctx, o)
	switch {
	case err == nil:
		return 0
	case !errors.Is(err, errFlagged): // already said, above the last line
		fmt.Fprintf(os.Stderr, "hgbench: %v\n", err)
	}
	return 1
}

// errFlagged means the report was printed but a run had errors.
var errFlagged = errors.New("a run had non-200 responses or an unused replay store (marked ! above)")

// runBench sets up the run (Redis, the doubles, the sites and clients) and
// runs the mode -instructions asks for. The run directory is removed at the
// end unless -keep, or a gateway failed.
func runBench(ctx context.Context, o options) (err error) {
	began := time.Now()
	dir, err := os.MkdirTemp("", "hgbench-")
	if err != nil {
		return err
	}
	gatewayTried := false
	defer func() { cleanDir(dir, o.keep, gatewayTried, err) }()
	bin, err := absBin(o.bin)
	if err != nil {
		return err
	}
	b := &bench{o: o, hz: clockTicks(), quietBudget: o.quietWait}
	if b.redis, err = findRedis(ctx, o.redisAddr, o.startRedis, dir); err != nil {
		return err
	}
	defer b.redis.close()
	runPrefix := "hgbench:" + randHex(4) + ":"
	defer b.deleteKeys(runPrefix)
	d, err := startDoubles()
	if err != nil {
		return err
	}
	defer d.close()
	cfg, scenarios, err := b.configure(ctx, dir, runPrefix, d)
	if err != nil {
		return err
	}

	gatewayTried = true
	if o.instructions {
		return b.instructions(ctx, bin, dir, cfg, scenarios)
	}
	return b.cpuTime(ctx, began, bin, dir, cfg, scenarios)
}

// cleanDir removes the run directory, unless -keep, or a gateway was tried
// and the run failed (not by SIGINT, not a flagged report): then its
// Caddyfile and logs are what explains the failure.
func cleanDir(dir string, keep, gatewayTried bool, err error) {
	switch {
	case keep:
	case gatewayTried && err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errFlagged):
		fmt.Fprintf(os.Stderr, "hgbench: Caddyfile and logs kept in %s\n", dir)
	default:
		os.RemoveAll(dir)
	}
}

// absBin is the helsegate binary's absolute path, once it is there.
func absBin(path string) (string, error) {
	bin, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("the helsegate binary: %w (run make build)", err)
	}
	return bin, nil
}

// deleteKeys deletes the run's Redis keys, with a fresh context: the keys
// go even after SIGINT.
func (b *bench) deleteKeys(runPrefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.redis.deleteKeys(ctx, runPrefix+"*"); err != nil {
		fmt.Fprintf(os.Stderr, "hgbench: deleting the run's Redis keys (%s*): %v\n", runPrefix, err)
	}
}

// doubles are what the gateway talks to besides Redis, in this process:
// the fixed-response upstream and the HelseID and registry simulators.
type doubles struct {
	upstream *http.Server
	upAddr   string
	sim      *helseidsim.Server
	reg      *registrysim.Server
}

// startDoubles starts the doubles; on an error it stops those it started.
func startDoubles() (d *doubles, err error) {
	d = &doubles{}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if d.upstream, d.upAddr, err = startUpstream(); err != nil {
		return nil, err
	}
	if d.sim, err = helseidsim.Start(helseidsim.Options{}); err != nil {
		return nil, err
	}
	validFrom := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	d.reg, err = registrysim.Start(registrysim.Options{
		Members: []authz.Authorization{{Organization: memberOrg, Service: service, Member: true, Status: "active", ValidFrom: &validFrom}},
		Token:   registryToken,
	})
	return d, err
}

// close stops the doubles started.
func (d *doubles) close() {
	if d.reg != nil {
		_ = d.reg.Close()
	}
	if d.sim != nil {
		_ = d.sim.Close()
	}
	if d.upstream != nil {
		_ = d.upstream.Close()
	}
}

// configure picks the addresses and renders the gateway's config: the
// plain site and one helseid site per configuration, each with its own
// Redis key prefix (its epoch marker seeded) and a scenario of clients.
func (b *bench) configure(ctx context.Context, dir, runPrefix string, d *doubles) (cfg gatewayConfig, scenarios []*scenario, err error) {
	cfg = gatewayConfig{
		LogPath: filepath.Join(dir, "caddy.log"), AuditPath: filepath.Join(dir, "audit.log"),
		Upstream: d.upAddr, Issuer: d.sim.Issuer(), Registry: d.reg.URL(), RegistryToken: registryToken,
		RedisAddr: b.redis.addr,
	}
	if cfg.Admin, err = gatewayproc.FreeAddr(); err != nil {
		return cfg, nil, err
	}
	if cfg.Plain, err = gatewayproc.FreeAddr(); err != nil {
		return cfg, nil, err
	}
	b.plain = cfg.Plain
	for _, c := range b.o.configs {
		site, err := gatewayproc.FreeAddr()
		if err != nil {
			return cfg, nil, err
		}
		prefix := runPrefix + strings.ToLower(c) + ":"
		if err := b.redis.seedEpoch(ctx, prefix); err != nil {
			return cfg, nil, err
		}
		name, alg, dpop := c, c, "required"
		if c == "bearer" {
			name, alg, dpop = bearerName, "", "optional"
		}
		s, err := newScenario(d.sim, name, alg, site, prefix)
		if err != nil {
			return cfg, nil, err
		}
		s.profiled = len(scenarios) == 0
		scenarios = append(scenarios, s)
		cfg.Gateways = append(cfg.Gateways, gatewaySite{Addr: site, DPoP: dpop, KeyPrefix: prefix})
	}
	return cfg, scenarios, nil
}

// addrs are the plain site and every gateway site, the addresses the
// gateway must accept connections on before it is ready.
func (c gatewayConfig) addrs() []string {
	out := []string{c.Plain}
	for _, g := range c.Gateways {
		out = append(out, g.Addr)
	}
	return out
}

// cpuTime is the CPU-time mode (make bench): the gateway run directly,
// every configuration measured, and the report.
func (b *bench) cpuTime(ctx context.Context, began time.Time, bin, dir string, cfg gatewayConfig, scenarios []*scenario) (err error) {
	kept := ""
	if b.o.keep {
		kept = ", kept"
	}
	fmt.Fprintf(os.Stderr, "hgbench: starting %s (run directory %s%s)\n", b.o.bin, dir, kept)
	if b.gw, err = startGateway(ctx, launch{}, bin, dir, renderCaddyfile(cfg), cfg.Admin, cfg.LogPath, cfg.addrs()); err != nil {
		return err
	}
	defer b.gw.Stop()

	fmt.Println("per run: CPU = the helsegate process; hgbench = this process (load generator and upstream); others = the rest of the machine, Redis included")
	var rows []summary
	for _, s := range scenarios {
		row, err := b.measure(ctx, s)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		rows = append(rows, row)
	}

	fmt.Println()
	fmt.Printf("hgbench: measured in %s\n", time.Since(began).Round(time.Second))
	fmt.Println(machineLine(b.redis, b.o))
	if flagged := writeReport(os.Stdout, rows, b.busy); flagged {
		return errFlagged
	}
	return nil
}
