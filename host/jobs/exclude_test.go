package jobs

import "testing"

// TestMatchExclude: GitLab's artifacts:exclude patterns (doublestar), with the
// examples of GitLab's documentation and the edge cases of ** and braces.
func TestMatchExclude(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"binaries/**/*.o", "binaries/a.o", true},
		{"binaries/**/*.o", "binaries/x/y/z.o", true},
		{"binaries/**/*.o", "binaries/x/y/z.c", false},
		{"binaries/**/*.o", "other/a.o", false},
		{"*.o", "a.o", true},
		{"*.o", "dir/a.o", false}, // * stays within one element
		{"**/*.o", "dir/sub/a.o", true},
		{"**/*.o", "a.o", true}, // ** matches no element too
		{"out/tmp/**", "out/tmp/a", true},
		{"out/tmp/**", "out/tmp/a/b", true},
		{"out/tmp/**", "out/tmpx/a", false},
		{"out/tmp", "out/tmp/a", false}, // not recursive, as GitLab documents
		{"out/tmp", "out/tmp/", true},   // a directory entry
		{"./out/a?c", "out/abc", true},
		{"out/a?c", "out/a/c", false},
		{"out/[ab].txt", "out/b.txt", true},
		{"out/[!ab].txt", "out/b.txt", false},
		{"out/*.{log,tmp}", "out/x.tmp", true},
		{"out/*.{log,tmp}", "out/x.txt", false},
		{"{a,b/{c,d}}/f", "b/d/f", true},
		{"out/[", "out/[", false}, // malformed: matches nothing
	}
	for _, tt := range tests {
		if got := MatchExclude(tt.pattern, tt.name); got != tt.want {
			t.Errorf("MatchExclude(%q, %q) = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestValidExclude(t *testing.T) {
	for p, ok := range map[string]bool{"out/**/*.o": true, "a/{b,c}": true, "out/[": false, "a/{b": false, "": false} {
		if err := ValidExclude(p); (err == nil) != ok {
			t.Errorf("ValidExclude(%q) = %v", p, err)
		}
	}
}
