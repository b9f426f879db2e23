package authz

import "slices"

// ReasonOK is the reason of an allowed request on a route without a
// membership check. An allowed request on a route with one has ReasonMember.
const ReasonOK = "ok"

// ReasonInfo documents one reason code: the value of Error.Reason (or of an
// allow decision), the DenialClass it comes with (0 for an allow reason) and
// what it means. The list is closed: reason codes are metric labels and audit
// fields, and every one is documented in docs/checks-and-responses.md, "Reason codes" (a
// test compares the two, and another compares this list with the code).
type ReasonInfo struct {
	Code    string
	Class   DenialClass
	Meaning string
}

// AllowReasons returns the reasons of an allowed request (a copy of
// allowReasons: the caller may keep or change it).
func AllowReasons() []ReasonInfo { return slices.Clone(allowReasons) }

// DenialReasons returns every reason a denial can carry, in the order of the
// checks (a copy of denialReasons: the caller may keep or change it).
func DenialReasons() []ReasonInfo { return slices.Clone(denialReasons) }

// allowReasons are the reasons of an allowed request.
var allowReasons = []ReasonInfo{
	{ReasonOK, 0, "allowed; the route has no membership check"},
	{ReasonMember, 0, "allowed; the organization is authorized for the service"},
}

// denialReasons are the reasons a denial can carry, in the order of the
// checks: framing, the access token, the proof, the token policy, the
// attest, the body, the membership.
var denialReasons = []ReasonInfo{
	// 1. Framing.
	{"token_in_query", InvalidRequest, "an access_token in the query string"},
	{"path_ambiguous", InvalidRequest, "the path has a dot segment (plain or percent-encoded), an encoded slash or backslash, a backslash or an empty segment"},
	{"no_credentials", NoCredentials, "no Authorization header"},
	{"multiple_authorization", InvalidRequest, "more than one Authorization header"},
	{"malformed_authorization", InvalidRequest, "the Authorization header is not `<scheme> <token68>`"},
	{"bearer_not_allowed", InvalidToken, "Bearer scheme on a route with `dpop required`"},
	{"unsupported_scheme", NoCredentials, "an Authorization scheme other than DPoP or Bearer"},
	{"proof_missing", InvalidProof, "DPoP scheme without a DPoP header"},
	{"multiple_dpop", InvalidRequest, "more than one DPoP header, or one with several values"},
	// 2. The access token.
	{"token_malformed", InvalidToken, "not a compact JWS, or crit header parameters"},
	{"token_typ", InvalidToken, "typ not accepted"},
	{"token_alg", InvalidToken, "alg not accepted, or not fitting the issuer's key"},
	{"token_kid", InvalidToken, "no kid, or a kid the issuer's key set does not have"},
	{"jwks_unavailable", Unavailable, "the issuer's keys could not be fetched"},
	{"token_signature", InvalidToken, "signature does not verify"},
	{"token_claims", InvalidToken, "claims are not valid JSON of the right types"},
	{"token_issuer", InvalidToken, "iss is not the configured issuer"},
	{"token_audience", InvalidToken, "aud lacks the audience (or is not only it, with single_audience)"},
	{"token_exp_missing", InvalidToken, "no exp"},
	{"token_client_id", InvalidToken, "no client_id"},
	{"token_jti", InvalidToken, "no jti"},
	{"token_cnf", InvalidToken, "cnf without a jkt string"},
	{"token_expired", InvalidToken, "exp has passed (with clock_skew)"},
	{"token_not_yet_valid", InvalidToken, "nbf has not come (with clock_skew)"},
	{"scope_missing", InsufficientScope, "a configured scope is missing"},
	// 3. The proof and the binding.
	{"bound_token_as_bearer", InvalidToken, "a DPoP-bound token sent with the Bearer scheme"},
	{"token_not_bound", InvalidToken, "the DPoP scheme with a token without cnf"},
	{"malformed_request", InvalidRequest, "the request URI cannot be normalized for htu"},
	{"proof_malformed", InvalidProof, "the proof is not a compact JWS, or has crit header parameters"},
	{"proof_typ", InvalidProof, "proof typ is not dpop+jwt"},
	{"proof_alg", InvalidProof, "proof alg not accepted, or not fitting its jwk"},
	{"proof_jwk", InvalidProof, "proof jwk missing, not a public key, or without a thumbprint"},
	{"proof_signature", InvalidProof, "proof signature does not verify"},
	{"proof_claims", InvalidProof, "jti, htm, htu, iat or ath missing or of the wrong type"},
	{"proof_htm", InvalidProof, "htm is not the request method"},
	{"proof_htu", InvalidProof, "htu is not the original request URI"},
	{"nonce_required", UseNonce, "server nonces are on and the proof has none"},
	{"nonce_stale", UseNonce, "the proof's nonce is not ours, or too old"},
	{"proof_iat", InvalidProof, "iat outside [now - dpop_max_age, now + dpop_future_skew]"},
	{"proof_ath", InvalidProof, "ath is not the hash of the access token"},
	{"proof_jkt", InvalidProof, "the proof key is not the key the token is bound to"},
	{"replay_store_unavailable", Unavailable, "the replay store could not answer (Redis down with on_store_error deny, or the in-process store full)"},
	{"replay_store_recovering", Unavailable, "the shared replay store may have lost records (a restart, failover or flush, or an outage under on_store_error local) and the proof was issued before that moment"},
	{"proof_replay", InvalidProof, "the proof was used before"},
	// 4. Token kind and user policy.
	{"token_kind", InsufficientScope, "a machine token where token_kind user is required, or the reverse"},
	{"security_level", InsufficientScope, "the user's security level is below min_security_level"},
	{"hpr_missing", InsufficientScope, "require_hpr and the user token has no HPR number"},
	// 4a. The trust-framework attest.
	{"attest_missing", InsufficientScope, "`attest required` and the token has no attest"},
	{"attest_malformed", InvalidToken, "the attest is not an object (or a string holding one), or breaks the strict reading: a duplicate or case-variant member, a wrong type, too large or too deep"},
	{"attest_not_user", InsufficientScope, "an attest on a token without pid (ATT-9: the attest is for a person)"},
	{"attest_security_level", InsufficientScope, "an attest on a user token below security level 4 (ATT-9)"},
	{"attest_not_caller", InvalidToken, "practitioner.identifier.id is absent or not the token's pid (ATT-11)"},
	{"attest_identifier_system", InvalidToken, "the practitioner identifier's system is not the F-number or D-number OID (ATT-10)"},
	{"attest_org_invalid", InvalidToken, "legal_entity.id or point_of_care.id is not a valid organization number"},
	{"attest_org_mismatch", InvalidToken, "legal_entity.id differs from the token's orgnr_parent"},
	{"attestation_has_expired", InvalidToken, "the attest's toa is older than attest_max_age (with clock_skew; ATT-58)"},
	{"attest_toa_future", InvalidToken, "the attest's toa is later than now plus clock_skew"},
	{"attest_purpose", InsufficientScope, "purpose_of_use.code is absent or not one of the route's purposes"},
	// 5. The body, once the caller is known.
	{"token_in_body", InvalidRequest, "a form-encoded body carrying an access_token"},
	{"form_body_too_large", InvalidRequest, "a form-encoded body larger than 1 MiB, which cannot be checked for an access_token"},
	{"form_body_unreadable", InvalidRequest, "a form-encoded body that could not be read to its end, or that is content-encoded"},
	{"content_type_ambiguous", InvalidRequest, "several Content-Type headers, or a list, one of them a form: a framework might read the body as a form"},
	// 6. Membership.
	{ReasonNoOrg, NotMember, "the token names no organization number the org rule needs"},
	{ReasonInvalidOrg, NotMember, "the token's organization number fails the mod-11 check"},
	{ReasonNotMember, NotMember, "the registry does not authorize the organization for the service"},
	{ReasonSuspended, NotMember, "the authorization's status is not active"},
	{ReasonOutsideValidity, NotMember, "now is outside the authorization's valid_from/valid_to"},
	{ReasonUnavailable, Unavailable, "the registry did not answer and nothing cached is young enough"},
	{ReasonRegistryConfig, Unavailable, "the registry refused the gateway's credentials (401/403)"},
}
