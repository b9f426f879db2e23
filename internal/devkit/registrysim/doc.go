// Package registrysim is a membership registry simulator: a TEST DOUBLE, not
// Medlemstjenesten. It exists so that integration tests (and `helsegate dev`)
// can run the gateway's membership check without a real registry.
//
// It speaks the gateway's HTTP contract v1 on a loopback address, with plain
// HTTP:
//
//	GET /v1/organizations/{orgnr}/services/{service}
//	    200 {"organization":…,"service":…,"member":…,"status":…,"valid_from":…,"valid_to":…|null}
//	    404 when it holds no authorization of orgnr for service
//	    401 when Options.Token is set and the request lacks "Authorization: Bearer <token>"
//
// The authorizations come from Options.Members and/or a members file in the
// gateway's file format ({"authorizations":[…]}), and can be changed while
// it runs (Set, Remove). SetFailure makes it misbehave the ways a real
// registry does: 5xx, 429, slow answers, dropped connections, lookups held
// until the test lets them go (Hang, Held). Calls counts the lookups that
// reached it.
//
// It checks nothing about the organization numbers it is asked for or
// given: it answers what it holds. Never expose it.
package registrysim
