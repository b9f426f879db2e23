// Package devkit groups what helsegate's end-to-end tests, its tools
// (hgbench, hgsoak) and `helsegate dev` share: the test doubles, a HelseID
// simulator (helseidsim), a membership registry simulator (registrysim) and
// an independent DPoP client (dpopclient); the header shaping the simulator
// and the client share (jwsheader); loopback-only listeners and their serve
// loop (loopback); and, for the tests and tools, a runner of helsegate
// processes (gatewayproc). None of it is used by a production site; all of it
// listens on loopback only.
package devkit
