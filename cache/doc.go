// Package cache holds the gateway's shared and in-process state: the DPoP
// replay stores (in-process, Redis, and a fallback between them), the Redis
// client configuration, and the circuit breakers that keep a dead dependency
// from costing a timeout on every request.
//
// It implements the small interfaces that package authz defines and never
// imports Caddy, so everything here is tested with plain Go, an injected
// clock and a real Redis.
//
// Nothing in this package dials in a constructor: Redis clients connect on
// first use, so `caddy validate` never touches the network.
package cache
