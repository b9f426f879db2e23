package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// rfc9728Document is an RFC 9728 §2 protected-resource metadata document,
// read strictly: a member the gateway should not send fails the decode.
type rfc9728Document struct {
	Resource                           string   `json:"resource"`
	AuthorizationServers               []string `json:"authorization_servers"`
	ScopesSupported                    []string `json:"scopes_supported"`
	BearerMethodsSupported             []string `json:"bearer_methods_supported"`
	DPoPSigningAlgValuesSupported      []string `json:"dpop_signing_alg_values_supported"`
	DPoPBoundAccessTokensRequired      *bool    `json:"dpop_bound_access_tokens_required"`
	AuthorizationDetailsTypesSupported []string `json:"authorization_details_types_supported"`
}

// checkRFC9728 fetches the document at metadataURL and checks what RFC 9728
// requires of it and of a client reading it: 200 with application/json
// (§3.2), a JSON object whose resource is present (the one REQUIRED member,
// §2) and identical to the resource identifier the well-known URL was built
// from (§3.3), with the well-known segment inserted between host and path
// (§3.1).
func checkRFC9728(t *testing.T, metadataURL, resource string) rfc9728Document {
	t.Helper()
	res, err := url.Parse(resource)
	if err != nil {
		t.Fatal(err)
	}
	wantURL := res.Scheme + "://" + res.Host + "/.well-known/oauth-protected-resource" + strings.TrimSuffix(res.EscapedPath(), "/")
	if metadataURL != wantURL {
		t.Errorf("metadata URL %s, want %s (RFC 9728 §3.1)", metadataURL, wantURL)
	}
	r := send(t, "GET", metadataURL, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: %s", metadataURL, r)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var doc rfc9728Document
	dec := json.NewDecoder(bytes.NewReader([]byte(r.body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("the document: %v: %s", err, r.body)
	}
	if doc.Resource != resource {
		t.Errorf("resource %q, want %q (RFC 9728 §3.3: identical to the identifier the URL was built from)", doc.Resource, resource)
	}
	return doc
}

// resourceMetadataParam returns the resource_metadata="…" of a challenge.
func resourceMetadataParam(challenge string) string {
	_, rest, ok := strings.Cut(challenge, `resource_metadata="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// The documented snippet: a route matching both the API's paths and its
// well-known path, the prefix stripped with uri strip_prefix. The handler
// answers the well-known GET itself, without credentials, and every 401
// names the document.
func TestResourceMetadata(t *testing.T) {
	up := newUpstream(t)
	sim := sharedSim
	g := startGateway(t, 1, func(addrs []string) string {
		origin := "http://" + addrs[0]
		route := func(name, extra string) string {
			return fmt.Sprintf(`	@%[1]s path /%[1]s/* /.well-known/oauth-protected-resource/%[1]s
	handle @%[1]s {
		uri strip_prefix /%[1]s
		helseid {
			issuer %[2]s
			audience %[3]s
			scopes %[4]s
			public_origin %[5]s
			dpop_algorithms ES256 PS256
			resource_metadata /%[1]s
			%[6]s
		}
		reverse_proxy %[7]s
	}
`, name, sim.Issuer(), audience, scope, origin, extra, up.URL())
		}
		return "http://" + addrs[0] + " {\n" + route("kjernejournal", "") + route("optional", "dpop optional") + "\thandle {\n\t\trespond 404\n\t}\n}\n"
	})
	origin := "http://" + g.addrs[0]

	t.Run("the document", func(t *testing.T) {
		doc := checkRFC9728(t, origin+"/.well-known/oauth-protected-resource/kjernejournal", origin+"/kjernejournal")
		if strings.Join(doc.AuthorizationServers, " ") != sim.Issuer() ||
			strings.Join(doc.ScopesSupported, " ") != scope ||
			strings.Join(doc.BearerMethodsSupported, " ") != "header" ||
			strings.Join(doc.DPoPSigningAlgValuesSupported, " ") != "ES256 PS256" ||
			doc.DPoPBoundAccessTokensRequired == nil || !*doc.DPoPBoundAccessTokensRequired ||
			doc.AuthorizationDetailsTypesSupported != nil {
			t.Errorf("document %+v", doc)
		}
		if hits, _, _, _ := up.last(); hits != 0 {
			t.Errorf("the metadata request reached the upstream")
		}
		doc = checkRFC9728(t, origin+"/.well-known/oauth-protected-resource/optional", origin+"/optional")
		if doc.DPoPBoundAccessTokensRequired == nil || *doc.DPoPBoundAccessTokensRequired {
			t.Errorf("dpop optional: dpop_bound_access_tokens_required %v, want false", doc.DPoPBoundAccessTokensRequired)
		}
	})

	t.Run("401 challenges name the document", func(t *testing.T) {
		want := origin + "/.well-known/oauth-protected-resource/kjernejournal"
		r := send(t, "GET", origin+"/kjernejournal/api/patient", nil)
		if r.status != http.StatusUnauthorized {
			t.Fatalf("no credentials: %s", r)
		}
		expectChallenge(t, r, `DPoP algs="ES256 PS256", resource_metadata="`+want+`"`)

		c := newCaller(t, sim)
		tok := c.token(t, helseidsim.TokenSpec{})
		r = send(t, "GET", origin+"/kjernejournal/api/patient", dpopHeaders(tok, c.proof(t, "GET", origin+"/kjernejournal/api/other", tok, dpopclient.ProofOptions{})))
		got := r.header.Get("WWW-Authenticate")
		if r.status != http.StatusUnauthorized || !strings.Contains(got, `error="invalid_dpop_proof"`) || resourceMetadataParam(got) != want {
			t.Errorf("bad proof: %d %q", r.status, got)
		}
		// A client follows the parameter to the document.
		checkRFC9728(t, resourceMetadataParam(got), origin+"/kjernejournal")

		r = send(t, "GET", origin+"/optional/x", nil)
		expectChallenge(t, r, `DPoP algs="ES256 PS256", resource_metadata="`+origin+`/.well-known/oauth-protected-resource/optional"`,
			`Bearer resource_metadata="`+origin+`/.well-known/oauth-protected-resource/optional"`)
	})

	t.Run("the API still works behind the stripped prefix", func(t *testing.T) {
		c := newCaller(t, sim)
		expectOK(t, c.do(t, "GET", origin+"/kjernejournal/api/patient"))
		if _, _, path, _ := up.last(); path != "/api/patient" {
			t.Errorf("upstream path %q, want /api/patient", path)
		}
	})
}
