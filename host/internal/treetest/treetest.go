// Package treetest writes small file trees for tests: pipelines with their include
// and child files, projects with a few sources.
package treetest

import (
	"os"
	"path/filepath"
	"testing"
)

// Write writes files (slash-separated path → content) under a new temporary
// directory, making the directories they need, and returns the directory.
func Write(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	WriteIn(t, dir, files)
	return dir
}

// WriteIn writes files (slash-separated path → content) under dir.
func WriteIn(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
