package cachestore

import (
	"net/url"
	"strings"
)

// Redact returns url without what makes a signed request usable by anyone: the query
// (which carries the signature, and for S3 the access key ID and session token), the
// fragment and any user:password. What is left names the store and the object, for
// logs and error messages.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		// Not a URL Go can parse: keep only what precedes a query or a fragment, and
		// no user information.
		s, _, _ := strings.Cut(raw, "?")
		s, _, _ = strings.Cut(s, "#")
		if scheme, rest, ok := strings.Cut(s, "://"); ok {
			host, path, hasPath := strings.Cut(rest, "/")
			if i := strings.LastIndexByte(host, '@'); i >= 0 {
				host = host[i+1:]
			}
			s = scheme + "://" + host
			if hasPath {
				s += "/" + path
			}
		}
		return s
	}
	u.RawQuery, u.ForceQuery = "", false
	u.Fragment, u.RawFragment = "", ""
	u.User = nil
	return u.String()
}
