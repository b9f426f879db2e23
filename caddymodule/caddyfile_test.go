package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/helsegate/helsegate/cache"
)

func parse(t *testing.T, input string) (*Handler, error) {
	t.Helper()
	d := caddyfile.NewTestDispenser(input)
	h := new(Handler)
	err := h.UnmarshalCaddyfile(d)
	return h, err
}

func TestCaddyfileEverySubdirective(t *testing.T) {
	h, err := parse(t, `helseid {
		issuer https://helseid-sts.test.nhn.no
		jwks_url https://helseid-sts.test.nhn.no/.well-known/openid-configuration/jwks
		audience nhn:kjernejournal
		single_audience
		scopes nhn:kjernejournal/api nhn:kjernejournal/tillitsrammeverk
		token_types at+jwt
		algorithms RS256 PS256
		clock_skew 3s
		dpop optional
		dpop_algorithms ES256 RS256
		dpop_max_age 30s
		dpop_future_skew 2s
		dpop_nonce 0123456789abcdef0123
		public_origin https://kj.helsenett.no
		token_kind user
		min_security_level 4
		require_hpr
		redis redis://127.0.0.1:6379/2 {
			key_prefix hg:
			tls
		}
		on_store_error deny
		forward_token off
		route kjernejournal-pjd
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := Handler{
		Issuer:           "https://helseid-sts.test.nhn.no",
		JWKSURL:          "https://helseid-sts.test.nhn.no/.well-known/openid-configuration/jwks",
		Audience:         "nhn:kjernejournal",
		SingleAudience:   true,
		Scopes:           []string{"nhn:kjernejournal/api", "nhn:kjernejournal/tillitsrammeverk"},
		TokenTypes:       []string{"at+jwt"},
		Algorithms:       []string{"RS256", "PS256"},
		ClockSkew:        caddy.Duration(3 * time.Second),
		DPoP:             "optional",
		DPoPAlgorithms:   []string{"ES256", "RS256"},
		DPoPMaxAge:       caddy.Duration(30 * time.Second),
		DPoPFutureSkew:   caddy.Duration(2 * time.Second),
		DPoPNonce:        "0123456789abcdef0123",
		PublicOrigin:     "https://kj.helsenett.no",
		TokenKind:        "user",
		MinSecurityLevel: 4,
		RequireHPR:       true,
		Redis:            &cache.RedisConfig{URL: "redis://127.0.0.1:6379/2", KeyPrefix: "hg:", TLS: true},
		OnStoreError:     "deny",
		StripToken:       true,
		Route:            "kjernejournal-pjd",
	}
	got, _ := json.Marshal(h)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Fatalf("parsed\n got %s\nwant %s", got, exp)
	}
}

func TestCaddyfileRedisBlock(t *testing.T) {
	h, err := parse(t, `helseid {
		issuer https://helseid-sts.nhn.no
		audience nhn:kjernejournal
		redis {
			addrs 10.0.0.1:26379 10.0.0.2:26379
			master_name mymaster
			username gw
			password {env.REDIS_PASSWORD}
			db 1
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	r := h.Redis
	if len(r.Addrs) != 2 || r.MasterName != "mymaster" || r.Username != "gw" || r.Password != "{env.REDIS_PASSWORD}" || r.DB != 1 {
		t.Fatalf("redis block parsed as %+v", r)
	}
}

func TestCaddyfileErrors(t *testing.T) {
	// inBlock is a helseid block with issuer and audience, then body.
	inBlock := func(body string) string {
		return "helseid {\n issuer https://helseid-sts.nhn.no\n audience nhn:kjernejournal\n" + body + "}"
	}
	cases := []struct {
		name, input, want string
	}{
		{"argument on the directive", "helseid extra {\n issuer https://x.example\n audience a\n}", "wrong argument count"},
		{"unknown subdirective", inBlock(" colour blue\n"), `unknown subdirective "colour"`},
		{"duplicate subdirective", inBlock(" audience x\n"), `duplicate subdirective "audience"`},
		{"issuer missing value", "helseid {\n issuer\n audience a\n}", "wrong argument count"},
		{"jwks_url missing value", inBlock(" jwks_url\n"), "wrong argument count"},
		{"issuer not https", "helseid {\n issuer http://helseid-sts.nhn.no\n audience a\n}", "https"},
		{"unknown algorithm", inBlock(" algorithms RS256 EdDSA\n"), `unknown algorithm "EdDSA"`},
		{"none algorithm", inBlock(" dpop_algorithms none\n"), `"none" is never accepted`},
		{"hmac algorithm", inBlock(" algorithms HS256\n"), "HMAC"},
		{"none access-token algorithm", inBlock(" algorithms RS256 none\n"), `"none" is never accepted`},
		{"hmac proof algorithm", inBlock(" dpop_algorithms ES256 HS512\n"), "HMAC"},
		{"bad duration", inBlock(" clock_skew soon\n"), `clock_skew must be a positive duration`},
		{"negative duration", inBlock(" dpop_max_age -5s\n"), `dpop_max_age must be a positive duration`},
		{"dpop mode", inBlock(" dpop sometimes\n"), "dpop must be required or optional"},
		{"token kind", inBlock(" token_kind robot\n"), "token_kind must be user or machine or any"},
		{"security level", inBlock(" min_security_level 5\n"), "min_security_level must be 1, 2, 3 or 4"},
		{"flag with argument", inBlock(" require_hpr yes\n"), "wrong argument count"},
		{"single_audience with argument", inBlock(" single_audience yes\n"), "wrong argument count"},
		{"short nonce secret", inBlock(" dpop_nonce abc\n"), "at least 16 characters"},
		{"public origin with path", inBlock(" public_origin https://a.example/x\n"), "public_origin must be scheme://host"},
		{"jwks over http", inBlock(" jwks_url http://keys.example/jwks\n"), "https"},
		{"store error mode", inBlock(" on_store_error maybe\n"), "on_store_error must be local or deny"},
		{"store error mode empty", inBlock(" on_store_error \"\"\n"), "on_store_error needs a value"},
		{"forward token", inBlock(" forward_token maybe\n"), "forward_token must be on or off"},
		{"forward token placeholder", inBlock(" forward_token {env.FORWARD}\n"), "not a runtime placeholder"},
		{"redis extra argument", inBlock(" redis redis://127.0.0.1:6379 redis://127.0.0.2:6379\n"), "wrong argument count"},
		{"redis url and addrs", inBlock(" redis redis://127.0.0.1:6379 {\n addrs 127.0.0.2:6379\n }\n"), "a URL or addrs, not both"},
		{"redis bad addr", inBlock(" redis {\n addrs 127.0.0.1\n }\n"), "redis"},
		{"redis without target", inBlock(" redis {\n db 1\n }\n"), "redis needs a URL or addrs"},
		{"redis bad url", inBlock(" redis mysql://x\n"), "redis"},
		{"redis unknown option", inBlock(" redis redis://127.0.0.1 {\n pool 3\n }\n"), `unknown redis option "pool"`},
		{"redis duplicate option", inBlock(" redis redis://127.0.0.1 {\n tls\n tls\n }\n"), `duplicate redis option "tls"`},
		{"redis bad db", inBlock(" redis {\n addrs 127.0.0.1:6379\n db x\n }\n"), "redis db must be"},
		{"scopes without value", inBlock(" scopes\n"), "wrong argument count"},
		{"route without value", inBlock(" route\n"), "wrong argument count"},
		{"route with two values", inBlock(" route a b\n"), "wrong argument count"},
		{"route is a path", inBlock(" route /kjernejournal\n"), "never a path"},
		{"route is a placeholder", inBlock(" route {env.ROUTE}\n"), "never a path"},
		{"route too long", inBlock(" route " + strings.Repeat("r", 65) + "\n"), "1 to 64"},
		{"attest mode", inBlock(" attest always\n"), "attest must be required or optional"},
		{"attest without value", inBlock(" attest\n"), "wrong argument count"},
		{"attest twice", inBlock(" attest required\n attest optional\n"), `duplicate subdirective "attest"`},
		{"attest_max_age bad", inBlock(" attest required\n attest_max_age an-hour\n"), "attest_max_age must be a positive duration"},
		{"attest_max_age zero", inBlock(" attest required\n attest_max_age 0s\n"), "attest_max_age must be a positive duration"},
		{"attest_max_age two values", inBlock(" attest required\n attest_max_age 5m 10m\n"), "wrong argument count"},
		{"purposes without value", inBlock(" attest required\n purposes\n"), "wrong argument count"},
		{"purposes twice the same", inBlock(" attest required\n purposes BTG ETREAT BTG\n"), `"BTG" is named twice`},
		{"purposes not a code", inBlock(" attest required\n purposes TREAT B/TG\n"), `"B/TG" is not a purpose_of_use code`},
		{"attest_max_age without attest", inBlock(" attest_max_age 5m\n"), "need attest required or optional"},
		{"purposes without attest", inBlock(" purposes BTG\n"), "need attest required or optional"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.input)
			if err == nil {
				t.Fatalf("want error %q, got none", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error with %q, got %v", tc.want, err)
			}
			// Every error names the file and line (the test dispenser's file is "Testfile").
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Fatalf("error does not name file and line: %v", err)
			}
		})
	}
}

func TestCaddyfileAttest(t *testing.T) {
	for _, tc := range []struct {
		body     string
		mode     string
		maxAge   time.Duration
		purposes []string
	}{
		{" attest required\n", "required", 0, nil},
		{" attest optional\n attest_max_age 15m\n", "optional", 15 * time.Minute, nil},
		{" attest required\n purposes ETREAT BTG\n", "required", 0, []string{"ETREAT", "BTG"}},
		{" attest {env.ATTEST}\n purposes {env.PURPOSES}\n", "{env.ATTEST}", 0, []string{"{env.PURPOSES}"}},
		{"", "", 0, nil},
	} {
		h, err := parse(t, "helseid {\n issuer https://x.example\n audience a\n"+tc.body+"}")
		if err != nil {
			t.Fatalf("%q: %v", tc.body, err)
		}
		if h.Attest != tc.mode || time.Duration(h.AttestMaxAge) != tc.maxAge || strings.Join(h.Purposes, " ") != strings.Join(tc.purposes, " ") {
			t.Errorf("%q parsed as %q %v %q", tc.body, h.Attest, time.Duration(h.AttestMaxAge), h.Purposes)
		}
	}
}

func TestCaddyfileRedisNone(t *testing.T) {
	h, err := parse(t, "helseid {\n issuer https://x.example\n audience a\n redis none\n}")
	if err != nil || h.Redis != nil {
		t.Fatalf("redis none must mean no redis: %+v %v", h.Redis, err)
	}
	if _, err := parse(t, "helseid {\n issuer https://x.example\n audience a\n redis none {\n tls\n }\n}"); err == nil {
		t.Fatal("redis none with options must be refused")
	}
}

func TestCaddyfileRequired(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{"helseid {\n audience a\n}", "issuer is required"},
		{"helseid {\n issuer https://x.example\n}", "audience is required"},
	} {
		_, err := parse(t, tc.input)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Testfile:") {
			t.Fatalf("want %q with file and line, got %v", tc.want, err)
		}
	}
}

