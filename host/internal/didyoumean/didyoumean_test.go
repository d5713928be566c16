package didyoumean

import (
	"fmt"
	"strings"
	"testing"
)

func TestClosest(t *testing.T) {
	known := []string{"script", "stage", "idle_count", "needs", "when"}
	tests := map[string]string{
		"scrpit": "script", "IdleCount": "idle_count", "idle-count": "idle_count", "stgae": "stage",
		"wen": "when", "xyz": "", "nedes": "needs", "completely-different": "",
	}
	for in, want := range tests {
		if got := Closest(in, known); got != want {
			t.Errorf("Closest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNearest(t *testing.T) {
	known := []string{"build-a", "build-b", "build-c", "build-d", "Build_A", "test", "deploy"}
	tests := []struct {
		word string
		n    int
		want []string
	}{
		{"build-a", 3, []string{"Build_A", "build-a", "build-b"}},
		{"buidl-a", 2, []string{"build-a"}},
		{"build", 2, []string{"Build_A", "build-a"}},
		{"tets", 3, nil},
		{"tesst", 3, []string{"test"}},
		{"deploy", 0, nil},
	}
	for _, tt := range tests {
		got := Nearest(tt.word, known, tt.n)
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("Nearest(%q, %d) = %q, want %q", tt.word, tt.n, got, tt.want)
		}
	}
	// Many known words: the answer stays short.
	many := make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf("job-%04d", i)
	}
	if got := Nearest("job-0000", many, 3); len(got) != 3 || got[0] != "job-0000" {
		t.Errorf("Nearest over 10000 words = %q", got)
	}
}
