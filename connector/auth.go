package connector

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// authMethods turns the credentials of a ConnectInfo into SSH auth methods, public key
// first. started is set once the server asks for any of them, which tells an
// authentication failure apart from a handshake failure.
func authMethods(cfg provider.ConnectorConfig, started *bool) ([]ssh.AuthMethod, []string, error) {
	var methods []ssh.AuthMethod
	var names []string
	if len(bytes.TrimSpace(cfg.Key)) > 0 {
		signer, err := ParsePrivateKey(cfg.Key)
		if err != nil {
			return nil, nil, err
		}
		methods = append(methods, ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
			*started = true
			return []ssh.Signer{signer}, nil
		}))
		names = append(names, "publickey")
	}
	if cfg.Password != "" {
		pw := cfg.Password
		methods = append(methods, ssh.PasswordCallback(func() (string, error) {
			*started = true
			return pw, nil
		}))
		// Servers that check passwords through PAM offer keyboard-interactive instead.
		methods = append(methods, ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
			*started = true
			answers := make([]string, len(questions))
			for i := range answers {
				answers[i] = pw
			}
			return answers, nil
		}))
		names = append(names, "password", "keyboard-interactive")
	}
	if len(methods) == 0 {
		return nil, nil, errors.New("no credentials: set key_path or password in [runners.autoscaler.connector_config], " +
			"or let the plugin provision a key (use_static_credentials = false)")
	}
	return methods, names, nil
}

// ParsePrivateKey parses an unencrypted private key in OpenSSH, PKCS#1, PKCS#8 or SEC 1
// PEM form (ed25519, RSA or ECDSA). The error says how to fix an unusable key.
func ParsePrivateKey(pemBytes []byte) (ssh.Signer, error) {
	signer, err := ssh.ParsePrivateKey(pemBytes)
	if err == nil {
		return signer, nil
	}
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, errors.New("parse private key: the key is protected by a passphrase, which the connector cannot enter; " +
			"remove it with `ssh-keygen -p -N '' -f <key_path>` or use a key without one")
	}
	return nil, fmt.Errorf("parse private key: %v; key_path must name an unencrypted ed25519, RSA or ECDSA private key "+
		"in OpenSSH (\"BEGIN OPENSSH PRIVATE KEY\") or PEM form", err)
}
