package config

import (
	"fmt"
	"net/url"
	"strings"
)

// coordination checks [coordination]: the etcd endpoints, the TLS files (named, not
// read: a file that cannot be read fails `runner run` with its path) and the lease.
// Keys that make no sense for a pool shared by several managers are warned about.
func (v *validator) coordination(path string, c *Config) {
	co := c.Coordination
	if len(co.Endpoints) == 0 {
		v.errorf(path+".endpoints", `list the etcd members' client URLs, e.g. endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]`,
			"[coordination] has no endpoints")
	}
	tlsWanted := co.CAFile != "" || co.CertFile != ""
	for i, e := range co.Endpoints {
		u, err := url.Parse(e)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https"):
			v.errorf(indexPath(path+".endpoints", i), `write a URL with http:// or https://, host and port, e.g. "https://10.0.0.1:2379"`,
				"invalid etcd endpoint %q", e)
		case u.Scheme == "http" && tlsWanted:
			v.warnf(indexPath(path+".endpoints", i), "use https:// endpoints with ca_file/cert_file",
				"endpoint %q is plain HTTP: the TLS files are not used for it", e)
		}
	}
	if (co.CertFile == "") != (co.KeyFile == "") {
		v.errorf(path, "set both cert_file and key_file (the client certificate and its key), or neither",
			"[coordination] has only one of cert_file and key_file")
	}
	if (co.Username == "") != (co.Password == "") {
		v.errorf(path, "set both username and password, or neither", "[coordination] has only one of username and password")
	}
	if ttl := co.LeaseTTL.Duration; ttl != 0 && ttl < MinLeaseTTL {
		v.errorf(path+".lease_ttl", fmt.Sprintf("use at least %s (the default is %s)", MinLeaseTTL, DefaultLeaseTTL),
			"lease_ttl %s is too short", ttl)
	}
	if co.LeaseTTL.Duration < 0 || co.DialTimeout.Duration < 0 {
		v.errorf(path, "durations must not be negative", "[coordination] has a negative duration")
	}
	if co.Prefix != "" && !strings.HasPrefix(co.Prefix, "/") {
		v.errorf(path+".prefix", fmt.Sprintf("start it with a slash, e.g. %q", "/"+co.Prefix), "prefix %q does not start with /", co.Prefix)
	}
	for i, r := range c.Runners {
		if r.Autoscaler != nil && r.Autoscaler.DeleteInstancesOnShutdown {
			v.warnf(indexPath("runners", i)+".autoscaler.delete_instances_on_shutdown",
				"remove it: with [coordination] the pool outlives each manager, and the next leader takes over its instances",
				"delete_instances_on_shutdown is ignored with [coordination]")
		}
	}
}
