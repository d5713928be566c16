package gitlab

import "strings"

// ShortToken is GitLab Runner's short form of a runner token (its ShortenToken): the
// part of cache object names, metric labels and log lines that tells runners apart without revealing the
// token. It keeps 8 characters, or 9 after a glrt-, glrtr- or glcbt- prefix, or 17 for
// a legacy GR token with its 7-hex-digit rotation date; a token under 8 characters is
// kept whole.
func ShortToken(token string) string {
	// GitLab slices blindly and would panic on a short prefixed token; clamp instead.
	cut := func(from, to int) string { return token[from:min(to, len(token))] }
	switch {
	case len(token) < 8:
		return token
	case strings.HasPrefix(token, "glrt-"):
		return cut(5, 14)
	case strings.HasPrefix(token, "glrtr-"), strings.HasPrefix(token, "glcbt-"):
		return cut(6, 15)
	case strings.HasPrefix(token, "GR") && len(token) >= 17 && isHex(token[2:9]):
		return token[:17]
	default:
		return token[:8]
	}
}

func isHex(s string) bool {
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'f') && (r < 'A' || r > 'F') {
			return false
		}
	}
	return true
}
