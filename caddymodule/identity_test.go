package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/helsegate/helsegate/authz"
)

func TestStripIdentityConnection(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string // nil: no Connection header left
	}{
		{[]string{"keep-alive"}, []string{"keep-alive"}},
		{[]string{"X-Helseid-Org-Child"}, nil},
		{[]string{"keep-alive, x_helseid_hpr_number", "X-HELSEID-ORG-PARENT ,Upgrade"}, []string{"keep-alive, Upgrade"}},
		{[]string{" , X-Helseid-Membership,,"}, nil},
		{[]string{"X-Helseid", "X-Other"}, []string{"X-Helseid", "X-Other"}}, // no identity name: untouched
	} {
		hdr := http.Header{"Connection": append([]string(nil), tc.in...)}
		stripIdentityConnection(hdr)
		if got := hdr["Connection"]; !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Connection %q: got %q, want %q", tc.in, got, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { stripIdentityConnection(http.Header{"Connection": {"keep-alive"}}) }); n > 1 {
		t.Errorf("a harmless Connection header costs %v allocations", n)
	}
}

// trailerBody fills in its request's trailers at EOF, as net/http does.
type trailerBody struct {
	io.Reader
	r       *http.Request
	trailer http.Header
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF {
		for k, v := range b.trailer {
			b.r.Trailer[k] = v
		}
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

func TestGuardTrailers(t *testing.T) {
	r, _ := http.NewRequest("POST", "http://example.com/", nil)
	r.Trailer = http.Header{"X-Helseid-Org-Parent": nil, "X-Checksum": nil}
	r.Body = &trailerBody{Reader: strings.NewReader("hello"), r: r,
		trailer: http.Header{"X-Helseid-Org-Parent": {"1"}, "X_helseid_hpr_number": {"2"}, "X-Checksum": {"abc"}}}
	guardTrailers(r)
	if _, ok := r.Trailer["X-Helseid-Org-Parent"]; ok {
		t.Errorf("a declared identity trailer survived: %v", r.Trailer)
	}
	if b, err := io.ReadAll(r.Body); err != nil || string(b) != "hello" {
		t.Fatalf("body %q, %v", b, err)
	}
	if want := (http.Header{"X-Checksum": {"abc"}}); !reflect.DeepEqual(r.Trailer, want) {
		t.Errorf("trailers at EOF %v, want %v", r.Trailer, want)
	}
}

// TestSetIdentityAllocs holds the identity headers to one allocation, the
// array of the values set, when the header map has room for them.
func TestSetIdentityAllocs(t *testing.T) {
	h := &Handler{}
	p := &authz.Principal{ClientID: "client-1", Kind: authz.KindMachine, OrgParent: testOrg, JKT: "jkt-1"}
	r := httptest.NewRequest("GET", "http://api.example.no/kj", nil)
	r.Header = make(http.Header, 32)
	if n := testing.AllocsPerRun(100, func() { h.setIdentity(r, p) }); n != 1 {
		t.Fatalf("setIdentity allocates %v times, want 1", n)
	}
	if got := r.Header.Get(hdrOrgParent); got != testOrg || cap(r.Header[hdrOrgParent]) != 1 {
		t.Fatalf("%s = %q (cap %d)", hdrOrgParent, got, cap(r.Header[hdrOrgParent]))
	}
}

// BenchmarkSetIdentity sets the identity headers of a machine caller on a
// request as a client sends it.
func BenchmarkSetIdentity(b *testing.B) {
	h := &Handler{}
	p := &authz.Principal{ClientID: "6b2f2b8e-3d1c-4f0a-9c5e-8a7d4b1e2f30", Kind: authz.KindMachine, OrgParent: testOrg, JKT: "7cHqLofY25oWrqYleX4mrIep-w611LqIvVrfj1LodZo"}
	b.ReportAllocs()
	for b.Loop() {
		r := &http.Request{Header: http.Header{"Accept": {"application/fhir+json"}, "User-Agent": {"kj-client/1.0"}, "Authorization": {"DPoP x"}, "Dpop": {"y"}}}
		h.setIdentity(r, p)
	}
}