func TestCaddyfilePlaceholdersDeferred(t *testing.T) {
	// Values with placeholders are checked at Provision, once resolved.
	_, err := parse(t, "helseid {\n issuer {env.HELSEID_ISSUER}\n audience {env.AUD}\n public_origin {env.ORIGIN}\n}")
	if err != nil {
		t.Fatal(err)
	}
}

func TestCaddyfileMembership(t *testing.T) {
	h, err := parse(t, `helseid {
		issuer https://helseid-sts.nhn.no
		audience nhn:kjernejournal
		membership kjernejournal {
			registry https://medlem.helsenett.no
			registry_token {env.REGISTRY_TOKEN}
			org both
			cache_ttl 10m
			negative_ttl 30s
			stale_for 2h
			timeout 1s
		}
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := MembershipConfig{Service: "kjernejournal", Registry: "https://medlem.helsenett.no", RegistryToken: "{env.REGISTRY_TOKEN}",
		Org: "both", CacheTTL: caddy.Duration(10 * time.Minute), NegativeTTL: caddy.Duration(30 * time.Second),
		StaleFor: caddy.Duration(2 * time.Hour), Timeout: caddy.Duration(time.Second)}
	if *h.Membership != want {
		t.Fatalf("got %+v\nwant %+v", *h.Membership, want)
	}
	for _, input := range []string{"registry file /etc/members.json", "file /etc/members.json"} {
		h, err := parse(t, "helseid {\n issuer https://x.example\n audience a\n membership kj {\n "+input+"\n }\n}")
		if err != nil || h.Membership.File != "/etc/members.json" || h.Membership.Registry != "" {
			t.Fatalf("%s: %+v %v", input, h.Membership, err)
		}
	}
}

func TestCaddyfileMembershipErrors(t *testing.T) {
	for _, tc := range []struct{ name, block, want string }{
		{"no service", "membership {\n registry https://r.example\n }", "wrong argument count"},
		{"no source", "membership kj {\n org parent\n }", "membership needs a registry <url> or a file <path>"},
		{"registry and file", "membership kj {\n registry https://r.example\n file /x\n }", `duplicate membership option "file"`},
		{"http registry", "membership kj {\n registry http://r.example\n }", "https"},
		{"org rule", "membership kj {\n registry https://r.example\n org sibling\n }", "org must be parent or child or both"},
		{"org empty", "membership kj {\n registry https://r.example\n org \"\"\n }", "org needs a value"},
		{"bad ttl", "membership kj {\n registry https://r.example\n cache_ttl forever\n }", "cache_ttl must be a positive duration"},
		{"unknown option", "membership kj {\n registry https://r.example\n retries 3\n }", `unknown membership option "retries"`},
		{"registry args", "membership kj {\n registry a b c\n }", "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, "helseid {\n issuer https://x.example\n audience a\n "+tc.block+"\n}")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Testfile:") {
				t.Fatalf("want %q with file and line, got %v", tc.want, err)
			}
		})
	}
}
