// Package sshdtest starts SSH servers for tests: a real OpenSSH sshd with its own
// configuration, host key and authorized_keys in a temporary directory, listening on a
// free 127.0.0.1 port (Start), and an in-process golang.org/x/crypto/ssh server for what
// sshd cannot do in a sandbox, such as password authentication without touching the
// machine's accounts (StartGo). Both give a provider.ConnectInfo that reaches them.
package sshdtest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"

	"golang.org/x/crypto/ssh"
)

// KeyType is a kind of SSH key.
type KeyType string

// The key types GenerateKey makes.
const (
	ED25519 KeyType = "ed25519"
	RSA     KeyType = "rsa"
	ECDSA   KeyType = "ecdsa"
)

// KeyFormat is how a private key is encoded.
type KeyFormat string

// The encodings GenerateKey writes.
const (
	// OpenSSH is "BEGIN OPENSSH PRIVATE KEY", what ssh-keygen writes by default.
	OpenSSH KeyFormat = "openssh"
	// PEM is the traditional form: PKCS#1 for RSA, SEC 1 for ECDSA, PKCS#8 for ed25519.
	PEM KeyFormat = "pem"
)

// GenerateKey makes a new private key and returns it encoded as asked, with its signer.
func GenerateKey(t testing.TB, kt KeyType, format KeyFormat) ([]byte, ssh.Signer) {
	t.Helper()
	pemBytes, signer, err := NewKey(kt, format)
	if err != nil {
		t.Fatal(err)
	}
	return pemBytes, signer
}

// NewKey is GenerateKey for callers without a testing.TB (benchmark setup, helpers).
func NewKey(kt KeyType, format KeyFormat) ([]byte, ssh.Signer, error) {
	var priv any
	switch kt {
	case ED25519, "":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		priv = k
	case RSA:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, nil, err
		}
		priv = k
	case ECDSA:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		priv = k
	default:
		return nil, nil, fmt.Errorf("sshdtest: unknown key type %q", kt)
	}
	var block *pem.Block
	switch format {
	case OpenSSH, "":
		b, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			return nil, nil, err
		}
		block = b
	case PEM:
		switch k := priv.(type) {
		case *rsa.PrivateKey:
			block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}
		case *ecdsa.PrivateKey:
			der, err := x509.MarshalECPrivateKey(k)
			if err != nil {
				return nil, nil, err
			}
			block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
		default:
			der, err := x509.MarshalPKCS8PrivateKey(k)
			if err != nil {
				return nil, nil, err
			}
			block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
		}
	default:
		return nil, nil, fmt.Errorf("sshdtest: unknown key format %q", format)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(block), signer, nil
}
