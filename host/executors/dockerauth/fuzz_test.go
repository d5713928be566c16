package dockerauth

import (
	"strings"
	"testing"
)

// FuzzParse feeds DOCKER_AUTH_CONFIG values (a job author controls them) to Parse and
// to the decoding of each auths entry: nothing panics, and no error quotes the value,
// which holds secrets.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		`{"auths":{"registry.example.com:5000":{"auth":"dXNlcjpwYXNz"}}}`,
		`{"auths":{"https://index.docker.io/v1/":{"username":"me","password":"p"}},"credsStore":"pass"}`,
		`{"credHelpers":{"123.dkr.ecr.eu-west-1.amazonaws.com":"ecr-login"}}`,
		`{"auths":{"r":{"auth":"bm9jb2xvbg=="}}}`,
		`{"auths":{"r":{}}}`, `{"auths":[]}`, `not json`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src, err := Parse("DOCKER_AUTH_CONFIG (job variable)", data)
		if err != nil {
			if len(data) >= 16 && strings.Contains(err.Error(), string(data)) {
				t.Errorf("the error quotes the config: %v", err)
			}
			return
		}
		for key, e := range src.Config.Auths {
			host := NormalizeHost(key)
			a, err := e.authConfig(host)
			if err != nil && e.Auth != "" && len(e.Auth) >= 8 && strings.Contains(err.Error(), e.Auth) {
				t.Errorf("the error quotes auth: %v", err)
			}
			if err == nil && a.ServerAddress != host {
				t.Errorf("server address %q, want %q", a.ServerAddress, host)
			}
		}
	})
}
