package authz

// Exported for the tests of this package only.

// HelseID claim names, as HelseID's access tokens carry them.
const (
	ClaimPID            = "helseid://claims/identity/pid"
	ClaimSecurityLevel  = "helseid://claims/identity/security_level"
	ClaimHPRNumber      = "helseid://claims/hpr/hpr_number"
	ClaimOrgParent      = "helseid://claims/client/claims/orgnr_parent"
	ClaimOrgChild       = "helseid://claims/client/claims/orgnr_child"
	ClaimOrgSupplier    = "helseid://claims/client/claims/orgnr_supplier"
	ClaimClientTenancy  = "helseid://claims/client/client_tenancy"
	ClaimAssuranceLevel = "helseid://claims/identity/assurance_level"
)

// HelseID's issuers, exactly as the iss claim carries them.
const (
	ProductionIssuer = "https://helseid-sts.nhn.no"
	TestIssuer       = "https://helseid-sts.test.nhn.no"
)
