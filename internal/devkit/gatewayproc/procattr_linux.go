package gatewayproc

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel send the process SIGKILL when its parent
// dies (Pdeathsig), and with ownGroup starts it in a group of its own.
// Pdeathsig fires when the thread that started the process exits; the Go
// runtime ends a thread only when a goroutine locked to it returns without
// unlocking, which no caller does.
func setProcAttr(cmd *exec.Cmd, ownGroup bool) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: ownGroup, Pdeathsig: syscall.SIGKILL}
}

// kill sends SIGKILL to the process, or with ownGroup to its group.
func kill(cmd *exec.Cmd, ownGroup bool) {
	if ownGroup {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return
	}
	_ = cmd.Process.Kill()
}
