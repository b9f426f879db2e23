// Package registry holds the two membership sources (HTTP, file), both
// implementations of authz.Membership:
//
//   - HTTP asks a registry that speaks the gateway's HTTP contract v1
//     (GET <base>/v1/organizations/{orgnr}/services/{service}) once per
//     Lookup, through a circuit breaker, with a per-call timeout.
//   - File answers from a JSON document of authorizations, loaded and
//     validated at construction and reloaded when the file changes.
//
// Neither caches: the caching decorators in package cache wrap them. Neither
// imports Caddy, and neither touches the network or starts a goroutine in its
// constructor.
package registry
