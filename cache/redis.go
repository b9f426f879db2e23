package cache

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultKeyPrefix is the key prefix used when RedisConfig.KeyPrefix is empty.
const DefaultKeyPrefix = "helsegate:"

// Client timeouts for the gateway's hot path. A Redis that cannot answer
// within these is treated as down (the breaker then makes it cheap).
const (
	redisDialTimeout  = 500 * time.Millisecond
	redisReadTimeout  = 200 * time.Millisecond
	redisWriteTimeout = 200 * time.Millisecond
	redisMaxRetries   = 1
	redisClientName   = "helsegate"
)

// RedisConfig says how to reach the shared Redis: a single server, a Sentinel
// group or a Cluster. Set either URL or Addrs.
type RedisConfig struct {
	// URL of a single server: redis://[user:password@]host[:port][/db] or
	// rediss://… for TLS. go-redis query options (dial_timeout=…) are honored.
	// A password with reserved characters must be percent-encoded.
	URL string `json:"url,omitempty"`

	// Addrs lists host:port addresses. One address is a single server;
	// several are Cluster seed nodes; with MasterName they are Sentinels.
	Addrs []string `json:"addrs,omitempty"`

	// MasterName selects Sentinel mode: the name of the monitored master.
	// Username and Password then apply to the master and replicas, not to
	// the Sentinels.
	MasterName string `json:"master_name,omitempty"`

	// Username for Redis ACL authentication (Redis 6+).
	Username string `json:"username,omitempty"`

	// Password for AUTH. Never printed in errors.
	Password string `json:"password,omitempty"`

	// DB is the database number. Must be 0 for Cluster. Default 0.
	DB int `json:"db,omitempty"`

	// TLS connects with TLS 1.2 or later, verifying the server certificate.
	TLS bool `json:"tls,omitempty"`

	// KeyPrefix is put before every key. Default "helsegate:".
	KeyPrefix string `json:"key_prefix,omitempty"`
}

// Prefix returns the key prefix, DefaultKeyPrefix when none is set.
func (c RedisConfig) Prefix() string {
	if c.KeyPrefix == "" {
		return DefaultKeyPrefix
	}
	return c.KeyPrefix
}

// PoolKey returns a stable identity of the connection settings, so that one
// client can be shared by every site and config generation that uses the
// same Redis. It is a SHA-256 digest: the password never appears in a map
// key in clear. KeyPrefix is not part of it (a client serves any prefix) and
// the order of Addrs does not matter.
func (c RedisConfig) PoolKey() string {
	addrs := slices.Clone(c.Addrs)
	slices.Sort(addrs)
	identity, _ := json.Marshal([]any{c.URL, addrs, c.MasterName, c.Username, c.Password, c.DB, c.TLS})
	sum := sha256.Sum256(identity)
	return "redis:" + hex.EncodeToString(sum[:])
}

// UniversalOptions validates the configuration and returns options for
// redis.NewUniversalClient, with timeouts short enough for a request path.
// It does no network I/O. No error it returns contains the password.
func (c RedisConfig) UniversalOptions() (*redis.UniversalOptions, error) {
	var (
		o   *redis.UniversalOptions
		err error
	)
	switch {
	case c.URL != "" && len(c.Addrs) > 0:
		err = errors.New("set either url or addrs, not both")
	case c.URL != "":
		o, err = c.fromURL()
	case len(c.Addrs) > 0:
		o, err = c.fromAddrs()
	default:
		err = errors.New("url or addrs is required")
	}
	if err != nil {
		return nil, c.redact(err)
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = redisDialTimeout
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = redisReadTimeout
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = redisWriteTimeout
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = redisMaxRetries
	}
	if o.ClientName == "" {
		o.ClientName = redisClientName
	}
	// One dial attempt per command: retries belong to the breaker, not to
	// the request that happens to be waiting (go-redis defaults to 5).
	o.DialerRetries = 1
	// Honor the caller's deadline and cancellation (the per-call timeout of
	// the replay store, a client that went away).
	o.ContextTimeoutEnabled = true
	return o, nil
}

// fromAddrs builds options for a single server, Sentinel or Cluster.
func (c RedisConfig) fromAddrs() (*redis.UniversalOptions, error) {
	for i, a := range c.Addrs {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("addrs[%d] %q is not host:port", i, a)
		}
	}
	if c.DB < 0 {
		return nil, fmt.Errorf("db %d is negative", c.DB)
	}
	if c.MasterName == "" && len(c.Addrs) > 1 && c.DB != 0 {
		return nil, errors.New("db must be 0 with several addrs (Redis Cluster has only db 0)")
	}
	o := &redis.UniversalOptions{
		Addrs:      slices.Clone(c.Addrs),
		MasterName: c.MasterName,
		Username:   c.Username,
		Password:   c.Password,
		DB:         c.DB,
	}
	if c.TLS {
		// ServerName is left empty: the TLS dialer takes it from each address.
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return o, nil
}

