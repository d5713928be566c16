//go:build !linux

package pluginclient

// processState would tell a stopped process; without /proc the state is unknown, and a
// hung plugin is killed after killBound.
func processState(int) string { return stateUnknown }
