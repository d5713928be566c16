package cloudtest

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// CheckJobOverSSH runs a command on instance id of g over SSH as the host would (with
// info from the plugin's ConnectInfo), checks that impostor (the same instance with
// credentials the cloud never saw) is refused, then deletes the instance and checks
// that its server, and so the connection, goes with it.
func CheckJobOverSSH(ctx context.Context, t *testing.T, g provider.InstanceGroup, id string, info, impostor provider.ConnectInfo, useExternal bool) {
	t.Helper()
	opts := func() connector.DialOptions {
		return connector.DialOptions{HostKeys: connector.NewMemoryHostKeyStore(), UseExternalAddr: useExternal}
	}
	c, err := connector.Dial(ctx, info, opts())
	if err != nil {
		t.Fatalf("dial instance %s: %v", id, err)
	}
	defer c.Close()
	var out bytes.Buffer
	if err := c.Run(ctx, connector.RunOptions{Command: `echo "job on $JOB_NAME in $(pwd)"; exit 3`, Stdout: &out,
		Env: map[string]string{"JOB_NAME": "build"}}); err == nil || !strings.Contains(err.Error(), "3") {
		t.Errorf("Run = %v, want exit status 3", err)
	}
	if !strings.Contains(out.String(), "job on build in ") || !strings.Contains(out.String(), id) {
		t.Errorf("output = %q, want the job's line from the instance's own directory", out.String())
	}

	if c2, err := connector.Dial(ctx, impostor, opts()); err == nil {
		c2.Close()
		t.Error("credentials the cloud never saw logged in")
	}

	if _, err := g.Decrease(ctx, []string{id}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Error("connection survived the deletion of its instance")
	}
}
