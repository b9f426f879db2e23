package authz

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Issuer: testIssuer, Audience: testAudience}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"good", func(c *Config) {}, ""},
		{"issuer missing", func(c *Config) { c.Issuer = "" }, "issuer is required"},
		{"issuer http", func(c *Config) { c.Issuer = "http://helseid-sts.nhn.no" }, "https"},
		{"issuer http loopback", func(c *Config) { c.Issuer = "http://127.0.0.1:9000" }, ""},
		{"jwks http", func(c *Config) { c.JWKSURL = "http://keys.example/jwks" }, "https"},
		{"audience missing", func(c *Config) { c.Audience = "" }, "audience is required"},
		{"alg none", func(c *Config) { c.Algorithms = []string{"none"} }, "never accepted"},
		{"alg HS256", func(c *Config) { c.DPoPAlgorithms = []string{"HS256"} }, "HMAC"},
		{"alg unknown", func(c *Config) { c.Algorithms = []string{"EdDSA"} }, "unknown algorithm"},
		{"dpop mode", func(c *Config) { c.DPoP = "sometimes" }, "dpop"},
		{"token kind", func(c *Config) { c.TokenKind = "robot" }, "token_kind"},
		{"security level", func(c *Config) { c.MinSecurityLevel = 5 }, "min_security_level"},
		{"public origin with path", func(c *Config) { c.PublicOrigin = "https://a.example/x" }, "public_origin"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error with %q, got %v", tc.want, err)
			}
		})
	}
}
