//go:build !linux

package gatewayproc

import "os/exec"

// setProcAttr does nothing off Linux: Pdeathsig is Linux's, and the tools
// that want a group of their own (hgsoak) read /proc and run on Linux only.
func setProcAttr(*exec.Cmd, bool) {}

// kill sends SIGKILL to the process.
func kill(cmd *exec.Cmd, _ bool) { _ = cmd.Process.Kill() }
