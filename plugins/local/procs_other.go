//go:build !linux

package local

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
)

// holdLock takes the instance's hold lock through f. Without Linux's OFD locks this is
// flock(2), also owned by the open file and inherited with it.
func holdLock(f *os.File) (bool, error) {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}

// lockHeld reports whether anything but f holds the instance's hold lock.
func lockHeld(f *os.File) bool {
	g, err := os.Open(f.Name())
	if err != nil {
		return false
	}
	defer g.Close()
	held, err := holdLock(g)
	return err == nil && !held
}

// lockServer is a no-op here: flock and POSIX locks may conflict on BSD kernels.
func lockServer(*os.File) error { return nil }

// lockHolder returns the PID the server recorded, while the hold lock is held.
func lockHolder(f *os.File) int {
	if !lockHeld(f) {
		return 0
	}
	return readPID(filepath.Join(filepath.Dir(f.Name()), serverPIDFile))
}

// Without Linux there are no cgroups: an instance's processes are its server's session.

func onCgroup2(string) bool                  { return false }
func cgroupParentFor(string) (string, error) { return "", errNoCgroup2 }
func ensureCgroup(string) error              { return errNoCgroup2 }
func joinCgroup(string) error                { return errNoCgroup2 }
func cgroupProcs(string) []int               { return nil }
func killCgroup(string)                      {}
func cgroupEmpty(string) bool                { return true }
func removeCgroup(string) error              { return nil }
