package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
	"github.com/helsegate/helsegate/internal/devkit/registrysim"
)

// rig is what the soak runs against: the HelseID and registry simulators,
// each behind a fault proxy, the stand-in upstream, the soak's own Redis and
// the two replicas. close stops what start started, newest first.
type rig struct {
	dir      string
	sim      *helseidsim.Server
	ids      *identities
	reg      *registrysim.Server
	issuer   *faultProxy
	registry *faultProxy
	upstream *httptest.Server
	redis    *redisProc
	reps     []*replica
	closers  []func()
}

// start starts everything, on free loopback ports.
func (rg *rig) start(ctx context.Context, bin string) error {
	if err := rg.startDoubles(); err != nil {
		return err
	}
	rds, err := newRedis(rg.dir)
	if err != nil {
		return err
	}
	if _, err := rds.start(); err != nil {
		return err
	}
	rg.redis = rds
	rg.onClose(rds.kill)
	for i := range 2 {
		if err := rg.startReplica(ctx, bin, i); err != nil {
			return err
		}
	}
	logf("redis %s, issuer %s (proxy %s), registry %s (proxy %s)", rds.addr, rg.sim.Issuer(), rg.issuer.URL(), rg.reg.URL(), rg.registry.URL())
	return nil
}

// startDoubles starts the simulators, each behind a fault proxy, with the
// soak's identities as members, and the upstream.
func (rg *rig) startDoubles() error {
	sim, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		return fmt.Errorf("helseid simulator: %w", err)
	}
	rg.sim = sim
	rg.onClose(func() { _ = sim.Close() })
	ids, memberOrgs, err := newIdentities(sim)
	if err != nil {
		return fmt.Errorf("identities: %w", err)
	}
	rg.ids = ids
	var members []authz.Authorization
	for _, org := range memberOrgs {
		members = append(members, authz.Authorization{Organization: org, Service: service, Member: true, Status: "active"})
	}
	if rg.reg, err = registrysim.Start(registrysim.Options{Members: members, Token: regToken}); err != nil {
		return fmt.Errorf("registry simulator: %w", err)
	}
	rg.onClose(func() { _ = rg.reg.Close() })
	if rg.issuer, err = startFaultProxy("issuer", sim.Issuer()); err != nil {
		return fmt.Errorf("issuer proxy: %w", err)
	}
	rg.onClose(rg.issuer.close)
	if rg.registry, err = startFaultProxy("registry", rg.reg.URL()); err != nil {
		return fmt.Errorf("registry proxy: %w", err)
	}
	rg.onClose(rg.registry.close)
	rg.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("upstream ok\n"))
	}))
	rg.onClose(rg.upstream.Close)
	return nil
}

// startReplica starts replica i on free ports.
func (rg *rig) startReplica(ctx context.Context, bin string, i int) error {
	var addrs [3]string
	for j := range addrs {
		var err error
		if addrs[j], err = gatewayproc.FreeAddr(); err != nil {
			return err
		}
	}
	r, err := startReplica(ctx, bin, rg.dir, i, replicaConfig{
		Admin: addrs[0], DenyAddr: addrs[1], LocalAddr: addrs[2],
		LogPath:   filepath.Join(rg.dir, fmt.Sprintf("r%d.log", i)),
		AuditPath: filepath.Join(rg.dir, fmt.Sprintf("r%d-audit.log", i)),
		// Tokens carry the simulator's own issuer; only the key set is
		// fetched, through the proxy (jwks_url), so the proxy can fail it.
		Issuer: rg.sim.Issuer(), JWKSURL: rg.issuer.URL() + helseidsim.JWKSPath,
		Registry: rg.registry.URL(), RedisAddr: rg.redis.addr, Upstream: rg.upstream.URL,
	})
	if err != nil {
		return err
	}
	rg.onClose(r.proc.Stop)
	rg.reps = append(rg.reps, r)
	logf("replica r%d: pid %d, admin %s, deny %s, local %s", i, r.proc.Pid(), r.admin, r.sites[routeDeny], r.sites[routeLocal])
	return nil
}

// onClose adds f to what close does.
func (rg *rig) onClose(f func()) { rg.closers = append(rg.closers, f) }

// close stops everything started, newest first.
func (rg *rig) close() {
	for i := len(rg.closers) - 1; i >= 0; i-- {
		rg.closers[i]()
	}
}
