package pluginclient_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// testHostEnv makes the test binary a host (serveTestHost) for the plugin it names.
const testHostEnv = "PLUGINCLIENT_TEST_HOST"

// serveTestHost is a minimal host: it launches the plugin, creates two instances, says
// "ready <plugin pid>", and on SIGTERM deletes every instance, shuts the plugin down
// and exits: what the runner does when a group signal stops it.
func serveTestHost(binary string) int {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := pluginclient.Launch(ctx, binary, []byte(os.Getenv("TEST_HOST_PLUGIN_CONFIG")), pluginclient.Options{})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer p.Kill()
	if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
		fmt.Println(err)
		return 1
	}
	if _, err := p.Increase(ctx, 2); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("ready %d\n", p.Pid())
	<-sig
	var ids []string
	if err := p.Update(ctx, func(id string, _ provider.State) { ids = append(ids, id) }); err != nil {
		fmt.Println("delete instances on shutdown:", err)
		return 1
	}
	done, err := p.Decrease(ctx, ids)
	fmt.Printf("deleted %d of %d\n", len(done), len(ids))
	if err != nil {
		fmt.Println("delete instances on shutdown:", err)
		return 1
	}
	if err := p.Shutdown(ctx); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// TestGroupSignalReachesOnlyTheHost stops a host the way timeout(1) or
// `kill -TERM -PGID` do, with SIGTERM to its whole process group: the plugin, in a
// group of its own, must not get it, so the host can still delete its instances.
func TestGroupSignalReachesOnlyTheHost(t *testing.T) {
	if testPluginBinary == "" {
		t.Skip("the test plugin needs the go command to build it")
	}
	dir := filepath.Join(t.TempDir(), "instances")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	host.Env = append(os.Environ(), testHostEnv+"="+testPluginBinary, fmt.Sprintf(`TEST_HOST_PLUGIN_CONFIG={"dir": %q}`, dir))
	host.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the host leads a group, as under timeout(1)
	out, err := host.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	host.Stderr = &stderr
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	var pluginPid int
	if _, serr := fmt.Sscanf(line, "ready %d", &pluginPid); err != nil || serr != nil {
		t.Fatalf("host said %q (%v); stderr:\n%s", line, err, stderr.String())
	}
	t.Cleanup(func() { syscall.Kill(pluginPid, syscall.SIGKILL) })
	if pgid, err := syscall.Getpgid(pluginPid); err != nil || pgid == host.Process.Pid {
		t.Errorf("the plugin (pid %d) is in process group %d (%v): its host's; want a group of its own", pluginPid, pgid, err)
	}

	if err := syscall.Kill(-host.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	rest, _ := bufio.NewReader(r).ReadString(0)
	if err := host.Wait(); err != nil {
		t.Fatalf("the host ended with %v after the group SIGTERM:\n%s%s", err, rest, stderr.String())
	}
	if !strings.Contains(rest, "deleted 2 of 2") {
		t.Fatalf("the host could not delete its instances:\n%s", rest)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("%d instances left", len(entries))
	}
}
