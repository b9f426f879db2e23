// Package helseidsim is a HelseID simulator: a TEST DOUBLE, not an identity
// provider. It exists so that integration tests (and `helsegate dev`) can
// run the gateway on a laptop without reaching the real HelseID.
//
// The simulator listens with plain HTTP on a loopback address only and
// serves:
//
//   - GET  /.well-known/openid-configuration        (discovery)
//   - GET  /.well-known/openid-configuration/jwks   (public RS256 keys)
//   - POST /connect/token                           (client_credentials + DPoP)
//   - POST /simulator/rotate                        (rotate the signing key; answers the new kid)
//
// Tokens imitate real HelseID access tokens: JWS compact, header typ
// "at+jwt", alg RS256, kid of 40 upper-case hex characters, HelseID claim
// names (helseid://claims/...), scope as a JSON array, client_tenancy on
// every token from the token endpoint, user tokens with an opaque sub, pid,
// security_level as a string and the matching assurance_level and, for
// DPoP-bound tokens, cnf.jkt. On request (TokenSpec.Attest, or the token
// endpoint's attest fields) a token carries the trust-framework attest,
// nhn:tillitsrammeverk:parameters, as an object or a JSON string, with or
// without data model v1.1's attestation wrapper and toa. Mint produces
// arbitrary, including deliberately broken, tokens for negative tests.
//
// There is no client authentication: anyone who can reach the loopback
// port gets a token for whatever org numbers they ask for. Never expose it.
package helseidsim
