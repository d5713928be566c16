package config

import (
	"testing"
	"time"
)

func TestCheckCoordination(t *testing.T) {
	const c = "coordination"
	table := func(keys string) string { return "[coordination]\n" + keys + okRunner }
	eps := "  endpoints = [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\n"
	tests := []struct {
		name string
		doc  string
		want []diag
	}{
		{"endpoints and TLS", table(eps + "  prefix = \"/ci\"\n  lease_ttl = \"5s\"\n  ca_file = \"ca.pem\"\n  cert_file = \"c.pem\"\n  key_file = \"k.pem\"\n"), nil},
		{"concurrent caps one manager", "concurrent = 4\n[coordination]\n" + eps + okRunner + "    max_instances = 30\n    capacity_per_instance = 4\n", nil},
		{"no endpoints", table("  prefix = \"/ci\"\n"),
			[]diag{{"error", c + ".endpoints", "[coordination] has no endpoints", "endpoints = ["}}},
		{"endpoint without scheme", table("  endpoints = [\"10.0.0.1:2379\"]\n"),
			[]diag{{"error", c + ".endpoints[0]", `invalid etcd endpoint "10.0.0.1:2379"`, "https://"}}},
		{"plain http with TLS files", table("  endpoints = [\"http://10.0.0.1:2379\"]\n  ca_file = \"ca.pem\"\n"),
			[]diag{{"warning", c + ".endpoints[0]", "plain HTTP", "https://"}}},
		{"cert without key", table(eps + "  cert_file = \"c.pem\"\n"),
			[]diag{{"error", c, "only one of cert_file and key_file", "both"}}},
		{"user without password", table(eps + "  username = \"ci\"\n"),
			[]diag{{"error", c, "only one of username and password", "both"}}},
		{"lease too short", table(eps + "  lease_ttl = \"500ms\"\n"),
			[]diag{{"error", c + ".lease_ttl", "lease_ttl 500ms is too short", "at least 2s"}}},
		{"relative prefix", table(eps + "  prefix = \"ci\"\n"),
			[]diag{{"error", c + ".prefix", `prefix "ci" does not start with /`, `"/ci"`}}},
		{"misspelt key", table(eps + "  lease_tll = \"5s\"\n"),
			[]diag{{"warning", c + ".lease_tll", `unknown key "lease_tll"`, `did you mean "lease_ttl"?`}}},
		{"delete on shutdown", "[coordination]\n" + eps + okRunner + "    delete_instances_on_shutdown = true\n",
			[]diag{{"warning", "runners[0].autoscaler.delete_instances_on_shutdown", "ignored with [coordination]", "next leader"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkDiagTable(t, tt.doc, tt.want) })
	}
}

func TestCoordinationDefaults(t *testing.T) {
	var c Coordination
	if c.TTL() != DefaultLeaseTTL || c.KeyPrefix() != "/flotilla" {
		t.Fatalf("defaults: %s %q", c.TTL(), c.KeyPrefix())
	}
	c = Coordination{LeaseTTL: Duration{3 * time.Second}, Prefix: "/ci/"}
	if c.TTL() != 3*time.Second || c.KeyPrefix() != "/ci" {
		t.Fatalf("set: %s %q", c.TTL(), c.KeyPrefix())
	}
}
