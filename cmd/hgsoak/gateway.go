package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// Values the generated config and the driver share.
const (
	audience   = "nhn:kjernejournal"
	scope      = "nhn:kjernejournal/api"
	service    = "kjernejournal"
	regToken   = "soak-registry-token-0123456789"
	denyOrigin = "https://deny.soak.invalid"
	// localOrigin differs from denyOrigin, so a proof is valid on one
	// route only: a replay is always sent to the same route of a replica.
	localOrigin = "https://local.soak.invalid"
)

// routeOrigin is the public_origin (what proofs sign in htu) of a route.
func routeOrigin(route string) string {
	if route == routeDeny {
		return denyOrigin
	}
	return localOrigin
}

// replica is one gateway process: two sites, one per on_store_error mode.
type replica struct {
	index     int
	admin     string
	sites     map[string]string // route -> host:port
	logPath   string            // Caddy's own log, JSON
	auditPath string            // the helseid audit log, JSON
	proc      *gatewayproc.Process
}

// replicaConfig is what the generated Caddyfile depends on.
type replicaConfig struct {
	Admin, LogPath, AuditPath string
	DenyAddr, LocalAddr       string
	Issuer, JWKSURL           string
	Registry                  string
	RedisAddr                 string
	Upstream                  string
}

// renderCaddyfile returns a replica's Caddyfile.
//
// The two routes use different key_prefixes (the same on both replicas):
// each mode then has its own replay records and its own epoch marker in
// Redis, so what the deny route measures after a Redis loss (its refusals
// and its recovery time) is its own store's doing, not helped by the local
// route's traffic having noticed the loss first, and the reverse. Replicas
// share everything, as production replicas do; that is what the replays
// test.
//
// Timings: the proof window stays at its defaults (dpop_max_age 15 s,
// dpop_future_skew 5 s), since the replay store's recovery is measured in
// it. The membership TTLs are short (cache_ttl and negative_ttl 5 s,
// stale_for 20 s) so that a registry outage of the schedule's length runs
// through fresh, stale and unavailable answers; timeout 1 s so that a
// hanging registry costs a request a second, not the default 2.
func renderCaddyfile(c replicaConfig) string {
	var b strings.Builder
	b.WriteString(gatewayproc.GlobalOptions(c.Admin, c.LogPath, c.AuditPath))
	for _, s := range []struct{ route, addr string }{{routeDeny, c.DenyAddr}, {routeLocal, c.LocalAddr}} {
		fmt.Fprintf(&b, `
# on_store_error %[1]s
http://:%[2]s {
	helseid {
		issuer %[3]s
		jwks_url %[4]s
		audience %[5]s
		scopes %[6]s
		public_origin %[7]s
		membership %[8]s {
			registry %[9]s
			registry_token {env.MEMBERSHIP_TOKEN}
			org parent
			cache_ttl 5s
			negative_ttl 5s
			stale_for 20s
			timeout 1s
		}
		redis redis://%[10]s {
			key_prefix soak:%[1]s:
		}
		on_store_error %[1]s
	}
	reverse_proxy %[11]s
}
`, s.route, port(s.addr), c.Issuer, c.JWKSURL, audience, scope, routeOrigin(s.route), service,
			c.Registry, c.RedisAddr, c.Upstream)
	}
	return b.String()
}

// startReplica writes the Caddyfile into dir and runs `bin run --config`,
// waiting (at most 30 s) for the admin endpoint and both sites. The replica
// runs in a process group of its own (see child) and is killed by killAll.
func startReplica(ctx context.Context, bin, dir string, index int, c replicaConfig) (*replica, error) {
	sites := map[string]string{routeDeny: c.DenyAddr, routeLocal: c.LocalAddr}
	p, err := gatewayproc.Start(ctx, gatewayproc.Options{
		Name: fmt.Sprintf("replica %d", index), Bin: bin, Dir: dir,
		Caddyfile: renderCaddyfile(c), ConfigPath: filepath.Join(dir, fmt.Sprintf("Caddyfile.r%d", index)),
		OutPath: filepath.Join(dir, fmt.Sprintf("r%d.out", index)), LogPath: c.LogPath,
		Home: filepath.Join(dir, fmt.Sprintf("home-r%d", index)), Env: []string{"MEMBERSHIP_TOKEN=" + regToken},
		Admin: c.Admin, Addrs: []string{c.DenyAddr, c.LocalAddr}, OwnGroup: true,
	})
	if err != nil {
		return nil, err
	}
	register(p.Kill)
	return &replica{index: index, admin: c.Admin, logPath: c.LogPath, auditPath: c.AuditPath, proc: p, sites: sites}, nil
}
