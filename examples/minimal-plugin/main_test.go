package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
)

// TestConformance builds this plugin and runs the conformance kit against the binary,
// launched exactly as the runner launches it. Its "instances" are reached at a TCP
// listener on loopback, which the kit dials.
func TestConformance(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for c, err := ln.Accept(); err == nil; c, err = ln.Accept() {
			c.Close()
		}
	}()
	dir := t.TempDir()
	conformancetest.Run(t, conformance.Config{
		Binary:       conformancetest.Build(t, "."),
		PluginConfig: json.RawMessage(fmt.Sprintf(`{"dir": %q, "address": %q}`, dir, ln.Addr())),
		L1:           true,
		// Two problems at once: a value of the wrong type and a misspelt key.
		BadConfig:     json.RawMessage(`{"dir": 5, "adress": "127.0.0.1:22"}`),
		BadConfigWant: []string{"plugin_config.dir: expected string", `plugin_config.adress: unknown key (did you mean "address"?)`},
		Timeout:       30 * time.Second,
		PollInterval:  10 * time.Millisecond,
	})
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("instances left behind: %v", entries)
	}
}
