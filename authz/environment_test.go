package authz

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

func TestCheckEnvironment(t *testing.T) {
	for _, tc := range []struct {
		env  Environment
		url  string
		fail bool
	}{
		{EnvProduction, ProductionIssuer, false},
		{EnvProduction, TestIssuer, true},
		{EnvProduction, "https://HELSEID-STS.TEST.NHN.NO.", true},
		{EnvProduction, "https://helseid-ttt.test.nhn.no", true},
		{EnvProduction, "https://helseid-sts.utvikling.nhn.no/", true},
		{EnvProduction, "https://helseid-sts.qa.nhn.no", true},
		{EnvProduction, TestIssuer + "/.well-known/openid-configuration/jwks", true},
		{EnvProduction, "http://127.0.0.1:8081", false},
		{EnvTest, TestIssuer, false},
		{EnvTest, "https://helseid-ttt.test.nhn.no", false},
		{EnvTest, ProductionIssuer, true},
		{EnvTest, "https://Helseid-Sts.Nhn.No/", true},
		{EnvTest, "http://127.0.0.1:8081", false},
		{EnvNone, ProductionIssuer, false},
		{EnvNone, TestIssuer, false},
		{"staging", TestIssuer, true},
	} {
		t.Run(string(tc.env)+" "+tc.url, func(t *testing.T) {
			err := CheckEnvironment(tc.env, "issuer", tc.url)
			if (err != nil) != tc.fail {
				t.Fatalf("CheckEnvironment(%q, %q) = %v, want failure %v", tc.env, tc.url, err, tc.fail)
			}
		})
	}
}

func TestConfigValidateEnvironment(t *testing.T) {
	base := Config{Issuer: TestIssuer, Audience: "nhn:kjernejournal", Environment: EnvProduction}
	if err := base.Validate(); err == nil || !strings.Contains(err.Error(), "production") {
		t.Errorf("production config with the test issuer: %v", err)
	}
	base.Issuer = ProductionIssuer
	if err := base.Validate(); err != nil {
		t.Errorf("production config with the production issuer: %v", err)
	}
	base.JWKSURL = TestIssuer + "/.well-known/openid-configuration/jwks"
	if err := base.Validate(); err == nil || !strings.Contains(err.Error(), "jwks_url") {
		t.Errorf("production config with the test JWKS: %v", err)
	}
	base = Config{Issuer: ProductionIssuer, Audience: "nhn:kjernejournal", Environment: EnvTest}
	if err := base.Validate(); err == nil {
		t.Error("test config with the production issuer: no error")
	}
}

// HelseID's production discovery lists a non-standard expired_jwks_uri: the
// retired keys. A token signed with one of them is refused as an unknown
// key, and that URL is never fetched, not even on an unknown kid.
func TestIssuerKeysNeverUseExpiredJWKS(t *testing.T) {
	testKeys(t)
	key := func(kid string) jwk.Set {
		k, err := jwk.FromRaw(issuerPriv.Public())
		if err != nil {
			t.Fatal(err)
		}
		_ = k.Set(jwk.KeyIDKey, kid)
		set := jwk.NewSet()
		_ = set.AddKey(k)
		return set
	}
	var expiredHits atomic.Int64
	var srv *httptest.Server
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{
			"issuer":           srv.URL,
			"jwks_uri":         srv.URL + "/jwks",
			"expired_jwks_uri": srv.URL + "/connect/expiredjwks",
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(key("LIVE"))
	})
	mux.HandleFunc("/connect/expiredjwks", func(w http.ResponseWriter, _ *http.Request) {
		expiredHits.Add(1)
		_ = json.NewEncoder(w).Encode(key("RETIRED"))
	})
	srv = httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	k := NewIssuerKeys(ctx, srv.URL, "", srv.Client(), &testClock{now: testNow}, nil)
	if _, err := k.Key(context.Background(), "LIVE"); err != nil {
		t.Fatalf("the live key: %v", err)
	}
	if _, err := k.Key(context.Background(), "RETIRED"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("a retired key's kid: want ErrUnknownKey, got %v", err)
	}
	if n := expiredHits.Load(); n != 0 {
		t.Errorf("expired_jwks_uri was fetched %d times", n)
	}
}
