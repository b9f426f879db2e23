package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/helsegate/helsegate/authz"
	"github.com/helsegate/helsegate/cache"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI adds helsegate's routes to Caddy's admin endpoint:
//
//	GET /helseid/health   JSON report of the issuers' keys, Redis and the
//	                      membership registries; 503 when one is down (see health.go)
//
//	POST /helseid/membership/invalidate
//	{"service":"kjernejournal","organization":"917897468"}  one answer
//	{"service":"kjernejournal"}                               every org of a service
//	{"all":true}                                              everything
//
// With Redis, the invalidation is published on the key prefix's channel and
// every replica evicts within a second; without, this process evicts.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.helseid",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes implements caddy.AdminRouter.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/helseid/membership/invalidate",
		Handler: caddy.AdminHandlerFunc(a.invalidate),
	}, {
		Pattern: "/helseid/health",
		Handler: caddy.AdminHandlerFunc(a.health),
	}}
}

type invalidateRequest struct {
	Service      string `json:"service"`
	Organization string `json:"organization"`
	All          bool   `json:"all"`
}

type invalidateResponse struct {
	Caches    int `json:"caches"`
	Published int `json:"published"`
}

func (a *adminAPI) invalidate(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	var req invalidateRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("decoding request: %w", err)}
	}
	if req.All != (req.Service == "" && req.Organization == "") {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(`send {"service":…,"organization":…}, {"service":…} or {"all":true}`)}
	}
	if req.Organization != "" && !authz.ValidOrgNumber(req.Organization) {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("organization is not a valid organization number")}
	}
	var resp invalidateResponse
	published := map[string]bool{}
	for _, m := range memberships.list() {
		resp.Caches++
		if m.redis == nil {
			m.cached.Invalidate(r.Context(), req.Service, req.Organization)
			continue
		}
		// One publication per Redis and prefix reaches every replica,
		// this one included.
		key := fmt.Sprintf("%p|%s", m.redis, m.prefix)
		if published[key] {
			continue
		}
		if err := cache.Publish(r.Context(), m.redis.client, m.prefix, req.Service, req.Organization); err != nil {
			// Evict here at least, and tell the operator the others did not hear it.
			m.cached.Invalidate(r.Context(), req.Service, req.Organization)
			return caddy.APIError{HTTPStatus: http.StatusBadGateway, Err: fmt.Errorf("publishing the invalidation: %w", err)}
		}
		published[key] = true
		resp.Published++
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(resp)
}

// Interface guard
var _ caddy.AdminRouter = (*adminAPI)(nil)
