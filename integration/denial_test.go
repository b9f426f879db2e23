package integration

import (
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/helsegate/helsegate/internal/devkit/dpopclient"
	"github.com/helsegate/helsegate/internal/devkit/helseidsim"
)

// A test national identity number and HPR number for user tokens.
const testPID, testHPR = "17056600574", "565501872"

// Every denial class with its status, challenge and problem body.
func TestDenials(t *testing.T) {
	g := sharedGateway(t)
	c := newCaller(t, sharedSim)
	other := newCaller(t, sharedSim) // another client's key
	wrongKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}

	// req is one request to send.
	type req struct {
		method, url string
		header      map[string][]string
		secrets     []string // must appear in no response header or body
	}
	// withToken builds a request with a token minted from spec and a proof
	// for method+htu (the URL when htu is empty) with options o.
	withToken := func(t *testing.T, spec helseidsim.TokenSpec, method, url, htu string, o dpopclient.ProofOptions) req {
		tok := c.token(t, spec)
		if htu == "" {
			htu = htuOf(url)
		}
		return req{method, url, dpopHeaders(tok, c.proof(t, method, htu, tok, o)), []string{tok, orgParent}}
	}
	api := g.url(0, "/api/d")

	challengeIs := func(want ...string) func(*testing.T, reply) {
		return func(t *testing.T, r reply) { t.Helper(); expectChallenge(t, r, want...) }
	}
	errorChallenge := func(code string) func(*testing.T, reply) {
		return func(t *testing.T, r reply) { t.Helper(); expectErrorChallenge(t, r, code) }
	}
	invalidRequest := challengeIs(`DPoP error="invalid_request"`)

	cases := []struct {
		name      string
		build     func(t *testing.T) req
		status    int
		code      string // problem "error"
		reason    string // audit reason
		challenge func(*testing.T, reply)
	}{
		{
			name:   "no credentials",
			build:  func(t *testing.T) req { return req{"GET", api, nil, nil} },
			status: 401, code: "unauthorized", reason: "no_credentials",
			challenge: challengeIs(`DPoP algs="` + defaultAlgs + `"`),
		},
		{
			name:   "no credentials, dpop optional",
			build:  func(t *testing.T) req { return req{"GET", g.url(0, "/optional/d"), nil, nil} },
			status: 401, code: "unauthorized", reason: "no_credentials",
			challenge: challengeIs(`DPoP algs="`+defaultAlgs+`"`, "Bearer"),
		},
		{
			name: "two Authorization headers",
			build: func(t *testing.T) req {
				r := withToken(t, helseidsim.TokenSpec{}, "GET", api, "", dpopclient.ProofOptions{})
				tok := strings.TrimPrefix(r.header["Authorization"][0], "DPoP ")
				r.header["Authorization"] = []string{"DPoP " + tok, "DPoP " + tok}
				return r
			},
			status: 400, code: "invalid_request", reason: "multiple_authorization", challenge: invalidRequest,
		},
		{
			name: "two DPoP headers",
			build: func(t *testing.T) req {
				r := withToken(t, helseidsim.TokenSpec{}, "GET", api, "", dpopclient.ProofOptions{})
				r.header["DPoP"] = append(r.header["DPoP"], r.header["DPoP"][0])
				return r
			},
			status: 400, code: "invalid_request", reason: "multiple_dpop", challenge: invalidRequest,
		},
		{
			name: "token in the query",
			build: func(t *testing.T) req {
				tok := c.token(t, helseidsim.TokenSpec{})
				return req{"GET", api + "?access_token=" + tok, dpopHeaders(tok, c.proof(t, "GET", api, tok, dpopclient.ProofOptions{})), []string{tok, orgParent}}
			},
			status: 400, code: "invalid_request", reason: "token_in_query", challenge: invalidRequest,
		},
		{
			name: "bad token signature",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{SignWith: wrongKey}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_token", reason: "token_signature", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "expired token",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{IssuedAt: time.Now().Add(-20 * time.Minute), Lifetime: 10 * time.Minute}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_token", reason: "token_expired", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "wrong audience",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{Audience: []string{"nhn:persontjenesten"}}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_token", reason: "token_audience", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "wrong issuer",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{Issuer: "https://helseid-sts.nhn.no"}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_token", reason: "token_issuer", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "token typ not accepted",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{Typ: "dpop+jwt"}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_token", reason: "token_typ", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "unsigned token (alg none)",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{Alg: "none"}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_token", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "bound token as Bearer",
			build: func(t *testing.T) req {
				tok := c.token(t, helseidsim.TokenSpec{})
				return req{"GET", api, map[string][]string{"Authorization": {"Bearer " + tok}}, []string{tok, orgParent}}
			},
			status: 401, code: "invalid_token", reason: "bearer_not_allowed", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "bound token as Bearer, dpop optional",
			build: func(t *testing.T) req {
				tok := c.token(t, helseidsim.TokenSpec{})
				return req{"GET", g.url(0, "/optional/d"), map[string][]string{"Authorization": {"Bearer " + tok}}, []string{tok, orgParent}}
			},
			status: 401, code: "invalid_token", reason: "bound_token_as_bearer", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "proof missing",
			build: func(t *testing.T) req {
				tok := c.token(t, helseidsim.TokenSpec{})
				return req{"GET", api, map[string][]string{"Authorization": {"DPoP " + tok}}, []string{tok, orgParent}}
			},
			status: 401, code: "invalid_dpop_proof", reason: "proof_missing", challenge: errorChallenge("invalid_dpop_proof"),
		},
		{
			name: "proof: wrong htm",
			build: func(t *testing.T) req {
				r := withToken(t, helseidsim.TokenSpec{}, "POST", api, "", dpopclient.ProofOptions{})
				r.method = "GET"
				return r
			},
			status: 401, code: "invalid_dpop_proof", reason: "proof_htm", challenge: errorChallenge("invalid_dpop_proof"),
		},
		{
			name: "proof: wrong htu",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{}, "GET", api, g.url(0, "/api/other"), dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_dpop_proof", reason: "proof_htu", challenge: errorChallenge("invalid_dpop_proof"),
		},
		{
			name: "proof: ath mismatch",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{}, "GET", api, "", dpopclient.ProofOptions{Claims: map[string]any{"ath": dpopclient.ATH("another token")}})
			},
			status: 401, code: "invalid_dpop_proof", reason: "proof_ath", challenge: errorChallenge("invalid_dpop_proof"),
		},
		{
			name: "proof: another key than cnf.jkt",
			build: func(t *testing.T) req {
				tok := c.token(t, helseidsim.TokenSpec{})
				return req{"GET", api, dpopHeaders(tok, other.proof(t, "GET", api, tok, dpopclient.ProofOptions{})), []string{tok, orgParent}}
			},
			status: 401, code: "invalid_dpop_proof", reason: "proof_jkt", challenge: errorChallenge("invalid_dpop_proof"),
		},
		{
			name: "proof: too old",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{}, "GET", api, "", dpopclient.ProofOptions{IssuedAt: time.Now().Add(-time.Minute)})
			},
			status: 401, code: "invalid_dpop_proof", reason: "proof_iat", challenge: errorChallenge("invalid_dpop_proof"),
		},
		{
			name: "token not yet valid (nbf)",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{NotBefore: time.Now().Add(time.Minute)}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 401, code: "invalid_token", reason: "token_not_yet_valid", challenge: errorChallenge("invalid_token"),
		},
		{
			name: "token kind: machine token on a user route",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{}, "GET", g.url(0, "/user/d"), "", dpopclient.ProofOptions{})
			},
			status: 403, code: "insufficient_scope", reason: "token_kind",
			challenge: challengeIs(`DPoP error="insufficient_scope", scope="` + scope + `"`),
		},
		{
			name: "token kind: user token on a machine route",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{PID: testPID, SecurityLevel: "4", HPRNumber: testHPR}, "GET", g.url(0, "/machine/d"), "", dpopclient.ProofOptions{})
			},
			status: 403, code: "insufficient_scope", reason: "token_kind",
			challenge: challengeIs(`DPoP error="insufficient_scope", scope="` + scope + `"`),
		},
		{
			name: "security level below min_security_level",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{PID: testPID, SecurityLevel: "3", HPRNumber: testHPR}, "GET", g.url(0, "/user/d"), "", dpopclient.ProofOptions{})
			},
			status: 403, code: "insufficient_scope", reason: "security_level",
			challenge: challengeIs(`DPoP error="insufficient_scope", scope="` + scope + `"`),
		},
		{
			name: "require_hpr without an HPR number",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{PID: testPID, SecurityLevel: "4"}, "GET", g.url(0, "/user/d"), "", dpopclient.ProofOptions{})
			},
			status: 403, code: "insufficient_scope", reason: "hpr_missing",
			challenge: challengeIs(`DPoP error="insufficient_scope", scope="` + scope + `"`),
		},
		{
			name: "missing scope",
			build: func(t *testing.T) req {
				return withToken(t, helseidsim.TokenSpec{Scopes: []string{"nhn:kjernejournal/other"}}, "GET", api, "", dpopclient.ProofOptions{})
			},
			status: 403, code: "insufficient_scope", reason: "scope_missing",
			challenge: challengeIs(`DPoP error="insufficient_scope", scope="` + scope + `"`),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g.up.reset()
			rq := tc.build(t)
			r := send(t, rq.method, rq.url, rq.header)
			expectProblem(t, r, tc.status, tc.code, rq.secrets...)
			tc.challenge(t, r)
			if tc.reason != "" {
				g.expectReason(t, "deny", tc.reason)
			}
			if hits, _, _, _ := g.up.last(); hits != 0 {
				t.Errorf("a denied request reached the upstream")
			}
		})
	}

	t.Run("user route: a user token that meets the policy passes", func(t *testing.T) {
		url := g.url(0, "/user/d")
		tok := c.token(t, helseidsim.TokenSpec{PID: testPID, SecurityLevel: "4", HPRNumber: testHPR})
		expectOK(t, send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{}))))
	})

	t.Run("nonce required, then the retry with it succeeds", func(t *testing.T) {
		url := g.url(0, "/nonce/d")
		tok := c.token(t, helseidsim.TokenSpec{})
		r := send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{})))
		expectProblem(t, r, http.StatusUnauthorized, "use_dpop_nonce", tok, orgParent)
		if got := r.header.Values("WWW-Authenticate"); len(got) != 1 || !strings.HasPrefix(got[0], `DPoP error="use_dpop_nonce"`) {
			t.Errorf("WWW-Authenticate %q, want DPoP error=\"use_dpop_nonce\"…", got)
		}
		nonce := r.header.Get("DPoP-Nonce")
		if nonce == "" {
			t.Fatalf("no DPoP-Nonce header with use_dpop_nonce: %s", r)
		}
		g.expectReason(t, "deny", "nonce_required")

		r = send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{Nonce: nonce})))
		expectOK(t, r)

		// A nonce this server never issued is refused the same way.
		r = send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{Nonce: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})))
		expectProblem(t, r, http.StatusUnauthorized, "use_dpop_nonce", tok, orgParent)
		if r.header.Get("DPoP-Nonce") == "" {
			t.Errorf("no DPoP-Nonce header with a stale nonce")
		}
	})

	t.Run("handle_errors", func(t *testing.T) {
		url := g.url(1, "/api/d")
		// An allowed request goes through.
		r := c.do(t, "GET", url)
		if r.status == http.StatusBadRequest && g.lastAudit()["reason"] == "malformed_request" {
			hostBug(t, reply{status: r.status, header: r.header, body: r.body + " (audit: malformed_request, the request URI is malformed)"})
		}
		expectOK(t, r)

		r = send(t, "GET", url, nil)
		if r.status != 401 || r.body != "custom 401" {
			t.Errorf("no credentials with handle_errors: got %s, want 401 \"custom 401\"", r)
		}
		expectChallenge(t, r, `DPoP algs="`+defaultAlgs+`"`)

		tok := c.token(t, helseidsim.TokenSpec{})
		r = send(t, "GET", url, dpopHeaders(tok, c.proof(t, "POST", url, tok, dpopclient.ProofOptions{})))
		if r.status != 401 || r.body != "custom 401" {
			t.Errorf("bad proof with handle_errors: got %s, want 401 \"custom 401\"", r)
		}
		expectErrorChallenge(t, r, "invalid_dpop_proof")

		tok = c.token(t, helseidsim.TokenSpec{Scopes: []string{"other"}})
		r = send(t, "GET", url, dpopHeaders(tok, c.proof(t, "GET", url, tok, dpopclient.ProofOptions{})))
		if r.status != 403 || r.body != "custom 403" {
			hostBug(t, r)
			t.Errorf("missing scope with handle_errors: got %s, want 403 \"custom 403\"", r)
		}
		expectChallenge(t, r, `DPoP error="insufficient_scope", scope="`+scope+`"`)
	})
}
