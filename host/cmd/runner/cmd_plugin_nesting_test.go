package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting/nestingtest"
	"github.com/flotilla-ci/flotilla/nesting/qemu"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
)

// TestPluginCheckNestingOnQEMU is `runner plugin check` of fleeting-plugin-nesting with
// --config, against a nesting daemon whose qemu backend runs real VMs (TCG where KVM does
// not work): L0 and L1 pass, every VM the kit creates answers SSH.
func TestPluginCheckNestingOnQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	imagesDir, image := vmtest.Image(t)
	authorized, keyFile := vmtest.KeyFile(t)
	h := qemu.New(nil)
	cfg, _ := json.Marshal(map[string]any{"images_dir": imagesDir, "state_dir": t.TempDir(), "max_vms": 3,
		"memory": 256, "accelerator": "tcg", "authorized_key": authorized})
	if _, err := h.Init(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	d := nestingtest.Serve(t, h, true)
	t.Cleanup(func() {
		d.Stop()
		vms, _ := h.List(context.Background())
		for _, vm := range vms {
			t.Errorf("VM %s left after the check", vm.ID)
			_ = h.Delete(context.Background(), vm.ID)
		}
	})
	plugin := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/plugins/nesting/cmd/fleeting-plugin-nesting")
	pluginConfig := filepath.Join(t.TempDir(), "plugin.json")
	body, _ := json.Marshal(map[string]any{"nesting_host": d.Host, "image": image, "max_size": 3,
		"vm_ssh": map[string]any{"username": vmtest.User, "key_file": keyFile}})
	if err := os.WriteFile(pluginConfig, body, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := runPluginCheck(t.Context(), &out, plugin, pluginCheckOptions{config: pluginConfig, timeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("runner plugin check: %v\n%s", err, out.String())
	}
	for _, w := range []string{`PASS L0.info`, `PASS L1.increase`, `PASS L1.connect`, `PASS L1.max-size`, `PASS L1.relaunch`, `PASS L1.cleanup`, `0 failed`} {
		if !regexp.MustCompile(`(?m)` + w).MatchString(out.String()) {
			t.Errorf("report lacks %q\n%s", w, out.String())
		}
	}
}