// fromURL builds options for the single server named by a redis:// or
// rediss:// URL. Errors from url.Parse are not passed on: they quote the
// whole URL, password included.
func (c RedisConfig) fromURL() (*redis.UniversalOptions, error) {
	if c.MasterName != "" {
		return nil, errors.New("master_name needs addrs (the Sentinel addresses), not url")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, errors.New("url is not a valid URL (percent-encode reserved characters in the password)")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, errors.New("url must start with redis:// or rediss://")
	}
	if u.Opaque != "" || u.Host == "" {
		return nil, errors.New("url has no host")
	}
	if strings.Contains(u.Path+u.RawQuery+u.Fragment, "@") {
		// "redis://:pa/ss@host": an unencoded '/', '?' or '#' in the
		// password ended the authority early, and the rest would be
		// misread (and quoted in errors) as path, query or fragment.
		return nil, errors.New("url has an '@' after the host: percent-encode reserved characters in the password")
	}
	if strings.Contains(u.Host, ",") {
		return nil, errors.New("url names several hosts: list them under addrs (with master_name for Sentinel)")
	}
	so, err := redis.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if (so.Username != "" && c.Username != "") || (so.Password != "" && c.Password != "") {
		return nil, errors.New("credentials are set both in url and in username/password")
	}
	if so.DB != 0 && c.DB != 0 && so.DB != c.DB {
		return nil, errors.New("db is set both in url and in db, differently")
	}
	if c.Username != "" {
		so.Username = c.Username
	}
	if c.Password != "" {
		so.Password = c.Password
	}
	if c.DB != 0 {
		so.DB = c.DB
	}
	if c.TLS && so.TLSConfig == nil {
		so.TLSConfig = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	return fromOptions(so), nil
}

// fromOptions carries what redis.ParseURL can set into UniversalOptions.
func fromOptions(so *redis.Options) *redis.UniversalOptions {
	return &redis.UniversalOptions{
		Addrs:                   []string{so.Addr},
		ClientName:              so.ClientName,
		DB:                      so.DB,
		Protocol:                so.Protocol,
		Username:                so.Username,
		Password:                so.Password,
		MaxRetries:              so.MaxRetries,
		MinRetryBackoff:         so.MinRetryBackoff,
		MaxRetryBackoff:         so.MaxRetryBackoff,
		DialTimeout:             so.DialTimeout,
		ReadTimeout:             so.ReadTimeout,
		WriteTimeout:            so.WriteTimeout,
		PoolFIFO:                so.PoolFIFO,
		PoolSize:                so.PoolSize,
		MaxConcurrentDials:      so.MaxConcurrentDials,
		PoolTimeout:             so.PoolTimeout,
		MinIdleConns:            so.MinIdleConns,
		MaxIdleConns:            so.MaxIdleConns,
		MaxActiveConns:          so.MaxActiveConns,
		ConnMaxIdleTime:         so.ConnMaxIdleTime,
		ConnMaxLifetime:         so.ConnMaxLifetime,
		ConnMaxLifetimeJitter:   so.ConnMaxLifetimeJitter,
		PipelinePoolSize:        so.PipelinePoolSize,
		PipelineReadBufferSize:  so.PipelineReadBufferSize,
		PipelineWriteBufferSize: so.PipelineWriteBufferSize,
		TLSConfig:               so.TLSConfig,
	}
}

// Redact returns err with every form of the password removed (see redact),
// for errors of the client made from this configuration.
func (c RedisConfig) Redact(err error) error {
	if err == nil {
		return nil
	}
	return c.redact(err)
}

// Secrets returns every form of the password this configuration holds (the
// Password field and the URL's userinfo, raw and decoded), for redacting
// text that the client made from it may write, such as its log lines. Empty
// without a password.
func (c RedisConfig) Secrets() []string { return c.secrets() }

// redact prefixes err for the operator and removes every form of the
// password it can know: the Password field and the userinfo of the URL,
// raw and decoded, even when the URL does not parse.
func (c RedisConfig) redact(err error) error {
	msg := err.Error()
	for _, secret := range c.secrets() {
		msg = strings.ReplaceAll(msg, secret, "[redacted]")
	}
	return errors.New("cache: redis: " + msg)
}

// secrets lists the strings that must not appear in an error.
func (c RedisConfig) secrets() []string {
	var s []string
	add := func(v string) {
		if v != "" {
			s = append(s, v)
			if d, err := url.PathUnescape(v); err == nil && d != v {
				s = append(s, d)
			}
		}
	}
	add(c.Password)
	if _, rest, ok := strings.Cut(c.URL, "://"); ok {
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			userinfo := rest[:at]
			if _, pw, ok := strings.Cut(userinfo, ":"); ok {
				add(pw)
			} else {
				add(userinfo) // "redis://secret@host" is read as a password by some tools
			}
		}
	}
	return s
}
