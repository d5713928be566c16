package oci

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnvPublicKeys lists trusted signing keys for `runner fleeting install`, in addition
// to the config key: entries separated by the OS list separator (":" on Unix), each a
// PEM file path or inline PEM.
const EnvPublicKeys = "FLOTILLA_PLUGIN_PUBLIC_KEYS"

// KeyID is a short, stable name for a public key: "SHA256:" and the unpadded base64
// of the SHA-256 of the raw 32-byte key (the style of ssh-keygen -l).
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// GenerateKey creates an ed25519 key pair and writes it as PEM: the private key
// (PKCS#8, mode 0600) to privPath and the public key (PKIX) to privPath + ".pub".
// The same files come from `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
func GenerateKey(privPath string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(privPath), 0o755); err != nil {
		return nil, fmt.Errorf("write key: %w", err)
	}
	f, err := os.OpenFile(privPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("write private key (refusing to overwrite): %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: privDER}); err != nil {
		f.Close()
		return nil, fmt.Errorf("write private key %s: %w", privPath, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write private key %s: %w", privPath, err)
	}
	if err := os.WriteFile(privPath+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, fmt.Errorf("write public key: %w", err)
	}
	return pub, nil
}

// LoadPrivateKey reads a PEM PKCS#8 ed25519 private key.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("read signing key %s: no PEM \"PRIVATE KEY\" block; create one with `runner fleeting keygen` or `openssl genpkey -algorithm ed25519`", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read signing key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("read signing key %s: %T is not an ed25519 key", path, k)
	}
	return priv, nil
}

// ParsePublicKeys parses every PEM "PUBLIC KEY" block (PKIX ed25519) in b; origin
// names the source in errors.
func ParsePublicKeys(b []byte, origin string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "PUBLIC KEY" {
			continue
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key in %s: %w", origin, err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key in %s: %T is not an ed25519 key", origin, k)
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("public key in %s: no PEM \"PUBLIC KEY\" block", origin)
	}
	return keys, nil
}

// LoadPublicKeys loads trusted keys from entries that are each a PEM file path or
// inline PEM text (starting with "-----BEGIN").
func LoadPublicKeys(entries []string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		var b []byte
		origin := "inline PEM"
		if strings.HasPrefix(e, "-----BEGIN") {
			b = []byte(e)
		} else {
			var err error
			if b, err = os.ReadFile(e); err != nil {
				return nil, fmt.Errorf("read plugin public key: %w", err)
			}
			origin = e
		}
		ks, err := ParsePublicKeys(b, origin)
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
	}
	return keys, nil
}

// PublicKeysFromEnv splits EnvPublicKeys into entries for LoadPublicKeys.
func PublicKeysFromEnv(getenv func(string) string) []string {
	if getenv == nil {
		getenv = os.Getenv
	}
	v := getenv(EnvPublicKeys)
	if v == "" {
		return nil
	}
	if strings.HasPrefix(strings.TrimSpace(v), "-----BEGIN") {
		return []string{v}
	}
	return filepath.SplitList(v)
}
