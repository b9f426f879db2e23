package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/helsegate/helsegate/authz"
)

// ResourceMetadata turns on RFC 9728 protected-resource metadata for a route:
// the handler answers GET and HEAD on the document's well-known URL itself,
// without credentials, and names that URL in its 401 challenges
// (resource_metadata="…", RFC 9728 §5.1). The site must route the
// well-known path to the handler (docs/resource-metadata.md).
type ResourceMetadata struct {
	// The resource identifier the document describes (its "resource"): an
	// absolute URL (https unless loopback), or a path taken on public_origin,
	// e.g. /kjernejournal. Default: public_origin itself. Without an absolute
	// URL here, public_origin is required: the identifier must not follow the
	// Host header.
	Resource string `json:"resource,omitempty"`
}

// wellKnownPrefix is the well-known URI suffix of RFC 9728 §3.
const wellKnownPrefix = "/.well-known/oauth-protected-resource"

// attestDetailsType is the authorization_details type of the trust-framework
// attest, as the IETF draft on RAR metadata names it for HelseID.
const attestDetailsType = "nhn:tillitsrammeverk:parameters"

// metadataDocument is the RFC 9728 §2 document. resource is the one member
// RFC 9728 requires; the others are what a client needs to call the route.
type metadataDocument struct {
	Resource                           string   `json:"resource"`
	AuthorizationServers               []string `json:"authorization_servers"`
	ScopesSupported                    []string `json:"scopes_supported,omitempty"`
	BearerMethodsSupported             []string `json:"bearer_methods_supported"`
	DPoPSigningAlgValuesSupported      []string `json:"dpop_signing_alg_values_supported"`
	DPoPBoundAccessTokensRequired      bool     `json:"dpop_bound_access_tokens_required"`
	AuthorizationDetailsTypesSupported []string `json:"authorization_details_types_supported,omitempty"`
}

// resourceMetadata is what a route with resource_metadata serves, built once
// at Provision.
type resourceMetadata struct {
	path  string // the well-known path the handler answers on
	param string // `, resource_metadata="<url>"`
	body  []byte
}

// resourceURL returns the resource identifier of rm on publicOrigin.
func resourceURL(rm *ResourceMetadata, publicOrigin string) (*url.URL, error) {
	res := rm.Resource
	if !strings.HasPrefix(res, "/") && res != "" {
		if err := authz.CheckURL("resource_metadata", res); err != nil {
			return nil, err
		}
		return url.Parse(res)
	}
	if strings.ContainsAny(res, "?#") {
		return nil, fmt.Errorf("resource_metadata %q: a resource path has no query or fragment", res)
	}
	if publicOrigin == "" {
		return nil, errors.New("resource_metadata needs public_origin, or an absolute resource URL: the resource identifier must not follow the Host header")
	}
	return url.Parse(strings.TrimSuffix(publicOrigin, "/") + res)
}

// wellKnownURL inserts the well-known segment between the host and the path
// of a resource identifier (RFC 9728 §3.1); a resource without a path has
// the bare well-known path.
func wellKnownURL(resource *url.URL) *url.URL {
	u := *resource
	p := u.EscapedPath()
	if p == "/" {
		p = ""
	}
	u.Path, u.RawPath = "", ""
	// Set the escaped path through Parse, so that an escaped resource path
	// stays escaped the same way.
	if parsed, err := url.Parse(wellKnownPrefix + p); err == nil {
		u.Path, u.RawPath = parsed.Path, parsed.RawPath
	}
	return &u
}

// newResourceMetadata builds the document of a route from its verifier
// config.
func newResourceMetadata(rm *ResourceMetadata, cfg authz.Config, readsAttest bool) (*resourceMetadata, error) {
	res, err := resourceURL(rm, cfg.PublicOrigin)
	if err != nil {
		return nil, err
	}
	doc := metadataDocument{
		Resource:                      res.String(),
		AuthorizationServers:          []string{cfg.Issuer},
		ScopesSupported:               cfg.Scopes,
		BearerMethodsSupported:        []string{"header"},
		DPoPSigningAlgValuesSupported: cfg.DPoPAlgorithms,
		DPoPBoundAccessTokensRequired: cfg.DPoP != authz.DPoPOptional,
	}
	if readsAttest {
		doc.AuthorizationDetailsTypesSupported = []string{attestDetailsType}
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	wk := wellKnownURL(res)
	return &resourceMetadata{
		path:  wk.Path,
		param: `, resource_metadata="` + wk.String() + `"`,
		body:  body,
	}, nil
}

// answers reports whether r asks for the document: its original path is
// the well-known one.
func (m *resourceMetadata) answers(orig *http.Request) bool {
	return orig.URL.Path == m.path
}

// serve answers a request for the document: GET and HEAD, no credentials
// needed (RFC 9728 §3.2); any other method is 405.
func (m *resourceMetadata) serve(w http.ResponseWriter, r *http.Request) error {
	hdr := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(m.body)))
	hdr.Set("Cache-Control", "public, max-age=300")
	// A public document: browser-based clients may read it too.
	hdr.Set("Access-Control-Allow-Origin", "*")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.body)
	}
	return nil
}

// readsAttest reports whether the route reads the trust-framework attest;
// its metadata then names the attest's authorization_details type.
func (h *Handler) readsAttest() bool { return h.Attest != "" }
