// Package devkit groups the test doubles that helsegate's end-to-end tests,
// its tools (hgbench, hgsoak) and `helsegate dev` share: a HelseID simulator
// (helseidsim), a membership registry simulator (registrysim), an independent
// DPoP client (dpopclient), loopback-only listeners and their serve loop
// (loopback), and the header shaping the simulator and the client share
// (jwsheader). None of it is used by a production site; all of it listens on
// loopback only.
package devkit
