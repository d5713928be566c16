package oci

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// Login checks username and password against server and stores them in the Docker
// credential store (config file, or the credential helper it configures). It returns
// how they were stored, for "logged in via <mechanism>".
func Login(ctx context.Context, server, username, password string, o RemoteOptions) (string, error) {
	if username == "" {
		return "", fmt.Errorf("login %s: --username is required", server)
	}
	if password == "" {
		return "", fmt.Errorf("login %s: a password is required: pass --password or --password-stdin", server)
	}
	var store credentials.Store
	configPath := ""
	if o.Credentials != nil {
		store = o.Credentials
	} else {
		ds, err := CredentialStore()
		if err != nil {
			return "", fmt.Errorf("login %s: %w", server, err)
		}
		store, configPath = ds, ds.ConfigPath()
	}
	reg, err := remote.NewRegistry(server)
	if err != nil {
		return "", fmt.Errorf("login %s: %w", server, err)
	}
	reg.PlainHTTP = o.PlainHTTP
	hc := o.HTTPClient
	if hc == nil {
		hc = retry.DefaultClient
	}
	reg.Client = &auth.Client{Client: hc, Cache: auth.NewCache()}
	if err := credentials.Login(ctx, store, reg, auth.Credential{Username: username, Password: password}); err != nil {
		return "", fmt.Errorf("login %s: %w", server, err)
	}
	return mechanism(configPath, credentials.ServerAddressFromRegistry(server)), nil
}

// mechanism names where credentials for server went, by reading the Docker config
// the way the store does: credHelpers[server], then credsStore, then the file.
func mechanism(configPath, server string) string {
	if configPath == "" {
		return "the configured credential store"
	}
	var cfg struct {
		CredsStore  string            `json:"credsStore"`
		CredHelpers map[string]string `json:"credHelpers"`
	}
	if b, err := os.ReadFile(configPath); err == nil {
		_ = json.Unmarshal(b, &cfg) // the store already parsed it; a failure here only loses detail
	}
	if h := cfg.CredHelpers[server]; h != "" {
		return "credential helper docker-credential-" + h
	}
	if cfg.CredsStore != "" {
		return "credential helper docker-credential-" + cfg.CredsStore
	}
	return "config file " + configPath
}

// ReadPassword reads a password from r (--password-stdin): everything, minus one
// trailing "\n" and then one trailing "\r", as GitLab Runner and docker login do.
func ReadPassword(r io.Reader) (string, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return "", fmt.Errorf("read password from stdin: %w", err)
	}
	s := strings.TrimSuffix(string(b), "\n")
	return strings.TrimSuffix(s, "\r"), nil
}
