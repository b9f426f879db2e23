package main

import (
	"strings"
	"testing"
)

func TestRenderCaddyfile(t *testing.T) {
	c := gatewayConfig{
		Admin: "127.0.0.1:2999", LogPath: "/tmp/x/caddy.log", AuditPath: "/tmp/x/audit.log",
		Upstream: "127.0.0.1:9000", Plain: "127.0.0.1:9001", Issuer: "http://127.0.0.1:9002",
		Registry: "http://127.0.0.1:9003", RegistryToken: "tok", RedisAddr: "127.0.0.1:6379",
		Gateways: []gatewaySite{
			{Addr: "127.0.0.1:9004", DPoP: "required", KeyPrefix: "hgbench:ab:es256:"},
			{Addr: "127.0.0.1:9005", DPoP: "optional", KeyPrefix: "hgbench:ab:bearer:"},
		},
	}
	got := renderCaddyfile(c)
	for _, want := range []string{
		"admin 127.0.0.1:2999",
		"http://:9001 {\n\treverse_proxy 127.0.0.1:9000\n}",
		"http://:9004 {", "http://:9005 {",
		"dpop required", "dpop optional",
		"key_prefix hgbench:ab:es256:", "key_prefix hgbench:ab:bearer:",
		"redis redis://127.0.0.1:6379 {",
		"public_origin " + publicOrigin,
		"registry http://127.0.0.1:9003",
		"include http.handlers.helseid.audit",
		"output file /tmp/x/audit.log",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Caddyfile lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "helseid {") != 2 {
		t.Errorf("want two helseid sites:\n%s", got)
	}
	if strings.Count(got, "{") != strings.Count(got, "}") {
		t.Errorf("unbalanced braces:\n%s", got)
	}
	// No access log: no site has a log directive (only the global options do).
	_, sites, _ := strings.Cut(got, "\n}\n")
	if strings.Contains(sites, "\tlog") {
		t.Errorf("a site logs its requests:\n%s", sites)
	}
}
