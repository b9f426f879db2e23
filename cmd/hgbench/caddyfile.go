package main

import (
	"fmt"
	"strings"

	"github.com/helsegate/helsegate/internal/devkit/gatewayproc"
)

// Values the generated gateway config and the load generator share.
const (
	// benchPath is the path of every request; proofs sign publicOrigin+benchPath.
	benchPath = "/fhir/R4/Patient/example"
	// publicOrigin is what clients sign in htu, as behind a TLS terminator.
	publicOrigin = "https://kjernejournal.bench.invalid"
	audience     = "nhn:kjernejournal"
	scope        = "nhn:kjernejournal/api"
	service      = "kjernejournal"
	memberOrg    = "917897468"
	// dpopMaxAge is far longer than production's 15 s. Proofs are signed
	// before a pair and used by its plain run and then its gateway run, and
	// the replay keys of a configuration must all outlive its last run, so
	// that their count checks the replay store exactly. It sets only the TTL
	// of the replay keys (Redis memory), not the work per request.
	dpopMaxAge = "10m"
)

// gatewayConfig is everything the generated Caddyfile depends on.
type gatewayConfig struct {
	Admin         string // host:port of the admin endpoint (pprof is under /debug/pprof/)
	LogPath       string // Caddy's own log (errors, start-up)
	AuditPath     string // the helseid audit log, one line per decision, as in production
	Upstream      string // host:port of the fixed-response upstream
	Plain         string // host:port of the plain reverse_proxy site
	Issuer        string
	Registry      string
	RegistryToken string
	RedisAddr     string
	Gateways      []gatewaySite
}

// gatewaySite is one helseid site.
type gatewaySite struct {
	Addr      string // host:port
	DPoP      string // required | optional
	KeyPrefix string // Redis key_prefix, unique per site and run
}

// renderCaddyfile returns the Caddyfile of the benchmark: the plain site and
// the gateway sites, no access log, the audit log to its own file (what a
// production deployment does, docs/operations.md, "Audit log"), and everything else of
// Caddy's at INFO to another file.
//
// Sites are addressed by port only ("http://:port", bound to 127.0.0.1), so
// the same request bytes go to the plain site and the gateway sites.
func renderCaddyfile(c gatewayConfig) string {
	var b strings.Builder
	b.WriteString(gatewayproc.GlobalOptions(c.Admin, c.LogPath, c.AuditPath))
	fmt.Fprintf(&b, `
# (a) plain reverse_proxy: the baseline.
http://:%s {
	reverse_proxy %s
}
`, port(c.Plain), c.Upstream)
	for _, g := range c.Gateways {
		fmt.Fprintf(&b, `
# gateway, dpop %s: warm membership, replay store in real Redis.
http://:%s {
	helseid {
		issuer %s
		audience %s
		single_audience
		scopes %s
		dpop %s
		dpop_max_age %s
		public_origin %s
		membership %s {
			registry %s
			registry_token %s
			org parent
			cache_ttl 30m
		}
		redis redis://%s {
			key_prefix %s
		}
		# A Redis failure must show as errors, not as a silent fallback.
		on_store_error deny
	}
	reverse_proxy %s
}
`, g.DPoP, port(g.Addr), c.Issuer, audience, scope, g.DPoP, dpopMaxAge, publicOrigin,
			service, c.Registry, c.RegistryToken, c.RedisAddr, g.KeyPrefix, c.Upstream)
	}
	return b.String()
}

// port returns the port of host:port.
func port(hostport string) string {
	return hostport[strings.LastIndexByte(hostport, ':')+1:]
}
