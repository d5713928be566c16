package sshkey

import (
	"bytes"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestGenerate(t *testing.T) {
	priv, pub, err := Generate("test")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatalf("private key does not parse: %v", err)
	}
	parsed, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub))
	if err != nil || !bytes.Equal(parsed.Marshal(), signer.PublicKey().Marshal()) {
		t.Fatalf("public key %q does not match the private key (%v)", pub, err)
	}
	if priv2, _, _ := Generate("test"); bytes.Equal(priv, priv2) {
		t.Fatal("two keys are the same")
	}
}
