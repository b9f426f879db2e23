package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

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
// This process evicts at once. With Redis, Redis forgets the answers and the
// invalidation is published on the key prefix's channel, and every replica
// evicts within a second. The answer is 200 {"caches":n,"published":n}, with
// published the number of subscribers Redis said received it; 502 with
// "error" and "failed" (the Redis, the step: "publish" or "redis_tier", the
// client's error) when Redis did not take a step.
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

// invalidateTimeout bounds the Redis calls of one invalidation request.
const invalidateTimeout = 5 * time.Second

// invalidateResponse is the answer of the invalidation endpoint.
type invalidateResponse struct {
	// Caches counts this process's membership caches, every one of which
	// evicted the answers.
	Caches int `json:"caches"`
	// Published sums what Redis answered to each PUBLISH: the number of
	// subscribers that received the message (the replicas listening, this
	// one included when its subscription is up).
	Published int64 `json:"published"`
	// Error and Failed are set, with a 502, when a step did not reach Redis.
	Error  string              `json:"error,omitempty"`
	Failed []invalidateFailure `json:"failed,omitempty"`
}

// invalidateFailure is one step that did not reach one Redis.
type invalidateFailure struct {
	Redis     []string `json:"redis"` // its addresses, never credentials
	KeyPrefix string   `json:"key_prefix"`
	Step      string   `json:"step"`  // "publish" or "redis_tier"
	Error     string   `json:"error"` // the client's error, the password removed
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
	ms := memberships.list()
	// A service no route checks is a typo or the wrong gateway: saying 200
	// would let the operator believe an answer was evicted.
	if req.Service != "" && !checksService(ms, req.Service) {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no route of this gateway checks membership of service %q", req.Service)}
	}
	ctx, cancel := context.WithTimeout(r.Context(), invalidateTimeout)
	defer cancel()
	resp := invalidateAll(ctx, ms, req.Service, req.Organization)
	status := http.StatusOK
	if len(resp.Failed) > 0 {
		status = http.StatusBadGateway
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(resp)
}

// checksService reports whether one of ms is the membership check of service.
func checksService(ms []*pooledMembership, service string) bool {
	for _, m := range ms {
		if m.service == service {
			return true
		}
	}
	return false
}

// invalidateAll evicts (service, org) from every cache of ms at once and,
// once per Redis and key prefix, makes Redis forget it and publishes it to
// the replicas. Every cache of this process is evicted here, whether or not
// Redis answered, and without waiting for this process's own subscription,
// which may be down.
func invalidateAll(ctx context.Context, ms []*pooledMembership, service, org string) invalidateResponse {
	var resp invalidateResponse
	type target struct {
		redis  *pooledRedis
		prefix string
	}
	done := map[target]bool{}
	var tierFailed, publishFailed bool
	for _, m := range ms {
		resp.Caches++
		if m.redis == nil {
			m.cached.Invalidate(ctx, service, org)
			continue
		}
		t := target{m.redis, m.prefix}
		if done[t] {
			// Redis was told for every cache of this Redis and prefix:
			// only this cache's own tier is left.
			m.cached.EvictLocal(service, org)
			continue
		}
		done[t] = true
		n, err := m.cached.Publish(ctx, service, org) // evicts this cache whatever Redis answers
		resp.Published += n
		if err == nil {
			continue
		}
		var ie *cache.InvalidationError
		if !errors.As(err, &ie) {
			ie = &cache.InvalidationError{Publish: err}
		}
		for _, step := range []struct {
			name string
			err  error
		}{{"redis_tier", ie.Forget}, {"publish", ie.Publish}} {
			if step.err == nil {
				continue
			}
			resp.Failed = append(resp.Failed, invalidateFailure{
				Redis:     m.redis.addrs,
				KeyPrefix: m.prefix,
				Step:      step.name,
				Error:     m.redis.redact(step.err).Error(),
			})
		}
		tierFailed = tierFailed || ie.Forget != nil
		publishFailed = publishFailed || ie.Publish != nil
	}
	switch {
	case publishFailed:
		resp.Error = "publishing the invalidation failed: other replicas keep their cached answers until they expire (this process evicted them)"
	case tierFailed:
		resp.Error = "Redis did not forget the answers: replicas may refill them from Redis until they expire (the invalidation was published, and this process evicted them)"
	}
	return resp
}

// Interface guard
var _ caddy.AdminRouter = (*adminAPI)(nil)
