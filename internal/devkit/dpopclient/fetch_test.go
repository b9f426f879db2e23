package dpopclient_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

func TestFetchTokenFromSimulator(t *testing.T) {
	s, err := helseidsim.Start(helseidsim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, alg := range []string{"ES256", "PS256", "RS256"} {
		k := newKey(t, alg)
		tok, err := k.FetchToken(context.Background(), s.TokenEndpoint(), url.Values{"orgnr_parent": {"917897468"}})
		if err != nil {
			t.Fatalf("%s: FetchToken: %v", alg, err)
		}
		msg, err := jws.Parse([]byte(tok))
		if err != nil {
			t.Fatal(err)
		}
		var c struct {
			CNF struct {
				JKT string `json:"jkt"`
			} `json:"cnf"`
		}
		_ = json.Unmarshal(msg.Payload(), &c)
		if c.CNF.JKT != k.Thumbprint() {
			t.Errorf("%s: cnf.jkt = %q, want %q", alg, c.CNF.JKT, k.Thumbprint())
		}
	}
}

// TestFetchTokenNonceRetry uses a loopback stub that demands a nonce first,
// as real HelseID does.
func TestFetchTokenNonceRetry(t *testing.T) {
	calls := 0
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		msg, err := jws.Parse([]byte(r.Header.Get("DPoP")))
		if err != nil {
			t.Errorf("proof: %v", err)
		}
		var c map[string]any
		_ = json.Unmarshal(msg.Payload(), &c)
		if c["htu"] != srv.URL+"/connect/token" || c["htm"] != "POST" {
			t.Errorf("proof claims %v", c)
		}
		if r.FormValue("grant_type") != "client_credentials" || r.FormValue("scope") != "s" {
			t.Errorf("form %v", r.Form)
		}
		w.Header().Set("Content-Type", "application/json")
		if c["nonce"] != "N1" {
			w.Header().Set("DPoP-Nonce", "N1")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"use_dpop_nonce"}`))
			return
		}
		_, _ = w.Write([]byte(`{"access_token":"AT","token_type":"DPoP","expires_in":60}`))
	}))
	defer srv.Close()

	k := newKey(t, "ES256")
	tok, err := k.FetchToken(context.Background(), srv.URL+"/connect/token", url.Values{"scope": {"s"}})
	if err != nil || tok != "AT" || calls != 2 {
		t.Errorf("FetchToken = %q, %v after %d calls", tok, err, calls)
	}
}
