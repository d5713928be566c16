package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// mirrorHint says what a [runners.docker] registry_mirrors entry looks like.
const mirrorHint = `write the mirror as "https://mirror.example.com", "http://10.0.0.5:5000" or "mirror.example.com:5000"`

// RegistryMirrorHost returns the registry host (host[:port]) of a [runners.docker]
// registry_mirrors entry: an http(s) URL without a path, or host[:port]. Docker Hub
// images are pulled as <host>/<repository>, so a path, a query or user info in the URL
// cannot be honoured and is an error; credentials for a mirror go in
// DOCKER_AUTH_CONFIG or the Docker config like any registry's.
func RegistryMirrorHost(mirror string) (string, error) {
	m := strings.TrimSpace(mirror)
	if m == "" {
		return "", errors.New("empty mirror")
	}
	host := m
	if strings.Contains(m, "://") {
		u, err := url.Parse(m)
		if err != nil {
			return "", fmt.Errorf("mirror %q is not a URL", mirror)
		}
		switch {
		case u.Scheme != "http" && u.Scheme != "https":
			return "", fmt.Errorf("mirror %q: scheme %q is not http or https", mirror, u.Scheme)
		case u.User != nil:
			return "", fmt.Errorf("mirror %s://%s: user info is not allowed in the URL; give the mirror's credentials in DOCKER_AUTH_CONFIG or the Docker config", u.Scheme, u.Host)
		case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
			return "", fmt.Errorf("mirror %q: a path, query or fragment is not supported (images are pulled as <host>/<repository>)", mirror)
		}
		host = u.Host
	}
	if err := checkHostPort(host); err != nil {
		return "", fmt.Errorf("mirror %q: %w", mirror, err)
	}
	return strings.ToLower(host), nil
}

// checkHostPort accepts host or host:port, the registry part of an image reference.
func checkHostPort(hp string) error {
	host := hp
	if h, port, err := net.SplitHostPort(hp); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q is not a number from 1 to 65535", port)
		}
		host = h
	} else if inner, ok := strings.CutPrefix(hp, "["); ok && strings.HasSuffix(inner, "]") {
		host = strings.TrimSuffix(inner, "]")
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return fmt.Errorf("%q is not an IPv6 address", hp)
		}
		return nil
	} else if strings.Contains(hp, ":") {
		return fmt.Errorf("%q is not host or host:port", hp)
	}
	if host == "" {
		return errors.New("no host")
	}
	if net.ParseIP(host) != nil {
		return nil
	}
	for _, label := range strings.Split(host, ".") {
		if label == "" || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") ||
			strings.IndexFunc(label, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-')
			}) >= 0 {
			return fmt.Errorf("%q is not a host name", host)
		}
	}
	return nil
}

// registryMirrors checks [runners.docker] registry_mirrors (path), reporting every bad
// entry.
func (v *validator) registryMirrors(path string, mirrors []string) {
	for i, m := range mirrors {
		if _, err := RegistryMirrorHost(m); err != nil {
			v.errorf(indexPath(path, i), mirrorHint, "%v", err)
		}
	}
}
