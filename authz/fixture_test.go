package authz

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// Test fixtures: an issuer key, a client key, a fixed clock, an in-memory
// replay store and a static key source. Tokens and proofs are built as claim
// maps, changed by each test case, then signed with jwx.

const (
	testIssuer   = "https://helseid-sts.test.nhn.no"
	testAudience = "nhn:kjernejournal"
	testScope    = "nhn:kjernejournal/api"
	testKid      = "B8919616C1E79E875A74E0C6B0274E7130D50A63"
	testHost     = "api.example.no"
	testPath     = "/kjernejournal/v1/patient"
)

var testNow = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

var (
	keysOnce    sync.Once
	issuerPriv  *rsa.PrivateKey
	otherRSA    *rsa.PrivateKey
	clientPriv  *ecdsa.PrivateKey
	client2Priv *ecdsa.PrivateKey
	ecIssuer    *ecdsa.PrivateKey
)

func testKeys(t testing.TB) {
	keysOnce.Do(func() {
		issuerPriv, _ = rsa.GenerateKey(rand.Reader, 2048)
		otherRSA, _ = rsa.GenerateKey(rand.Reader, 2048)
		clientPriv, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		client2Priv, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		ecIssuer, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	})
}

// staticKeys is a KeySource over fixed keys; it counts lookups.
type staticKeys struct {
	mu    sync.Mutex
	keys  map[string]jwk.Key
	calls int
	err   error
}

func (s *staticKeys) Key(_ context.Context, kid string) (jwk.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return nil, s.err
	}
	if k, ok := s.keys[kid]; ok {
		return k, nil
	}
	return nil, ErrUnknownKey
}

// memReplay is an in-memory ReplayStore for unit tests.
type memReplay struct {
	mu   sync.Mutex
	seen map[string]time.Duration
	err  error
}

func (m *memReplay) FirstUse(_ context.Context, key string, _ time.Time, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return false, m.err
	}
	if _, ok := m.seen[key]; ok {
		return false, nil
	}
	m.seen[key] = ttl
	return true, nil
}

type fixture struct {
	t      testing.TB
	now    time.Time
	keys   *staticKeys
	replay *memReplay
	v      *Verifier
	jkt    string
}

func newFixture(t testing.TB, mutate func(*Config)) *fixture {
	t.Helper()
	testKeys(t)
	pub, err := jwk.FromRaw(issuerPriv.Public())
	if err != nil {
		t.Fatal(err)
	}
	_ = pub.Set(jwk.KeyIDKey, testKid)
	_ = pub.Set(jwk.AlgorithmKey, jwa.RS256)
	ecPub, _ := jwk.FromRaw(ecIssuer.Public())
	_ = ecPub.Set(jwk.KeyIDKey, "EC1")
	f := &fixture{
		t:      t,
		now:    testNow,
		keys:   &staticKeys{keys: map[string]jwk.Key{testKid: pub, "EC1": ecPub}},
		replay: &memReplay{seen: map[string]time.Duration{}},
	}
	cfg := Config{Issuer: testIssuer, Audience: testAudience, Scopes: []string{testScope}}
	if mutate != nil {
		mutate(&cfg)
	}
	f.v, err = NewVerifier(cfg, f.keys, f.replay, ClockFunc(func() time.Time { return f.now }))
	if err != nil {
		t.Fatal(err)
	}
	f.jkt = thumbprint(t, clientPriv.Public())
	return f
}

func thumbprint(t testing.TB, pub crypto.PublicKey) string {
	k, err := jwk.FromRaw(pub)
	if err != nil {
		t.Fatal(err)
	}
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

// tokenClaims are the claims of a good machine token bound to the client key.
func (f *fixture) tokenClaims() map[string]any {
	return map[string]any{
		"iss":              testIssuer,
		"aud":              testAudience,
		"iat":              f.now.Add(-time.Minute).Unix(),
		"nbf":              f.now.Add(-time.Minute).Unix(),
		"exp":              f.now.Add(9 * time.Minute).Unix(),
		"client_id":        "8cd7c619-0e1d-4a6b-9c0e-6f2d6b3a5d11",
		"jti":              "6745A1B2",
		"scope":            []string{"openid", testScope},
		"cnf":              map[string]any{"jkt": f.jkt},
		ClaimOrgParent:     "917897468",
		ClaimOrgChild:      "922734046",
		ClaimClientTenancy: "multi-tenant",
	}
}

// tokenHeader is the protected header of a good token.
func tokenHeader() map[string]any {
	return map[string]any{"typ": "at+jwt", "alg": "RS256", "kid": testKid}
}

// sign makes a compact JWS of header and claims with key; the header's alg
// is used as it stands (so tests can lie about it).
func sign(t testing.TB, header, claims map[string]any, key any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	return signPayload(t, header, payload, key)
}

// signPayload makes a compact JWS of header over payload exactly as given.
func signPayload(t testing.TB, header map[string]any, payload []byte, key any) string {
	t.Helper()
	hdrs := jws.NewHeaders()
	for k, v := range header {
		if k == "alg" {
			continue
		}
		if err := hdrs.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	alg, _ := header["alg"].(string)
	buf, err := jws.Sign(payload, jws.WithKey(jwa.SignatureAlgorithm(alg), key, jws.WithProtectedHeaders(hdrs)))
	if err != nil {
		t.Fatal(err)
	}
	return string(buf)
}

// unsigned makes header.payload. with no signature, for alg none and friends.
func unsigned(t testing.TB, header, claims map[string]any) string {
	h, _ := json.Marshal(header)
	p, _ := json.Marshal(claims)
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

func (f *fixture) token(mod func(h, c map[string]any)) string {
	h, c := tokenHeader(), f.tokenClaims()
	if mod != nil {
		mod(h, c)
	}
	return sign(f.t, h, c, issuerPriv)
}

func ath(token string) string {
	s := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(s[:])
}

func (f *fixture) proofParts(token string) (map[string]any, map[string]any) {
	pub, _ := jwk.FromRaw(clientPriv.Public())
	return map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": pub},
		map[string]any{
			"jti": randomJTI(),
			"htm": "GET",
			"htu": "https://" + testHost + testPath,
			"iat": f.now.Unix(),
			"ath": ath(token),
		}
}

func (f *fixture) proof(token string, mod func(h, c map[string]any)) string {
	h, c := f.proofParts(token)
	if mod != nil {
		mod(h, c)
	}
	return sign(f.t, h, c, clientPriv)
}

func (f *fixture) request(token, proof string) Request {
	r := Request{Method: "GET", Scheme: "https", Host: testHost, EscapedPath: testPath,
		Authorization: []string{"DPoP " + token}}
	if proof != "" {
		r.DPoP = []string{proof}
	}
	return r
}

// check runs Verify and compares the outcome with the wanted reason ("" = allowed).
func (f *fixture) check(t *testing.T, r Request, class DenialClass, reason string) *Principal {
	t.Helper()
	p, derr := f.v.Verify(context.Background(), r)
	if reason == "" {
		if derr != nil {
			t.Fatalf("want allowed, got %v", derr)
		}
		return p
	}
	if derr == nil {
		t.Fatalf("want %s, got allowed", reason)
	}
	if derr.Reason != reason || derr.Class != class {
		t.Fatalf("want class %d reason %s, got class %d: %v", class, reason, derr.Class, derr)
	}
	return nil
}

var errBoom = errors.New("boom")

func randomJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
