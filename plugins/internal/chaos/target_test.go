package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/awsfake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/azurefake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
)

// The plugins under test: the embedded local plugin and the cloud plugins, each on its
// wire fake over the simulated cloud.
const pluginLocal = "local"

var cloudPlugins = []string{"aws", "googlecloud", "azure"}

var allPlugins = append([]string{pluginLocal}, cloudPlugins...)

// target is one plugin set up for a trial: how the runner's config names it, and the
// plugin's or the cloud's own truth about which instances exist.
type target interface {
	// autoscalerTOML is the plugin and plugin_config lines of [runners.autoscaler].
	autoscalerTOML() string
	// connectorTOML is the body of [runners.autoscaler.connector_config].
	connectorTOML() string
	// instances returns every instance that exists by the plugin's or cloud's own
	// account, each with what shows it.
	instances() map[string]string
}

// localTarget is the local plugin with its own root_dir. Its truth is the instance
// directories under root_dir (half-built ones included) and the live instance server
// processes of directories under it (a server whose directory is gone still counts).
type localTarget struct {
	root string
}

func newLocalTarget(tr *trial) *localTarget {
	return &localTarget{root: filepath.Join(tr.dir, "instances")}
}

func (l *localTarget) autoscalerTOML() string {
	return fmt.Sprintf("    plugin = \"local\"\n    plugin_config = { root_dir = %q, boot_delay = \"0s\" }\n", l.root)
}

func (l *localTarget) connectorTOML() string { return "" }

func (l *localTarget) instances() map[string]string {
	out := map[string]string{}
	ents, _ := os.ReadDir(l.root)
	for _, e := range ents {
		switch name := e.Name(); {
		case strings.HasPrefix(name, "local-"):
			out[name] = "directory"
		case strings.HasPrefix(name, ".new-local-"):
			out[strings.TrimPrefix(name, ".new-")] = "half-built directory"
		}
	}
	for _, p := range allProcs() {
		if id, ok := p.isInstanceServer(l.root); ok {
			if w, seen := out[id]; seen {
				out[id] = w + " + server pid " + fmt.Sprint(p.pid)
			} else {
				out[id] = "server pid " + fmt.Sprint(p.pid) + " without a directory"
			}
		}
	}
	return out
}

// serverOf returns the pid of the live instance server of instance id.
func (l *localTarget) serverOf(id string) (int, bool) {
	for _, p := range allProcs() {
		if got, ok := p.isInstanceServer(l.root); ok && got == id {
			return p.pid, true
		}
	}
	return 0, false
}

// cloudTarget is a cloud plugin binary on its wire fake. Its truth is the simulated
// group: its pending and running VMs, and a desired size above them (VMs the cloud
// will launch, paid for all the same).
type cloudTarget struct {
	name      string
	cloud     *cloudsim.Cloud
	group     string
	config    json.RawMessage // plugin_config
	connector string
	families  map[string]string // the fake's operations → throttling families
	endpoint  string            // the fake's URL, for the fault proxy
}

// cloudOptions are the simulated cloud's settings for a trial; late listing sets
// ListLag.
func cloudOptions(tr *trial, listLag time.Duration) cloudsim.Options {
	return cloudsim.Options{
		BootDelay: cloudsim.Fixed(300 * time.Millisecond),
		StopDelay: cloudsim.Fixed(200 * time.Millisecond),
		Seed:      tr.seed,
		ListLag:   listLag,
	}
}

// retryMaxBackoff is the cloud plugins' own default: the trials retry API calls as a
// user's configuration does, not with the fakes' test-speed backoff.
const retryMaxBackoff = "20s"

func newCloudTarget(t *testing.T, tr *trial, name string, listLag time.Duration) *cloudTarget {
	opts := cloudOptions(tr, listLag)
	c := &cloudTarget{name: name}
	switch name {
	case "aws":
		g := awsfake.DefaultGroup
		g.Name, g.Max = "chaos-asg", 4
		env := awsfake.Start(t, awsfake.EnvOptions{SSH: true, Cloud: opts, Group: g, RetryMaxBackoff: retryMaxBackoff})
		c.cloud, c.group, c.config, c.families, c.endpoint = env.Cloud, env.Group, env.PluginConfig, awsfake.Families, env.Fake.URL()
		c.connector = "      username = \"ec2-user\"\n      use_static_credentials = false\n"
	case "googlecloud":
		g := gcpfake.DefaultGroup
		g.Name, g.Max = "chaos-mig", 4
		env := gcpfake.Start(t, gcpfake.EnvOptions{SSH: true, Cloud: opts, Group: g, RetryMaxBackoff: retryMaxBackoff})
		c.cloud, c.group, c.config, c.families, c.endpoint = env.Cloud, env.Group, env.PluginConfig, gcpfake.Families, env.Fake.URL()
		c.connector = "      username = \"runner\"\n      use_static_credentials = false\n"
	case "azure":
		g := azurefake.DefaultGroup
		g.Name, g.Max = "chaos-vmss", 4
		env := azurefake.Start(t, azurefake.EnvOptions{SSH: true, Cloud: opts, Group: g, RetryMaxDelay: retryMaxBackoff})
		c.cloud, c.group, c.config, c.families, c.endpoint = env.Cloud, env.Group, env.PluginConfig, azurefake.Families, env.Fake.URL()
		c.connector = fmt.Sprintf("      username = %q\n      password = %q\n      use_static_credentials = true\n      use_external_addr = true\n      timeout = \"1m\"\n",
			azurefake.Username, azurefake.Password)
	default:
		t.Fatalf("unknown cloud plugin %q", name)
	}
	return c
}

// setEndpoint points the plugin at url instead of the fake (the fault proxy).
func (c *cloudTarget) setEndpoint(url string) error {
	var m map[string]any
	if err := json.Unmarshal(c.config, &m); err != nil {
		return fmt.Errorf("plugin_config of %s: %w", c.name, err)
	}
	m["endpoint"] = url
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	c.config = raw
	return nil
}

func (c *cloudTarget) autoscalerTOML() string {
	inline, err := cloudtest.TOMLInline(c.config)
	if err != nil {
		panic(err) // c.config is the wire fake's own JSON, or setEndpoint's re-encoding of it
	}
	return fmt.Sprintf("    plugin = %q\n    plugin_config = %s\n", bins.plugins[c.name], inline)
}

func (c *cloudTarget) connectorTOML() string { return c.connector }

func (c *cloudTarget) instances() map[string]string {
	out := map[string]string{}
	vms, err := c.cloud.VMs(c.group)
	if err != nil {
		out["(group)"] = err.Error()
		return out
	}
	active := 0
	for _, vm := range vms {
		if vm.State == cloudsim.Pending || vm.State == cloudsim.Running {
			out[vm.ID] = string(vm.State)
			active++
		}
	}
	if g, err := c.cloud.GetGroup(c.group); err == nil && g.Desired > active {
		for i := active; i < g.Desired; i++ {
			out[fmt.Sprintf("(desired #%d)", i+1)] = fmt.Sprintf("group desired size %d with %d VMs: the cloud launches the rest", g.Desired, active)
		}
	}
	return out
}

// ops returns the fake's operation names, sorted.
func (c *cloudTarget) ops() []string {
	var out []string
	for op := range c.families {
		out = append(out, op)
	}
	sort.Strings(out)
	return out
}

// familyNames returns the fake's throttling families, sorted.
func (c *cloudTarget) familyNames() []string {
	seen := map[string]bool{}
	var out []string
	for _, f := range c.families {
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}
