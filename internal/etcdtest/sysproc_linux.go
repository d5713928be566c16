package etcdtest

import "syscall"

// sysProcAttr makes the kernel kill a member when the test binary dies without running
// its cleanups (go test's -timeout panics), so no etcd outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
