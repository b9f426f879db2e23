package cache

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestUniversalOptions(t *testing.T) {
	tests := []struct {
		name  string
		cfg   RedisConfig
		check func(t *testing.T, o *redis.UniversalOptions)
		kind  string // client NewUniversalClient builds: single, cluster
	}{
		{
			name: "url",
			cfg:  RedisConfig{URL: "redis://app:pw@cache.example:6380/2"},
			kind: "single",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				want := []string{"cache.example:6380"}
				if !slices.Equal(o.Addrs, want) || o.Username != "app" || o.Password != "pw" || o.DB != 2 || o.TLSConfig != nil {
					t.Errorf("got addrs %v user %q db %d tls %v", o.Addrs, o.Username, o.DB, o.TLSConfig != nil)
				}
			},
		},
		{
			name: "url default port",
			cfg:  RedisConfig{URL: "redis://cache.example"},
			kind: "single",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				if !slices.Equal(o.Addrs, []string{"cache.example:6379"}) {
					t.Errorf("addrs %v", o.Addrs)
				}
			},
		},
		{
			name: "rediss url",
			cfg:  RedisConfig{URL: "rediss://cache.example:6380"},
			kind: "single",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				checkTLS(t, o, "cache.example")
			},
		},
		{
			name: "url with tls flag",
			cfg:  RedisConfig{URL: "redis://cache.example:6380", TLS: true},
			kind: "single",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				checkTLS(t, o, "cache.example")
			},
		},
		{
			name: "url credentials from fields",
			cfg:  RedisConfig{URL: "redis://cache.example", Username: "app", Password: "pw", DB: 3},
			kind: "single",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				if o.Username != "app" || o.Password != "pw" || o.DB != 3 {
					t.Errorf("user %q db %d", o.Username, o.DB)
				}
			},
		},
		{
			name: "url query options win over defaults",
			cfg:  RedisConfig{URL: "redis://cache.example?dial_timeout=2s&read_timeout=1s"},
			kind: "single",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				if o.DialTimeout != 2*time.Second || o.ReadTimeout != time.Second || o.WriteTimeout != redisWriteTimeout {
					t.Errorf("dial %s read %s write %s", o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
				}
			},
		},
		{
			name: "single addr",
			cfg:  RedisConfig{Addrs: []string{"10.0.0.1:6379"}, Password: "pw", DB: 1},
			kind: "single",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				if !slices.Equal(o.Addrs, []string{"10.0.0.1:6379"}) || o.MasterName != "" || o.DB != 1 || o.Password != "pw" {
					t.Errorf("got %+v", o)
				}
			},
		},
		{
			name: "sentinel",
			cfg:  RedisConfig{Addrs: []string{"s1:26379", "s2:26379", "s3:26379"}, MasterName: "mymaster", Password: "pw"},
			check: func(t *testing.T, o *redis.UniversalOptions) {
				if o.MasterName != "mymaster" || len(o.Addrs) != 3 || o.Password != "pw" || o.SentinelPassword != "" {
					t.Errorf("got master %q addrs %v", o.MasterName, o.Addrs)
				}
			},
		},
		{
			name: "cluster",
			cfg:  RedisConfig{Addrs: []string{"n1:7000", "n2:7000", "n3:7000"}},
			kind: "cluster",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				if o.MasterName != "" || len(o.Addrs) != 3 {
					t.Errorf("got master %q addrs %v", o.MasterName, o.Addrs)
				}
			},
		},
		{
			name: "addrs with tls",
			cfg:  RedisConfig{Addrs: []string{"n1:7000", "n2:7000"}, TLS: true},
			kind: "cluster",
			check: func(t *testing.T, o *redis.UniversalOptions) {
				checkTLS(t, o, "") // the TLS dialer takes the name from each address
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := tt.cfg.UniversalOptions()
			if err != nil {
				t.Fatalf("UniversalOptions: %v", err)
			}
			tt.check(t, o)
			if o.DialTimeout == 0 || o.DialTimeout > 2*time.Second || o.ReadTimeout == 0 || o.WriteTimeout != redisWriteTimeout ||
				o.MaxRetries != redisMaxRetries || o.DialerRetries != 1 || !o.ContextTimeoutEnabled {
				t.Errorf("hot-path settings: dial %s read %s write %s retries %d dial retries %d ctx %v",
					o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.MaxRetries, o.DialerRetries, o.ContextTimeoutEnabled)
			}
			// Building the client does not dial.
			c := redis.NewUniversalClient(o)
			defer c.Close()
			switch c.(type) {
			case *redis.ClusterClient:
				if tt.kind != "cluster" {
					t.Errorf("got a cluster client, want %s", tt.kind)
				}
			case *redis.Client:
				if tt.kind == "cluster" {
					t.Errorf("got a single-node client, want cluster")
				}
			}
		})
	}
}

func TestUniversalOptionsDefaults(t *testing.T) {
	o, err := RedisConfig{Addrs: []string{"h:1"}}.UniversalOptions()
	if err != nil {
		t.Fatal(err)
	}
	if o.DialTimeout != 500*time.Millisecond || o.ReadTimeout != 200*time.Millisecond ||
		o.WriteTimeout != 200*time.Millisecond || o.MaxRetries != 1 {
		t.Errorf("dial %s read %s write %s retries %d", o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.MaxRetries)
	}
}

func checkTLS(t *testing.T, o *redis.UniversalOptions, serverName string) {
	t.Helper()
	if o.TLSConfig == nil {
		t.Fatal("no TLS config")
	}
	if o.TLSConfig.MinVersion != tls.VersionTLS12 || o.TLSConfig.InsecureSkipVerify || o.TLSConfig.ServerName != serverName {
		t.Errorf("TLS min %x skip %v server name %q", o.TLSConfig.MinVersion, o.TLSConfig.InsecureSkipVerify, o.TLSConfig.ServerName)
	}
}

// secret is the password in every bad config below; no error may show it.
const secret = "Zq9-s3cr3t-pw"

func TestUniversalOptionsErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  RedisConfig
		want string // in the error
	}{
		{"nothing", RedisConfig{Password: secret}, "url or addrs is required"},
		{"url and addrs", RedisConfig{URL: "redis://:" + secret + "@h", Addrs: []string{"h:1"}}, "not both"},
		{"bad scheme", RedisConfig{URL: "http://:" + secret + "@h"}, "redis:// or rediss://"},
		{"unix scheme", RedisConfig{URL: "unix://:" + secret + "@/tmp/redis.sock"}, "redis:// or rediss://"},
		{"no scheme", RedisConfig{URL: "u:" + secret + "@h"}, "redis:// or rediss://"},
		{"several hosts", RedisConfig{URL: "redis://:" + secret + "@h1:6379,h2:6379"}, "several hosts"},
		{"bad port", RedisConfig{URL: "redis://:" + secret + "@h:port"}, "not a valid URL"},
		{"bad escape", RedisConfig{URL: "redis://:" + secret + "%zz@h"}, "not a valid URL"},
		{"unencoded slash in password", RedisConfig{URL: "redis://u:Zq9/" + secret + "@h"}, "not a valid URL"},
		{"unencoded hash in password", RedisConfig{URL: "redis://u:" + secret + "#x@h"}, "not a valid URL"},
		{"unencoded slash after digits", RedisConfig{URL: "redis://u:6379/" + secret + "@h"}, "percent-encode"},
		{"unencoded hash after digits", RedisConfig{URL: "redis://u:6379#" + secret + "@h"}, "percent-encode"},
		{"unencoded question mark after digits", RedisConfig{URL: "redis://u:6379?" + secret + "@h"}, "percent-encode"},
		{"bad db in url", RedisConfig{URL: "redis://:" + secret + "@h/abc"}, "invalid database number"},
		{"unknown url option", RedisConfig{URL: "redis://:" + secret + "@h?bogus=1"}, "unexpected option"},
		{"no host", RedisConfig{URL: "redis://:" + secret + "@"}, "no host"},
		{"credentials twice", RedisConfig{URL: "redis://:" + secret + "@h", Password: secret}, "both in url"},
		{"master name with url", RedisConfig{URL: "redis://:" + secret + "@h", MasterName: "m"}, "master_name needs addrs"},
		{"bad addr", RedisConfig{Addrs: []string{"h"}, Password: secret}, `addrs[0] "h" is not host:port`},
		{"empty addr", RedisConfig{Addrs: []string{"h:1", ""}, Password: secret}, "addrs[1]"},
		{"cluster db", RedisConfig{Addrs: []string{"h1:1", "h2:1"}, DB: 1, Password: secret}, "db must be 0"},
		{"negative db", RedisConfig{Addrs: []string{"h1:1"}, DB: -1, Password: secret}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.UniversalOptions()
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not say %q", msg, tt.want)
			}
			if !strings.HasPrefix(msg, "cache: redis: ") {
				t.Errorf("error %q lacks the package prefix", msg)
			}
			if strings.Contains(msg, secret) || strings.Contains(msg, "s3cr3t") {
				t.Errorf("error shows the password: %q", msg)
			}
		})
	}
}

func TestPrefix(t *testing.T) {
	tests := []struct {
		name, prefix, want string
	}{
		{"default", "", "helsegate:"},
		{"set", "gw1:", "gw1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (RedisConfig{KeyPrefix: tt.prefix}).Prefix(); got != tt.want {
				t.Errorf("Prefix() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPoolKey(t *testing.T) {
	base := RedisConfig{Addrs: []string{"a:1", "b:1"}, Username: "u", Password: secret, DB: 0}
	key := base.PoolKey()
	if strings.Contains(key, secret) || len(key) != len("redis:")+64 {
		t.Fatalf("PoolKey() = %q", key)
	}
	with := func(f func(c *RedisConfig)) RedisConfig {
		c := base
		c.Addrs = slices.Clone(base.Addrs)
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  RedisConfig
		same bool
	}{
		{"same config", with(func(c *RedisConfig) {}), true},
		{"addrs in another order", with(func(c *RedisConfig) { c.Addrs = []string{"b:1", "a:1"} }), true},
		{"another key prefix", with(func(c *RedisConfig) { c.KeyPrefix = "x:" }), true},
		{"another password", with(func(c *RedisConfig) { c.Password = "other" }), false},
		{"another user", with(func(c *RedisConfig) { c.Username = "v" }), false},
		{"another addr", with(func(c *RedisConfig) { c.Addrs = []string{"a:1", "c:1"} }), false},
		{"sentinel", with(func(c *RedisConfig) { c.MasterName = "m" }), false},
		{"tls", with(func(c *RedisConfig) { c.TLS = true }), false},
		{"db", with(func(c *RedisConfig) { c.DB = 1 }), false},
		{"url", RedisConfig{URL: "redis://a:1"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cfg.PoolKey() == key; got != tt.same {
				t.Errorf("same key = %v, want %v", got, tt.same)
			}
		})
	}
}
